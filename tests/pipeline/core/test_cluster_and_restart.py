"""A driver killed mid-run that a re-run completes. (A job on a two-node simulated cluster, every row ok
once, is checked by test_faults.py::test_node_removed_mid_run, on the same kind of cluster.)"""

from __future__ import annotations

import os
import signal
import time

import pytest
import yaml

from pipelines.jobs.harmonize.config import HarmonizeJobConfig
from pipelines.jobs.harmonize.job import run_harmonize
from tests.pipeline.jobs.slow_job import slow_job
from tests.pipeline.jobs.test_harmonize import quiet

pytestmark = pytest.mark.pipeline


def test_driver_killed_midway_then_rerun_completes(ray_local, tmp_path):
    proc, out, manifest = slow_job(tmp_path)
    journal = out / "_journal"
    deadline = time.time() + 120
    try:
        while time.time() < deadline:
            if journal.exists() and any(journal.rglob("*.parquet")):
                break
            if proc.poll() is not None:
                pytest.fail("the job finished before it could be killed")
            time.sleep(0.2)
        else:
            pytest.fail("no journal file appeared")
    finally:
        os.killpg(proc.pid, signal.SIGKILL)  # the driver dies mid-run, whatever it was doing
        proc.wait()
    assert not (out / "metrics").exists()  # the killed run never consolidated
    done_before = len(list((out / "images").glob("*.png")))
    assert 0 < done_before < len(manifest)

    cfg = HarmonizeJobConfig.model_validate(yaml.safe_load((tmp_path / "job.yaml").read_text()))  # the same job
    r = run_harmonize(cfg, echo=quiet)
    m = r.metrics
    assert len(m) == len(manifest) and not m["id"].duplicated().any()
    assert m["status"].isin(["ok", "skipped"]).all() and (m["status"] == "skipped").sum() >= 1
    images = sorted(p.name for p in (out / "images").iterdir())
    assert images == sorted(f"{i}.png" for i in manifest["id"])  # no partial or temporary objects left
    assert not journal.exists()
