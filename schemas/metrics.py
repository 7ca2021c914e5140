"""The per-image metrics table written under `metrics/`: exactly one row per manifest row."""

from __future__ import annotations

import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

from .columns import typed_columns
from .vocabulary import BAD, DONE, FG_BUCKETS, FINAL_STATUSES

STATUSES = tuple(FINAL_STATUSES)

# Metrics against ground truth (iHarmony4 protocol at 256 px, plus full resolution) for the
# prediction, and the same for the untouched composite (the do-nothing baseline).
GT_METRICS = ("mse", "psnr", "fmse", "fpsnr", "bmse", "ssim", "mse_full", "psnr_full")
COMPOSITE_METRICS = tuple(f"composite_{m}" for m in GT_METRICS)
# Colour fidelity (harmony_ops/fidelity.py): how far the delivered foreground moved from the product's colour.
FIDELITY_METRICS = ("fg_chroma_shift", "fg_hue_shift", "fg_lightness_shift")
NOREF_METRICS = ("delta_e_fg", "stat_gap_before", "stat_gap_after") + FIDELITY_METRICS
SECONDS = ("seconds_decode", "seconds_stage1", "seconds_refine", "seconds_finish")
# Peak memory of the model worker that ran the row (operations: sizing pools and nodes).
MEMORY = ("model_peak_host_mib", "model_peak_device_mib")

STRING_COLUMNS = ("id", "status", "engine", "model", "config_key", "resolution_mode", "scheduler")
# composite and mask are null for cutout rows, which give foreground, background and a placement instead
NULLABLE_STRING_COLUMNS = ("composite", "mask", "subset", "error_type", "error_message", "real", "output", "fg_bucket",
                           "crop", "notes")
INT_COLUMNS = ("row",)
NULLABLE_INT_COLUMNS = ("width", "height", "inference_width", "inference_height", "steps", "seed")
FLOAT_COLUMNS = ("fg_ratio",) + GT_METRICS + COMPOSITE_METRICS + NOREF_METRICS + SECONDS + MEMORY
# fidelity_ok: the chroma shift within the run's bound (null when the run set none)
NULLABLE_BOOL_COLUMNS = ("fidelity_ok",)

# Optional columns, present only where a job writes them (`harmony evaluate --compare`): a second
# method's 256 px metrics, and per-image deltas (compare minus main). Typed float64 when present.
COMPARE_METRICS = ("compare_mse", "compare_psnr", "compare_fmse", "compare_fpsnr", "compare_bmse", "compare_ssim")
DELTA_METRICS = ("delta_psnr", "delta_fmse")
# A cutout row's placement and inputs (schemas/manifest.py), passed through from the manifest.
PLACEMENT_COLUMNS = ("x", "y", "scale")
OPTIONAL_FLOAT_COLUMNS = COMPARE_METRICS + DELTA_METRICS + PLACEMENT_COLUMNS
# review: the file names a job wrote under report_files/rows/<row>/ for the report (pipelines/jobs/review_images.py)
OPTIONAL_STRING_COLUMNS = ("layout", "foreground", "background", "review")

COLUMNS = (("id", "row", "status", "composite", "mask") + STRING_COLUMNS[2:] + NULLABLE_STRING_COLUMNS[2:]
           + NULLABLE_INT_COLUMNS + FLOAT_COLUMNS + NULLABLE_BOOL_COLUMNS)


