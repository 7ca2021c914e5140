"""The row table's data: every row, the output image linked only where it lies under the report's prefix, no
markup from the data."""

from __future__ import annotations

import json

import pandas as pd

from pipelines.report.rows import _relative, rows_json


def test_an_output_under_the_prefix_is_linked_relative_whichever_way_the_prefix_was_typed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    out = str(tmp_path / "out" / "images" / "a.png")  # jobs write absolute paths
    assert _relative(out, "out") == "images/a.png"  # `harmony report out`
    assert _relative(out, str(tmp_path / "out")) == "images/a.png"
    assert _relative(out, f"file://{tmp_path}/out/") == "images/a.png"
    assert _relative(str(tmp_path / "elsewhere" / "a.png"), "out") is None  # outside: never linked
    assert _relative("s3://b/run/images/a.png", "s3://b/run") == "images/a.png"
    assert _relative("s3://b/run/images/a.png", "out") is None and _relative(None, "out") is None


def test_rows_json_keeps_markup_out_and_names_the_review_files():
    df = pd.DataFrame({"id": ['<img src=x onerror="alert(1)">', "b"], "row": [1, 0], "status": ["ok", "failed"],
                       "fmse": [1.5, None], "error_message": [None, "x" * 400], "output": [None, None],
                       "review": ["composite.png,thumb.jpg", None], "width": [4, None], "height": [3, None]})
    text = rows_json(df, "/out")
    assert "<" not in text and ">" not in text
    data = json.loads(text)
    assert [r[0] for r in data["rows"]] == [0, 1]  # manifest order
    cols = data["columns"]
    first, second = ({c: v for c, v in zip(cols, r)} for r in data["rows"])
    assert first["error_message"].endswith("…") and len(first["error_message"]) == 301
    assert second["review"] == "composite.png,thumb.jpg" and second["width"] == 4
    assert set(data["hidden"]) >= {"review", "width", "height", "image"}
    assert data["files"]["thumb"] == "thumb" and data["review_dir"] == "report_files/rows"


def test_evaluates_two_methods_are_named_by_their_folders():
    df = pd.DataFrame({"id": ["a"], "row": [0], "status": ["ok"], "output": [None]})
    data = json.loads(rows_json(df, "/out", {"harmonized": "/runs/demo/results/images", "compare": "s3://b/other/"}))
    assert data["sources"] == {"harmonized": "results/images", "compare": "b/other"}
    assert json.loads(rows_json(df, "/out"))["sources"] == {}
