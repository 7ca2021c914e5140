"""`harmony train` on CPU with one or two Ray Train workers and the tiny checkpoint (32 px, a few steps).

Each Ray Train launch costs tens of seconds on a 2-core machine: one output serves several checks where it can."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from tests.pipeline.jobs.train_helpers import SIDE, _cfg, _image_runs, _unet_changed, quiet


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


def test_refiner_cache_built_once_then_reused_by_a_longer_rerun_that_survives_a_dead_worker(
        ray_local, train_data, tiny_checkpoint, tmp_path, monkeypatch):
    """--stage1-cache: the first refiner run (one worker, 2 steps) samples stage 1 once over --data into
    the cache. The same output re-run with --max-steps 4 and two workers continues from step 2, reads
    the cache back (no sampler: the cache's files are not rewritten), and one of its workers raises
    once at step 3 (test hook): it restarts from the step-2 checkpoint and ends at step 4 with every
    step recorded once, then exports."""
    from pipelines.core.test_hooks import TRAIN_FAIL_AT_ENV, TRAIN_FAIL_MARKER_ENV
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
    monkeypatch.setenv(TRAIN_FAIL_AT_ENV, "3")
    monkeypatch.setenv(TRAIN_FAIL_MARKER_ENV, str(marker))
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
