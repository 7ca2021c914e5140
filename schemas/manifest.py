"""The manifest: one row per composite. The single source of its column names and rules."""

from __future__ import annotations

import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

from .vocabulary import ID_MAX_LENGTH, ID_PATTERN

REQUIRED = ("id", "composite", "mask")
OPTIONAL = ("real", "subset")


class Manifest(pa.DataFrameModel):
    """`id` names the output file, so it must be a safe file name: letters, digits, `.`, `_`, `-`, no `..`."""

    id: Series[str] = pa.Field(str_matches=ID_PATTERN, str_length={"min_value": 1, "max_value": ID_MAX_LENGTH})
    composite: Series[str] = pa.Field(str_length={"min_value": 1})
    mask: Series[str] = pa.Field(str_length={"min_value": 1})
    real: Series[str] | None = pa.Field(nullable=True)
    subset: Series[str] | None = pa.Field(nullable=True)

    @pa.check("id", name="no_dot_dot")
    def _no_parent(cls, s: Series[str]) -> Series[bool]:
        return ~s.str.contains("..", regex=False)

    class Config:
        coerce = False
        strict = False  # other columns pass through


def row_problems(df: pd.DataFrame) -> pd.Series:
    """A reason per row that breaks the schema (empty string for good rows), without failing the whole table.

    pandera validates lazily and reports failure cases with their row index; rows are
    then marked invalid one by one instead of rejecting the manifest.
    """
    missing = [c for c in REQUIRED if c not in df.columns]
    if missing:
        raise ValueError(f"manifest lacks required column(s) {missing}; it has {list(df.columns)}")
    reasons = pd.Series([""] * len(df), index=df.index, dtype=object)
    # Object columns: placeholders below must fit whatever dtype the reader inferred (e.g. all-int ids).
    work = df.astype({c: object for c in REQUIRED + OPTIONAL if c in df.columns})
    for c in REQUIRED + OPTIONAL:
        if c in work.columns:
            # Non-string cells (numbers, nulls in required columns) are reported, not coerced.
            bad_type = work[c].map(lambda v, optional=c in OPTIONAL: not (isinstance(v, str) or (optional and _isnull(v))))
            for i in work.index[bad_type]:
                reasons[i] = _join(reasons[i], f"{c}: must be a string" + ("" if c in OPTIONAL else " (required)"))
            work.loc[bad_type, c] = "x" if c not in OPTIONAL else None
    try:
        Manifest.validate(work, lazy=True)
    except pa.errors.SchemaErrors as exc:
        fc = exc.failure_cases
        for _, case in fc.iterrows():
            idx = case.get("index")
            if idx is None or pd.isna(idx):
                continue
            col, check = case.get("column"), str(case.get("check"))
            reasons[idx] = _join(reasons[idx], f"{col}: fails {check}")
    return reasons


def _isnull(v) -> bool:
    try:
        return v is None or bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


def _join(a: str, b: str) -> str:
    return b if not a else f"{a}; {b}"
