"""Manifests a careless or hostile user writes, through the `harmony` command as the README shows it (relative
paths): every row leaves exactly one metrics row, nothing crashes (issue 29, classes 1-3)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipelines.cli.main import main as cli_main

pytestmark = pytest.mark.pipeline


@pytest.fixture()
def folder(tmp_path, monkeypatch):
    Image.fromarray(np.full((24, 32, 3), 120, np.uint8)).save(tmp_path / "c.png")
    m = np.zeros((24, 32), np.uint8)
    m[6:18, 8:24] = 255
    Image.fromarray(m).save(tmp_path / "m.png")
    monkeypatch.chdir(tmp_path)
    return tmp_path


def test_wrong_types_colliding_and_nested_columns_one_metrics_row_each(ray_local, folder, capsys):
    records = [{"id": "good", "composite": "c.png", "mask": "m.png", "width": 7, "status": "draft", "psnr": "n/a",
                "meta": {"sku": "B-1", "tags": ["blue"]}},
               {"id": "num", "composite": 5, "mask": "m.png", "width": "wide", "meta": [1]},
               {"id": "list", "composite": ["c.png"], "mask": "m.png", "meta": "plain text"},
               {"id": "flag", "composite": "c.png", "mask": True},
               {"id": 17, "composite": "c.png", "mask": "m.png"}]
    (folder / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert cli_main(["harmonize", "--manifest", "manifest.jsonl", "--output", "out", "--engine", "baseline"]) == 0
    m = pd.read_parquet(folder / "out" / "metrics" / "metrics.parquet")
    assert list(m["row"]) == list(range(len(records)))
    assert list(m["status"]) == ["ok", "invalid", "invalid", "invalid", "invalid"]
    assert "composite: must be a string, not int" in m.loc[1, "error_message"]
    assert "mask: must be a string, not bool" in m.loc[3, "error_message"]
    assert m.loc[0, "width"] == 32 and m["manifest.width"].tolist()[:2] == ["7", "wide"]  # carried, renamed, as text
    assert m.loc[0, "manifest.status"] == "draft" and json.loads(m.loc[0, "meta"]) == {"sku": "B-1", "tags": ["blue"]}
    assert capsys.readouterr().out  # the summary lines, no traceback


@pytest.mark.parametrize("fmt", ["csv", "jsonl"])
def test_an_empty_manifest_is_a_successful_empty_run(ray_local, folder, fmt):
    (folder / f"manifest.{fmt}").write_text("id,composite,mask\n" if fmt == "csv" else "")
    assert cli_main(["harmonize", "--manifest", f"manifest.{fmt}", "--output", "out", "--engine", "baseline"]) == 0
    assert len(pd.read_parquet(folder / "out" / "metrics" / "metrics.parquet")) == 0
    assert json.loads((folder / "out" / "summary.json").read_text())["rows"] == 0


def test_evaluate_with_cells_of_the_wrong_type(ray_local, folder):
    (folder / "preds").mkdir()
    Image.open(folder / "c.png").save(folder / "preds" / "good.png")
    records = [{"id": "good", "composite": "c.png", "mask": "m.png", "real": "c.png"},
               {"id": "bad", "composite": "c.png", "mask": "m.png", "real": 3, "row": "mine"}]
    (folder / "manifest.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    assert cli_main(["evaluate", "--manifest", "manifest.jsonl", "--predictions", "preds", "--output", "ev"]) == 0
    m = pd.read_parquet(folder / "ev" / "metrics" / "metrics.parquet")
    assert list(m["status"]) == ["ok", "invalid"] and "real: must be a string, not int" in m.loc[1, "error_message"]
    assert m["manifest.row"].isna().tolist() == [True, False] and m.loc[1, "manifest.row"] == "mine"


def test_a_named_pipe_fails_its_row_and_the_job_goes_on(ray_local, folder):
    import os

    if not hasattr(os, "mkfifo"):
        pytest.skip("no named pipes here")
    os.mkfifo(folder / "pipe.png")
    (folder / "manifest.csv").write_text("id,composite,mask\ngood,c.png,m.png\npipe,pipe.png,m.png\n"
                                         "upper,FILE://" + str(folder) + "/c.png,m.png\n")
    assert cli_main(["harmonize", "--manifest", "manifest.csv", "--output", "out", "--engine", "baseline"]) == 0
    m = pd.read_parquet(folder / "out" / "metrics" / "metrics.parquet").set_index("id")
    assert m.loc["good", "status"] == "ok" and m.loc["upper", "status"] == "ok"
    assert m.loc["pipe", "status"] == "failed" and m.loc["pipe", "error_type"] == "storage_error"
    assert "not a regular file" in m.loc["pipe", "error_message"]


@pytest.mark.parametrize("output,says", [("afile.txt", "is a file, not a folder"), ("afile.txt/below", "which is a file"),
                                         ("", "empty"), ("http://127.0.0.1:9/out", "read-only")])
def test_an_output_that_cannot_be_written_exits_2_before_anything_is_written(folder, capsys, output, says):
    (folder / "afile.txt").write_text("keep me")
    (folder / "manifest.csv").write_text("id,composite,mask\ngood,c.png,m.png\n")
    assert cli_main(["harmonize", "--manifest", "manifest.csv", "--output", output, "--engine", "baseline"]) == 2
    err = capsys.readouterr().err
    assert says in err and "Traceback" not in err
    assert (folder / "afile.txt").read_text() == "keep me" and not (folder / "_journal").exists()


def test_a_pool_no_node_can_hold_exits_2_instead_of_waiting_for_ever(ray_local, folder, capsys):
    (folder / "manifest.csv").write_text("id,composite,mask\ngood,c.png,m.png\n")
    t = __import__("time").monotonic()
    assert cli_main(["harmonize", "--manifest", "manifest.csv", "--output", "out", "--engine", "baseline",
                     "--gpus-per-actor", "1"]) == 2
    err = capsys.readouterr().err
    assert "pools.model: one worker needs" in err and "GPU" in err and "never grows" in err
    assert __import__("time").monotonic() - t < 60


def test_synthesize_reads_a_jsonl_with_mixed_columns_and_wrong_types_row_by_row(ray_local, folder):
    rows = [{"id": "a", "real": "c.png", "extra": 1}, {"id": "b", "real": 5, "extra": "x"},
            {"id": "c", "real": "c.png", "extra": {"k": [1]}}, {"id": 7, "real": "c.png"}]
    (folder / "m.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows) + "not json\n")
    assert cli_main(["synthesize", "--manifest", "m.jsonl", "--output", "syn", "--mask-source", "blob",
                     "--per-image", "1"]) == 0
    p = pd.read_parquet(folder / "syn" / "params.parquet")
    first = p[p["first_of_input"]].set_index("source_id")
    assert len(first) == 5  # every input line is accounted for
    assert first.loc["b", "status"] == "invalid" and first.loc["b", "message"] == "real: must be a string, not int"
    assert first.loc["7", "message"] == "id: must be a string, not int"
    assert first.loc["", "message"].startswith("line is not JSON")
    assert first.loc["a", "status"] != "invalid" and first.loc["c", "status"] != "invalid"


def test_synthesize_checks_a_jsonl_manifests_columns_before_running_and_runs_an_empty_one(ray_local, folder, capsys):
    (folder / "noreal.jsonl").write_text(json.dumps({"id": "a", "photo": "c.png"}) + "\n")
    assert cli_main(["synthesize", "--manifest", "noreal.jsonl", "--output", "s1", "--mask-source", "blob"]) == 2
    assert "lacks column(s) ['real']" in capsys.readouterr().err
    (folder / "empty.jsonl").write_text("")
    assert cli_main(["synthesize", "--manifest", "empty.jsonl", "--output", "s2", "--mask-source", "blob"]) == 0
