"""A harmonize run in a subprocess that runs for a while: the killed-driver and overlapping-run tests."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import yaml

from pipelines.core.test_hooks import TEST_SLOW_ENV
from tests.pipeline.jobs.test_harmonize import local_dataset

SECONDS_PER_ROW = 0.5


def slow_job(tmp_path, **extra) -> tuple:
    """A harmonize config that runs for a while: 12 rows, one per block and batch, the baseline engine
    held back SECONDS_PER_ROW in its model stage (a model actor's own start-up would cost ~10 s more)."""
    manifest_path, manifest = local_dataset(tmp_path, good=12)
    out = tmp_path / "out"
    config = {
        "manifest": str(manifest_path), "output": str(out), "model": {"engine": "baseline"}, "block_rows": 1,
        "pools": {"decode": {"batch_size": 1, "num_cpus": 0.25, "num_gpus": 0},
                  "model": {"batch_size": 1, "num_cpus": 0.5},
                  "finish": {"batch_size": 1, "num_cpus": 0.25, "num_gpus": 0}},
        **extra,
    }
    (tmp_path / "job.yaml").write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {TEST_SLOW_ENV: f"model:{SECONDS_PER_ROW}"}
    proc = subprocess.Popen([sys.executable, "-m", "pipelines.cli", "harmonize", "--config", str(tmp_path / "job.yaml")],
                            env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    return proc, out, manifest


def kill_group(proc: subprocess.Popen) -> None:
    """SIGKILL the run and everything it started (its own Ray instance), if it still runs."""
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
