"""The manifest: one row per composite. The single source of its column names and rules."""

from __future__ import annotations

import numbers

import numpy as np
import pandas as pd
import pandera.pandas as pa
from pandera.typing import Series

from .vocabulary import ID_MAX_LENGTH, ID_PATTERN

REQUIRED = ("id",)
# A row gives its input one of two ways: a composite and its mask, or a cutout (an RGBA foreground whose
# alpha is the mask) placed on a background at (x, y), its top-left corner in background pixels.
LAYOUTS = {"composite": ("composite", "mask"), "cutout": ("foreground", "background", "x", "y")}
PLACEMENT = ("x", "y", "scale")  # numbers; scale optional (default 1)
OPTIONAL = ("real", "subset")
URI_COLUMNS = ("composite", "mask", "foreground", "background", "real")


class Manifest(pa.DataFrameModel):
    """`id` names the output file, so it must be a safe file name: letters, digits, `.`, `_`, `-`, no `..`."""

    id: Series[str] = pa.Field(str_matches=ID_PATTERN, str_length={"min_value": 1, "max_value": ID_MAX_LENGTH})
    composite: Series[str] | None = pa.Field(nullable=True, str_length={"min_value": 1})
    mask: Series[str] | None = pa.Field(nullable=True, str_length={"min_value": 1})
    foreground: Series[str] | None = pa.Field(nullable=True, str_length={"min_value": 1})
    background: Series[str] | None = pa.Field(nullable=True, str_length={"min_value": 1})
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
    # The columns missing for the layout the table comes closest to (composite first on a tie).
    missing = min(([c for c in REQUIRED + cols if c not in df.columns] for cols in LAYOUTS.values()), key=len)
    if missing:
        raise ValueError(f"manifest lacks required column(s) {missing} (rows give id with composite and mask, or "
                         f"with foreground, background, x and y); it has {list(df.columns)}")
    reasons = pd.Series([""] * len(df), index=df.index, dtype=object)
    # Object columns: placeholders below must fit whatever dtype the reader inferred (e.g. all-int ids).
    texts = ("id",) + URI_COLUMNS + ("subset",)
    work = df.astype({c: object for c in texts if c in df.columns})
    layout = row_layouts(work)
    for c in texts:
        if c not in work.columns:
            continue
        required = layout.map(lambda lay, c=c: c == "id" or c in LAYOUTS.get(lay, ()))
        bad_type = pd.Series([not (isinstance(v, str) or (not req and _isnull(v))) for v, req in zip(work[c], required)],
                             index=work.index)
        for i in work.index[bad_type]:
            found = "null" if _isnull(work.at[i, c]) else type(work.at[i, c]).__name__
            reasons[i] = _join(reasons[i], f"{c}: must be a string, not {found}" + (" (required)" if required[i] else ""))
        work.loc[bad_type, c] = "x" if c == "id" else None
    for i in work.index[layout == ""]:
        reasons[i] = _join(reasons[i], "needs composite and mask, or foreground, background, x and y")
    for i in work.index[layout == "cutout"]:
        for c in PLACEMENT:
            problem = _placement_problem(c, work.at[i, c] if c in work.columns else None)
            if problem:
                reasons[i] = _join(reasons[i], problem)
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


def row_layouts(df: pd.DataFrame) -> pd.Series:
    """Per row: "composite" when it gives a composite or a mask, else "cutout" when it gives a foreground
    or a background, else "" (neither)."""
    def given(c: str) -> pd.Series:
        return df[c].map(lambda v: not _isnull(v)) if c in df.columns else pd.Series(False, index=df.index)

    composite = given("composite") | given("mask")
    cutout = given("foreground") | given("background")
    return pd.Series(["composite" if a else "cutout" if b else "" for a, b in zip(composite, cutout)], index=df.index,
                     dtype=object)


def _placement_problem(column: str, v) -> str:
    if column == "scale" and _isnull(v):
        return ""
    if _isnull(v):
        return f"{column}: missing (a cutout's placement needs x and y, in background pixels)"
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, numbers.Real) and not _numeric_text(v):
        return f"{column}: {v!r} is not a number"
    value = float(v)
    if value != value or value in (float("inf"), float("-inf")):
        return f"{column}: {v!r} is not a finite number"
    if column == "scale":
        return "" if 0 < value <= 16 else f"scale: {v!r} must be more than 0 and at most 16"
    if value < 0:
        return f"{column}: {v!r} is negative (the cutout's top-left corner must lie on the background)"
    if value != int(value):
        return f"{column}: {v!r} is not a whole number of pixels"
    return ""


def _numeric_text(v) -> bool:
    try:
        float(v)
        return isinstance(v, str)
    except (TypeError, ValueError):
        return False


def _isnull(v) -> bool:
    try:
        return v is None or bool(pd.isna(v))
    except (TypeError, ValueError):
        return False


def _join(a: str, b: str) -> str:
    return b if not a else f"{a}; {b}"
