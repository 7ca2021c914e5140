"""`harmony validate --deep`: every row that harmonize's decode stage would reject is found before any model
runs, with the same status and error type harmonize gives (the expectations harmonize's own end-to-end test
checks, on the same dataset), through the command line; validation.parquet holds one row per manifest row."""

from __future__ import annotations

import pandas as pd
import pytest

from pipelines.cli import main
from tests.pipeline.conftest import write_dataset

pytestmark = pytest.mark.pipeline


def test_deep_validation_finds_what_harmonize_would_fail_without_a_model(ray_local, tmp_path, monkeypatch, capsys):
    def put(rel, data):
        p = tmp_path / "data" / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)

    manifest = write_dataset(put)
    manifest.to_csv(tmp_path / "data" / "manifest.csv", index=False)
    monkeypatch.chdir(tmp_path)

    assert main(["validate", "--manifest", "data/manifest.csv"]) == 1  # the quick check: existence only
    quick = capsys.readouterr().out
    assert "truncated" not in quick and "sizes" not in quick  # a truncated JPEG and a wrong-size mask pass it

    rc = main(["validate", "--manifest", "data/manifest.csv", "--deep", "--max-pixels", "100000", "--output", "audit"])
    out = capsys.readouterr().out
    assert rc == 1 and "PROBLEMS FOUND" in out
    table = pd.read_parquet("audit/validation.parquet")
    assert list(table["row"]) == list(range(len(manifest))) and list(table["id"]) == list(manifest["id"])
    for r, expect in zip(table.itertuples(), manifest["expect"]):
        if expect == "ok":
            assert r.status == "ok", (r.id, r.error_type, r.error_message)
        else:
            assert r.status in ("failed", "invalid") and r.error_type == expect, (r.id, r.error_type, expect)
            assert f"(id {r.id!r}): {r.status} {r.error_type}:" in out or len(table[table.status != "ok"]) > 20
    for kind in ("size_mismatch", "empty_mask", "corrupt"):
        assert kind in out.split("by error type:")[1]
    assert (table.loc[table.status == "ok", "width"] > 0).all()
