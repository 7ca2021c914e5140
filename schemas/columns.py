"""Typing a table's columns the same way for every schema, so blocks written separately read back as one."""

from __future__ import annotations

from typing import Iterable

import pandas as pd


def typed_columns(df: pd.DataFrame, columns: Iterable[str], *, ints: Iterable[str] = (), nullable_ints: Iterable[str] = (),
                  floats: Iterable[str] = (), bools: Iterable[str] = (), nullable_bools: Iterable[str] = ()) -> pd.DataFrame:
    """`columns` of `df` in order and in Arrow-friendly dtypes; missing ones become nulls.

    ints: int64; nullable_ints: pandas Int64; floats: float64 (non-numbers become NaN); bools: bool
    (null is False); nullable_bools: pandas boolean (null stays null); everything else: object with None for missing values.
    """
    ints, nullable_ints, floats, bools = set(ints), set(nullable_ints), set(floats), set(bools)
    nullable_bools = set(nullable_bools)
    out = pd.DataFrame(index=df.index)
    for c in columns:
        v = df[c] if c in df.columns else pd.Series([None] * len(df), index=df.index, dtype=object)
        if c in ints:
            out[c] = v.astype("int64")
        elif c in bools:
            out[c] = v.fillna(False).astype(bool)
        elif c in nullable_bools:
            out[c] = pd.array([None if pd.isna(x) else bool(x) for x in v.tolist()], dtype="boolean")
        elif c in nullable_ints:
            out[c] = pd.array(v.tolist(), dtype="Int64") if len(v) else pd.array([], dtype="Int64")
        elif c in floats:
            out[c] = pd.to_numeric(v, errors="coerce").astype("float64")
        elif len(v):
            out[c] = v.astype(object).where(v.notna(), None)
        else:  # no rows: nothing says "text" but the dtype (an empty object column reads as untyped)
            out[c] = pd.Series([], index=df.index, dtype="string[pyarrow]")
    return out
