"""Whatever a manifest's cells hold, every row becomes exactly one row of the metrics table, with no crash: cells of
the wrong type are invalid rows naming the column and the type, columns named like the jobs' own are carried
under `manifest.<name>`, nested or mixed pass-through columns as JSON text, an empty manifest is an empty run."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from pipelines.io.manifest import PASS_PREFIX, normalise_columns, prepare_rows, read_manifest, reserved_columns
from schemas.metrics import COLUMNS, to_arrow


def finished(rows: pd.DataFrame) -> pd.DataFrame:
    """The rows as a job leaves them when every pending row failed on its first read (the stages add no column
    that the manifest could have broken): what consolidation validates and writes."""
    out = rows.copy()
    pending = out["status"] == "pending"
    out.loc[pending, ["status", "error_type", "error_message"]] = ["failed", "storage_error", "not read in this test"]
    out.loc[pending, "output"] = None
    for c, v in {"engine": "baseline", "model": "m", "config_key": "k", "resolution_mode": "auto",
                 "scheduler": "none"}.items():
        out[c] = v
    return out


def write_jsonl(path, records) -> str:
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    return str(path)


@pytest.mark.parametrize("fmt", ["csv", "parquet", "jsonl"])
def test_an_empty_manifest_is_an_empty_run(tmp_path, fmt):
    p = tmp_path / f"m.{fmt}"
    if fmt == "csv":
        p.write_text("id,composite,mask\n")
    elif fmt == "parquet":
        pd.DataFrame({"id": pd.Series([], dtype=str), "composite": pd.Series([], dtype=str)}).to_parquet(p)
    else:
        p.write_text("")
    rows = prepare_rows(read_manifest(str(p)), str(p), str(tmp_path / "out"), "png", 0)
    assert len(rows) == 0
    assert to_arrow(finished(rows)).num_rows == 0


def test_cells_of_the_wrong_type_are_invalid_rows_naming_column_and_type(tmp_path):
    values = [5, None, ["x"], {"k": 1}, True, 2.5]
    p = write_jsonl(tmp_path / "m.jsonl", [{"id": "ok", "composite": "c.png", "mask": "m.png"}]
                    + [{"id": f"r{k}", "composite": v, "mask": "m.png"} for k, v in enumerate(values)])
    rows = prepare_rows(read_manifest(p), p, str(tmp_path / "out"), "png", 0)
    assert list(rows["status"]) == ["pending"] + ["invalid"] * len(values)
    for k, kind in enumerate(("int", "null", "list", "dict", "bool", "float")):
        assert f"composite: must be a string, not {kind} (required)" in rows.loc[k + 1, "error_message"]
    assert rows.loc[1:, "composite"].isna().all()  # the table keeps strings only
    assert to_arrow(finished(rows)).num_rows == len(values) + 1


def test_columns_named_like_the_jobs_own_are_carried_under_a_prefix(tmp_path):
    df = pd.DataFrame({"id": ["a"], "composite": ["c.png"], "mask": ["m.png"], "width": [1], "status": ["x"],
                       "psnr": [1.0], "row": [7], "output": ["o"], "comp_bytes": ["b"], "manifest.width": ["taken"]})
    out = normalise_columns(df)
    assert out.loc[0, "manifest.row"] == 7 and out.loc[0, "manifest.psnr"] == 1.0 and out.loc[0, "manifest.comp_bytes"] == "b"
    assert out.loc[0, "manifest.width"] == "taken" and out.loc[0, PASS_PREFIX * 2 + "width"] == 1  # no clobbering
    rows = prepare_rows(out, str(tmp_path / "m.csv"), str(tmp_path / "o"), "png", 0)
    assert rows.loc[0, "row"] == 0 and rows.loc[0, "status"] == "pending"
    table = to_arrow(finished(rows))
    assert table.column("manifest.status").to_pylist() == ["x"]


def test_nested_and_mixed_pass_through_columns_are_json_text_and_an_id_index_is_the_id(tmp_path):
    df = pd.DataFrame({"id": ["a", "b", "c"], "composite": ["c.png"] * 3, "mask": ["m.png"] * 3,
                       "meta": [{"sku": 1}, [1, 2], None], "mixed": [1, "two", 3.5], "plain": [1, 2, 3]})
    out = normalise_columns(df)
    assert out["meta"].tolist() == ['{"sku": 1}', "[1, 2]", None] and out["mixed"].tolist() == ["1", "two", "3.5"]
    assert out["plain"].tolist() == [1, 2, 3]  # one scalar type: carried as it is
    to_arrow(finished(prepare_rows(out, str(tmp_path / "m.csv"), str(tmp_path / "o"), "png", 0)))
    p = tmp_path / "indexed.parquet"
    df[["id", "composite", "mask"]].set_index("id").to_parquet(p)
    assert read_manifest(str(p))["id"].tolist() == ["a", "b", "c"]


def test_the_reserved_names_cover_every_column_a_stage_reads_or_writes():
    import importlib
    import inspect

    from pipelines.core.stage import Stage
    from pipelines.io.manifest import INPUT_COLUMNS

    reserved = reserved_columns() | set(INPUT_COLUMNS)
    for module in ("harmonize.decode", "harmonize.model", "harmonize.finish", "evaluate.stage", "validate.stage",
                   "synthesize.stage"):
        mod = importlib.import_module(f"pipelines.jobs.{module}")
        for name, cls in vars(mod).items():
            if inspect.isclass(cls) and issubclass(cls, Stage) and cls.__module__ == mod.__name__:
                for attr in ("reads", "writes"):
                    cols = getattr(cls, attr)
                    if isinstance(cols, (tuple, list)):
                        assert set(cols) <= reserved, (name, attr, set(cols) - reserved)


JSON = st.recursive(st.none() | st.booleans() | st.integers(-10**12, 10**12) | st.floats(allow_nan=False)
                    | st.text(max_size=8), lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=4), inner, max_size=3), max_leaves=6)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(st.lists(st.fixed_dictionaries({c: JSON for c in ("id", "composite", "mask", "real", "subset", "x", "width",
                                                         "extra")}), min_size=1, max_size=5))
def test_any_json_values_in_any_column_give_one_metrics_row_per_input_row(tmp_path, records):
    p = write_jsonl(tmp_path / "m.jsonl", records)
    rows = prepare_rows(read_manifest(p), p, str(tmp_path / "out"), "png", 0)
    table = to_arrow(finished(rows))
    assert table.num_rows == len(records)
    assert table.column("row").to_pylist() == list(range(len(records)))
    assert set(COLUMNS) <= set(table.column_names)
    assert np.all(np.isin(table.column("status").to_pylist(), ["invalid", "failed"]))


def test_typed_pass_through_columns_are_carried_as_they_are(tmp_path):
    p = tmp_path / "typed.parquet"
    pd.DataFrame({"id": ["a", "b", "c"], "composite": ["c.png"] * 3, "mask": ["m.png"] * 3,
                  "qty": pd.array([1, None, 3], dtype="Int64"), "when": pd.to_datetime(["2024-01-01"] * 3),
                  "flag": pd.array([True, None, False], dtype="boolean"), "price": [1.5, np.nan, 2.0]}).to_parquet(p)
    out = read_manifest(str(p))
    assert out["qty"].tolist()[0] == 1 and pd.isna(out["qty"].tolist()[1]) and str(out["when"].dtype).startswith("datetime")
    assert out["flag"].tolist()[0] is True or out["flag"].tolist()[0] == True  # noqa: E712 - numpy/pandas bools
    assert np.isnan(out["price"].tolist()[1])
    table = to_arrow(finished(prepare_rows(out, str(p), str(tmp_path / "o"), "png", 0)))
    assert table.column("qty").to_pylist() == [1, None, 3]
