"""`harmony train` on CPU with one or two Ray Train workers and the tiny checkpoint (32 px, a few steps).

Each Ray Train launch costs tens of seconds on a 2-core machine: one output serves several checks where it can."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from tests.pipeline.conftest import enc, make_scene

SIDE = 32


def quiet(*a, **k):
    pass


@pytest.fixture(scope="module")
def train_data(tmp_path_factory) -> Path:
    """Six good triples, one corrupt composite (must be skipped and counted, not crash the run)."""
    root = tmp_path_factory.mktemp("train-data")
    rows = []
    for k in range(6):
        comp, mask, real = make_scene(k, ratio=0.3)
        for kind, arr in (("comp", comp), ("mask", mask), ("real", real)):
            (root / kind).mkdir(exist_ok=True)
            (root / kind / f"s{k}.png").write_bytes(enc(arr))
        rows.append(dict(id=f"s{k}", composite=f"comp/s{k}.png", mask=f"mask/s{k}.png", real=f"real/s{k}.png"))
    (root / "comp" / "bad.png").write_bytes(b"not an image")
    # First: Ray Train's equal split may leave the last row of an epoch out.
    rows.insert(0, dict(id="bad", composite="comp/bad.png", mask="mask/s0.png", real="real/s0.png"))
    pd.DataFrame(rows).to_parquet(root / "train.parquet")
    pd.DataFrame(rows[1:3]).to_parquet(root / "val.parquet")
    return root


def _cfg(task, data, init, out, **kw):
    from pipelines.config import TrainJobConfig

    base = dict(task=task, data=str(data / "train.parquet"), init=str(init), output=str(out), workers=2,
                cpus_per_worker=0.5, batch_size=2, resolution=SIDE, max_steps=2, checkpoint_every=2, log_every=1,
                random_crop=False, sampler_steps=2, lr=1e-3, max_failures=1)
    base.update(kw)
    return TrainJobConfig(**base)


def _image_runs(model: Path, data: Path, tmp: Path) -> None:
    from pipelines.cli import main

    out = tmp / "image.png"
    assert main(["image", str(data / "comp" / "s0.png"), str(data / "mask" / "s0.png"), "-o", str(out),
                 "--model", str(model)]) == 0
    assert out.stat().st_size > 0


def _unet_changed(model: Path, init: Path, part: str = "unet") -> bool:
    from safetensors.torch import load_file

    new, old = (load_file(p / part / "diffusion_pytorch_model.safetensors") for p in (model, init))
    return any(not np.allclose(new[k].numpy(), old[k].numpy()) for k in old)


@pytest.mark.parametrize("task,part", [("inverse", "unet"), ("harmony-vae", "harmony_vae")])
def test_inverse_and_harmony_vae_train_via_cli(ray_local, train_data, tiny_checkpoint, tmp_path, task, part):
    # Two workers (DDP over gloo), as every task trains on a cluster.
    from pipelines.cli import main

    out = tmp_path / "out"
    assert main(["train", "--task", task, "--data", str(train_data / "train.parquet"), "--init", str(tiny_checkpoint),
                 "--output", str(out), "--workers", "2", "--cpus-per-worker", "0.5", "--batch-size", "2",
                 "--resolution", str(SIDE), "--max-steps", "1", "--checkpoint-every", "1", "--no-ema"]) == 0
    assert json.loads((out / "summary.json").read_text())["task"] == task
    model = out / "model"
    if part == "harmony_vae":  # --init has none: it starts from the VAE (ConditionVAE.from_vae)
        from harmony_ops.checkpoints import resolve_checkpoint

        assert resolve_checkpoint(str(model)).harmony_vae == model / "harmony_vae"
    else:
        assert _unet_changed(model, tiny_checkpoint)
    _image_runs(model, train_data, tmp_path)


def _registered_checkpoints(ckpts) -> int:
    n = 0
    for snap in ckpts.glob("*/checkpoint_manager_snapshot.json"):
        try:
            n = max(n, len(json.loads(snap.read_text()).get("checkpoint_results", [])))
        except ValueError:  # being written
            pass
    return n


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
    deadline = time.monotonic() + 120
    try:
        # Registered, not just written: Ray Train resumes from the checkpoints its manager's snapshot lists
        # (a checkpoint folder written just before the kill is not one of them yet).
        while not _registered_checkpoints(ckpts):
            assert first.poll() is None, "the first run ended before it checkpointed"
            assert time.monotonic() < deadline, "no checkpoint within 120 s"
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

    refiner = _cfg("refiner", train_data, tiny_checkpoint, out, max_steps=steps + 2, max_failures=3)
    with pytest.raises(JobError, match=r"training stopped: resuming from the run's last checkpoint.*state_dict"):
        run_train(refiner, echo=quiet)


def test_refiner_cache_built_once_then_reused_by_a_longer_rerun_that_survives_a_dead_worker(
        ray_local, train_data, tiny_checkpoint, tmp_path, monkeypatch):
    """--stage1-cache: the first refiner run (one worker, 2 steps) samples stage 1 once over --data into
    the cache. The same output re-run with --max-steps 4 and two workers continues from step 2, reads
    the cache back (no sampler: the cache's files are not rewritten), and one of its workers raises
    once at step 3 (test hook): it restarts from the step-2 checkpoint and ends at step 4 with every
    step recorded once, then exports."""
    from pipelines.jobs.train import loop
    from pipelines.jobs.train.cache import MANIFEST, META
    from pipelines.jobs.train.driver import run_train

    cache, out = tmp_path / "cache", tmp_path / "out"
    kw = dict(ema=False, stage1_cache=str(cache), random_crop=True)
    res = run_train(_cfg("refiner", train_data, tiny_checkpoint, out, workers=1, cpus_per_worker=1, **kw), echo=quiet)
    assert res.summary["stage1_cache"] == dict(uri=str(cache), reused=False, rows=6)
    assert res.summary["steps"] == 2 and res.summary["resumed_from_step"] == 0
    manifest = pd.read_parquet(cache / MANIFEST)
    assert {"composite", "mask", "real", "harmonized"} <= set(manifest.columns)
    assert manifest["harmonized"].notna().sum() == 6 and json.loads((cache / META).read_text())["resolution"] == SIDE
    pngs = sorted((cache / "harmonized").glob("*.png"))
    assert len(pngs) == 6
    stamps = {p: p.stat().st_mtime_ns for p in [*pngs, cache / MANIFEST, cache / META]}
    # The corrupt row failed in the cache build: it is counted as skipped, not trained on.
    assert res.summary["rows_skipped"] == 1

    marker = tmp_path / "failed-once"
    monkeypatch.setenv(loop.FAIL_AT_ENV, "3")
    monkeypatch.setenv(loop.FAIL_MARKER_ENV, str(marker))
    res = run_train(_cfg("refiner", train_data, tiny_checkpoint, out, max_steps=4, **kw), echo=quiet)
    assert marker.exists(), "the test hook did not fire"
    assert res.summary["stage1_cache"]["reused"] is True and res.summary["rows_skipped"] == 1
    assert {p: p.stat().st_mtime_ns for p in stamps} == stamps
    assert res.summary["steps"] == 4 and res.summary["resumed_from_step"] == 2
    train = pd.read_parquet(out / "metrics" / "train.parquet")
    assert train["step"].tolist() == [1, 2, 3, 4] and np.isfinite(train["loss"]).all()
    assert train["samples"].tolist()[:3] == [2, 2, 4]  # one worker's batch, then two workers' batches
    assert _unet_changed(out / "model", tiny_checkpoint, "refiner")
    assert not _unet_changed(out / "model", tiny_checkpoint, "unet")
    _image_runs(out / "model", train_data, tmp_path)


def test_cached_augmentation_crops_all_four_alike():
    from harmony_ops.training.augment import augment, augment_many

    rng = np.random.default_rng(0)
    img = rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)
    mask = (rng.random((40, 48)) > 0.5).astype(np.uint8)
    (a, b, c), m = augment_many([img, img.copy(), img.copy()], mask, SIDE, np.random.default_rng(3))
    assert (a == b).all() and (a == c).all() and m.shape == (SIDE, SIDE)
    # Same draws as the three-image augment.
    comp, m2, real = augment(img, mask, img, SIDE, np.random.default_rng(3))
    assert (comp == a).all() and (m2 == m).all()
