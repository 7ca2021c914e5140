"""A row whose processing kills its worker process (a native crash, the OOM killer) does not make Ray
retry its batch for ever: after `max_worker_crashes` deaths the batch is split, the row that still
kills its worker fails with `worker_crashed`, every other row completes. Through the CLI in a
subprocess, so that the test-only crash hook reaches the Ray workers through their environment."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from pipelines.core.test_hooks import TEST_CRASH_ENV
from tests.pipeline.jobs.test_harmonize import local_dataset

pytestmark = pytest.mark.pipeline

# Batches of two rows: the poisoned row costs two worker deaths (its batch, then itself alone).
POOL = {"num_cpus": 0.5, "num_gpus": 0, "batch_size": 2, "max_workers": 1}


def run_cli(tmp_path, args: list[str], crash: str) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"}
    env[TEST_CRASH_ENV] = crash
    return subprocess.run([sys.executable, "-m", "pipelines.cli", *args], env=env, capture_output=True, text=True,
                          timeout=240, cwd=tmp_path)


def check(metrics: pd.DataFrame, poisoned: str, n: int) -> None:
    m = metrics.set_index("id")
    assert len(m) == n
    assert m.loc[poisoned, "status"] == "failed" and m.loc[poisoned, "error_type"] == "worker_crashed"
    assert "killed its" in m.loc[poisoned, "error_message"]
    assert (m.drop(index=poisoned)["status"] == "ok").all()


def test_harmonize_fails_only_the_row_that_kills_the_model_worker(tmp_path):
    manifest_path, manifest = local_dataset(tmp_path, good=4)
    out = tmp_path / "out"
    config = {"manifest": str(manifest_path), "output": str(out), "model": {"engine": "baseline"}, "block_rows": 2,
              "num_cpus": 2, "max_worker_crashes": 1,
              "pools": {"decode": POOL, "model": {**POOL, "num_cpus": 1}, "finish": POOL}}
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(config))
    r = run_cli(tmp_path, ["harmonize", "--config", str(tmp_path / "job.yaml")], crash="model:good2")
    assert r.returncode == 0, r.stderr[-3000:]
    check(pd.read_parquet(out / "metrics" / "metrics.parquet"), "good2", len(manifest))
    assert not (out / "images" / "good2.png").exists() and (out / "images" / "good3.png").exists()
    assert not (out / "_journal").exists()


def test_evaluate_fails_only_the_row_that_kills_its_worker(tmp_path):
    manifest_path, manifest = local_dataset(tmp_path, good=4)
    preds = tmp_path / "preds"
    preds.mkdir()
    for rid, comp in zip(manifest["id"], manifest["composite"]):
        shutil.copy(manifest_path.parent / comp, preds / f"{rid}.png")
    config = {"manifest": str(manifest_path), "predictions": str(preds), "output": str(tmp_path / "eval"),
              "num_cpus": 2, "block_rows": 2, "report": False, "max_worker_crashes": 1, "pool": POOL}
    (tmp_path / "eval.yaml").write_text(yaml.safe_dump(config))
    r = run_cli(tmp_path, ["evaluate", "--config", str(tmp_path / "eval.yaml")], crash="evaluate:good1")
    assert r.returncode == 0, r.stderr[-3000:]
    check(pd.read_parquet(tmp_path / "eval" / "metrics" / "metrics.parquet"), "good1", len(manifest))
