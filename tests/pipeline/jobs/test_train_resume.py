"""`harmony train` survives a killed driver: the same command resumes from the latest checkpoint (its own
file so the suite's processes share the slow train tests out)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tests.pipeline.jobs.train_helpers import SIDE, _cfg, _image_runs, _registered_checkpoints, _unet_changed, quiet


def test_stage1_resumes_after_a_killed_driver_and_exports(ray_local, train_data, tiny_checkpoint, tmp_path):
    """The driver (and its Ray instance) is SIGKILLed after its first checkpoint: the same command
    run again (in-process, on the session's Ray) resumes from the latest checkpoint, and every step
    is recorded exactly once. The refiner test below continues a finished run with more steps."""
    import os
    import signal
    import subprocess
    import sys
    import tempfile
    import time

    from pipelines.cli import main

    out, steps = tmp_path / "out", 6
    args = ["train", "--task", "stage1", "--data", str(train_data / "train.parquet"), "--init", str(tiny_checkpoint),
            "--output", str(out), "--workers", "2", "--cpus-per-worker", "0.5", "--batch-size", "2",
            "--resolution", str(SIDE), "--max-steps", str(steps), "--checkpoint-every", "1", "--log-every", "1",
            "--lr", "1e-3", "--validate", str(train_data / "val.parquet"), "--validate-every", "2"]
    # Its own Ray instance, under a short temp dir (Unix socket paths are limited to 107 bytes).
    env = {k: v for k, v in os.environ.items() if k != "RAY_ADDRESS"} | {"RAY_TMPDIR": tempfile.mkdtemp(prefix="rt-")}
    first = subprocess.Popen([sys.executable, "-m", "pipelines.cli", *args], env=env, stdout=subprocess.DEVNULL,
                             stderr=subprocess.DEVNULL, start_new_session=True)
    ckpts = out / "checkpoints"
    deadline = time.monotonic() + 240  # a loaded 2-core machine: the first start-up alone can take a minute
    try:
        # Registered, not just written: Ray Train resumes from the checkpoints its manager's snapshot lists
        # (a checkpoint folder written just before the kill is not one of them yet).
        while not _registered_checkpoints(ckpts):
            assert first.poll() is None, "the first run ended before it checkpointed"
            assert time.monotonic() < deadline, "no checkpoint within 240 s"
            time.sleep(0.05)
    finally:
        os.killpg(first.pid, signal.SIGKILL)
        first.wait()
    assert not (out / "summary.json").exists(), "the first run finished before it was killed"
    assert main(args) == 0
    summary = json.loads((out / "summary.json").read_text())
    train = pd.read_parquet(out / "metrics" / "train.parquet")
    assert train["step"].tolist() == list(range(1, steps + 1)) and summary["steps"] == steps
    assert 1 <= summary["resumed_from_step"] < steps  # picked up after a checkpoint, not from --init
    assert np.isfinite(train["loss"]).all() and train["samples"].between(1, 4).all()
    # Each worker went through its shard at least once after the resume: the corrupt row is counted
    # with its reason, not fatal.
    assert summary["rows_skipped"] == 1 and set(summary["skipped_reasons"]) <= {"corrupt", "unreadable"}
    # Validation every 2 steps and at the end, each once across the kill.
    val = pd.read_parquet(out / "metrics" / "validation.parquet")
    assert val["step"].tolist() == [2, 4, 6] and np.isfinite(val["psnr"]).all()
    assert (out / "report" / "index.html").exists() and (out / "report" / "validation-0.png").exists()
    from harmony_ops.checkpoints import resolve_checkpoint

    model = out / "model"
    assert resolve_checkpoint(str(model)).unet == model / "unet" and _unet_changed(model, tiny_checkpoint)
    # Everything but the trained part is copied from --init.
    for part in ("vae", "refiner"):
        assert (model / part / "diffusion_pytorch_model.safetensors").read_bytes() == \
            (tiny_checkpoint / part / "diffusion_pytorch_model.safetensors").read_bytes()
    _image_runs(model, train_data, tmp_path)
    # The same output resumed by another task: its checkpoint cannot be loaded into the refiner, which no
    # restart can fix: the run stops at once with the reason (no retry of the worker group).
    from pipelines.errors import JobError
    from pipelines.jobs.train.driver import run_train

    refiner = _cfg("refiner", train_data, tiny_checkpoint, out, max_steps=steps + 2, max_failures=3, workers=1,
                   cpus_per_worker=1)
    with pytest.raises(JobError, match=r"training stopped: resuming from the run's last checkpoint.*state_dict"):
        run_train(refiner, echo=quiet)
