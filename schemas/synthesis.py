"""`harmony synthesize` tables: the parameter table (one row per draw or bad input) and the manifest it
yields. The single source of their column names and types.

Parameter table rows:

- a draw that was evaluated: status ``kept`` (written as files, listed in the manifest) or
  ``rejected`` (its composite's fMSE is outside the configured range, or no donor was available);
- an input row that could not be used: status ``failed`` (unreadable, corrupt, size mismatch, empty
  mask, ...) or ``invalid`` (bad id, missing URI, sanitised name shared with another input row).
"""

from __future__ import annotations

import pandas as pd
import pandera.pandas as pa
import pyarrow as pa_
from pandera.typing import Series

from .columns import typed_columns
from .vocabulary import DrawStatus

STATUSES = tuple(DrawStatus)
# The output manifest: what `harmony harmonize` and `harmony evaluate` read (paths relative to it).
MANIFEST_COLUMNS = ("id", "composite", "mask", "real", "subset")
# `--layout cutout`: the kept foreground as an RGBA cutout on the real image (schemas/manifest.py's cutout rows)
CUTOUT_MANIFEST_COLUMNS = ("id", "foreground", "background", "x", "y", "real", "subset")

STRING_COLUMNS = ("source_id", "status", "mask_source", "method")
METHODS = ("classical", "inverse")
NULLABLE_STRING_COLUMNS = (
    "model", "id", "name", "reason", "message", "kind", "donor_id", "params",
    "composite", "mask", "real", "subset", "source_real", "source_mask", "source_subset", "notes",
    "foreground", "background",
)
BOOL_COLUMNS = ("kept", "first_of_input")
# seed: the noise seed of an inverse-synthesis candidate; candidate: its number (= draw), both null for classical draws
NULLABLE_INT_COLUMNS = ("sample", "draw", "mask_index", "width", "height", "seed", "candidate", "x", "y")
# Scalar copies of the main parameters (null where the kind does not use them) and per-sample statistics
# of the stored composite against the stored real image (iHarmony4 protocol at 256 px).
PARAM_COLUMNS = ("strength", "exposure_ev", "gamma", "contrast", "temperature", "tint", "saturation")
STAT_COLUMNS = ("fg_ratio", "mse", "psnr", "fmse", "fpsnr", "fg_delta_l", "fg_delta_e")
FLOAT_COLUMNS = PARAM_COLUMNS + STAT_COLUMNS

COLUMNS = (
    ("id", "source_id", "name", "method", "model", "sample", "draw", "candidate", "seed", "mask_index", "status", "kept",
     "reason", "message", "kind")
    + PARAM_COLUMNS + ("donor_id", "params") + STAT_COLUMNS
    + ("width", "height", "mask_source", "composite", "mask", "real", "subset",
       "source_real", "source_mask", "source_subset", "notes", "first_of_input", "foreground", "background", "x", "y")
)


class SynthesisParams(pa.DataFrameModel):
    source_id: Series[str]
    status: Series[str] = pa.Field(isin=STATUSES)
    mask_source: Series[str] = pa.Field(isin=("given", "ellipse", "box", "blob"))
    method: Series[str] = pa.Field(isin=METHODS)
    kept: Series[bool]
    first_of_input: Series[bool]
    id: Series[str] = pa.Field(nullable=True)
    reason: Series[str] = pa.Field(nullable=True)
    kind: Series[str] = pa.Field(nullable=True, isin=("colour_transfer", "tone", "day_night", "inverse"))
    sample: Series[pd.Int64Dtype] = pa.Field(nullable=True, ge=1)
    draw: Series[pd.Int64Dtype] = pa.Field(nullable=True, ge=0)
    fg_ratio: Series[float] = pa.Field(nullable=True, ge=0, le=1)
    fmse: Series[float] = pa.Field(nullable=True, ge=0)

    class Config:
        strict = False

    @pa.dataframe_check(name="kept_means_status_kept")
    def _kept(cls, df: pd.DataFrame) -> Series[bool]:
        return df["kept"] == (df["status"] == DrawStatus.KEPT)

    @pa.dataframe_check(name="kept_rows_have_files")
    def _files(cls, df: pd.DataFrame) -> Series[bool]:
        return ~df["kept"] | (df["id"].notna() & df["composite"].notna() & df["mask"].notna() & df["real"].notna())

    @pa.dataframe_check(name="other_rows_have_a_reason")
    def _reasons(cls, df: pd.DataFrame) -> Series[bool]:
        return df["kept"] | df["reason"].notna()


def arrow_schema() -> pa_.Schema:
    fields = []
    for c in COLUMNS:
        if c in BOOL_COLUMNS:
            t = pa_.bool_()
        elif c in NULLABLE_INT_COLUMNS:
            t = pa_.int64()
        elif c in FLOAT_COLUMNS:
            t = pa_.float64()
        else:
            t = pa_.string()
        fields.append(pa_.field(c, t))
    return pa_.schema(fields)


SCHEMA = arrow_schema()
MANIFEST_SCHEMA = pa_.schema([SCHEMA.field(c) for c in MANIFEST_COLUMNS])
CUTOUT_MANIFEST_SCHEMA = pa_.schema([SCHEMA.field(c) for c in CUTOUT_MANIFEST_COLUMNS])


def conform(df: pd.DataFrame) -> pd.DataFrame:
    """Exactly COLUMNS, in order and in Arrow-friendly dtypes (missing ones as nulls), validated."""
    out = typed_columns(df, COLUMNS, nullable_ints=NULLABLE_INT_COLUMNS, floats=FLOAT_COLUMNS, bools=BOOL_COLUMNS)
    return SynthesisParams.validate(out.reset_index(drop=True), lazy=True)


def to_arrow(df: pd.DataFrame) -> pa_.Table:
    """Validated parameter-table rows with the fixed Arrow schema, so blocks written separately read
    back as one table."""
    return pa_.Table.from_pandas(conform(df), schema=SCHEMA, preserve_index=False)