class Metrics(pa.DataFrameModel):
    id: Series[str]
    row: Series[int] = pa.Field(ge=0, unique=True)
    status: Series[str] = pa.Field(isin=STATUSES)
    composite: Series[str] = pa.Field(nullable=True)
    mask: Series[str] = pa.Field(nullable=True)
    engine: Series[str]
    model: Series[str]
    config_key: Series[str]
    resolution_mode: Series[str]
    scheduler: Series[str]
    subset: Series[str] = pa.Field(nullable=True)
    error_type: Series[str] = pa.Field(nullable=True)
    error_message: Series[str] = pa.Field(nullable=True)
    real: Series[str] = pa.Field(nullable=True)
    output: Series[str] = pa.Field(nullable=True)
    fg_bucket: Series[str] = pa.Field(nullable=True, isin=FG_BUCKETS)
    crop: Series[str] = pa.Field(nullable=True)
    notes: Series[str] = pa.Field(nullable=True)
    width: Series[pd.Int64Dtype] = pa.Field(nullable=True, gt=0)
    height: Series[pd.Int64Dtype] = pa.Field(nullable=True, gt=0)
    inference_width: Series[pd.Int64Dtype] = pa.Field(nullable=True, gt=0)
    inference_height: Series[pd.Int64Dtype] = pa.Field(nullable=True, gt=0)
    steps: Series[pd.Int64Dtype] = pa.Field(nullable=True)
    seed: Series[pd.Int64Dtype] = pa.Field(nullable=True)
    fg_ratio: Series[float] = pa.Field(nullable=True, ge=0, le=1)
    fg_chroma_shift: Series[float] = pa.Field(nullable=True, ge=0)
    fg_hue_shift: Series[float] = pa.Field(nullable=True, ge=0, le=180)
    fidelity_ok: Series[pd.BooleanDtype] = pa.Field(nullable=True)

    class Config:
        strict = False

    @pa.dataframe_check(name="ok_rows_have_output_and_size")
    def _ok_rows(cls, df: pd.DataFrame) -> Series[bool]:
        ok = df["status"].isin(DONE)
        return ~ok | (df["output"].notna() & df["width"].notna() & df["height"].notna())

    @pa.dataframe_check(name="failed_rows_have_a_reason")
    def _reasons(cls, df: pd.DataFrame) -> Series[bool]:
        bad = df["status"].isin(BAD)
        return ~bad | (df["error_type"].notna() & df["error_message"].notna())


def conform(df: pd.DataFrame) -> pd.DataFrame:
    """Every column of the table in its Arrow-friendly dtype (missing ones filled with nulls), then validated."""
    out = typed_columns(df, COLUMNS, ints=INT_COLUMNS, nullable_ints=NULLABLE_INT_COLUMNS, floats=FLOAT_COLUMNS,
                        nullable_bools=NULLABLE_BOOL_COLUMNS)
    extra = [c for c in df.columns if c not in COLUMNS]
    for c in extra:  # optional columns and manifest pass-through columns
        out[c] = pd.to_numeric(df[c], errors="coerce").astype("float64") if c in OPTIONAL_FLOAT_COLUMNS else df[c]
    return Metrics.validate(out.reset_index(drop=True), lazy=True)


def arrow_schema_for(df: pd.DataFrame):
    """Arrow types for the known columns (so blocks written separately read back as one table)."""
    import pyarrow as pa_

    fields = []
    for c in df.columns:
        if c in INT_COLUMNS or c in NULLABLE_INT_COLUMNS:
            fields.append(pa_.field(c, pa_.int64()))
        elif c in FLOAT_COLUMNS or c in OPTIONAL_FLOAT_COLUMNS:
            fields.append(pa_.field(c, pa_.float64()))
        elif c in NULLABLE_BOOL_COLUMNS:
            fields.append(pa_.field(c, pa_.bool_()))
        elif c in STRING_COLUMNS or c in NULLABLE_STRING_COLUMNS or c in OPTIONAL_STRING_COLUMNS:
            fields.append(pa_.field(c, pa_.string()))
        else:  # a pass-through column: its values' type; all null in this block (or no rows): text
            t = pa_.array(df[c].tolist(), from_pandas=True).type if len(df) else pa_.null()
            fields.append(pa_.field(c, pa_.string() if pa_.types.is_null(t) else t))
    return pa_.schema(fields)


def to_arrow(df: pd.DataFrame):
    """Validated, typed Arrow table of the metrics rows."""
    import pyarrow as pa_

    df = conform(df)
    return pa_.Table.from_pandas(df, schema=arrow_schema_for(df), preserve_index=False)
