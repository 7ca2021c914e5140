"""Engines: regions at the right scale, refinement at output scale, the baseline behind the same interface."""

import numpy as np
import pytest
import torch

from harmony_ops.engines import BaselineEngine, refine_region
from harmony_ops.loader import load_diffharmony, load_engine, pick_dtype
from harmony_ops.regions import finish, prepare
from harmony_ops.resolution import ResolutionPolicy

SMALL = ResolutionPolicy(mode="512", class_sizes=(64, 128))


@pytest.fixture(scope="module")
def engine(tiny_checkpoint):
    return load_diffharmony(str(tiny_checkpoint), device="cpu")


def mask_of(mask_u8):
    return (mask_u8 > 0).astype(np.float32)


def test_diffharmony_end_to_end_keeps_size_and_background(engine, scene):
    comp, mask, _ = scene
    m = mask_of(mask)
    item = prepare(comp, m, SMALL)
    assert item.image.shape == (item.plan.height, item.plan.width, 3)
    res = engine.run([item], [0])
    region = res.regions[0]
    assert region.shape == comp.shape and region.dtype == np.uint8  # no crop: the region is the whole image
    out = finish(comp, m, item.plan.region, region)
    assert np.array_equal(out[m < 0.5], comp[m < 0.5])
    assert not np.array_equal(out[m >= 0.5], comp[m >= 0.5])
    assert set(res.seconds) == {"stage1", "refine"}


def test_refiner_runs_at_the_regions_own_scale(engine, scene):
    comp, mask, _ = scene
    seen = []
    hook = engine.refiner.register_forward_hook(lambda mod, args, out: seen.append(tuple(args[0].shape)))
    try:
        item = prepare(comp, mask_of(mask), SMALL)
        engine.run([item], [0])
    finally:
        hook.remove()
    h, w = mask.shape
    f = engine.refiner.downsample_factor
    # region size padded up to the U-Net's multiple, never the 64/128 px inference size
    assert seen == [(1, 7, -(-h // f) * f, -(-w // f) * f)]


def test_refine_region_caps_pixels_and_returns_region_size(engine):
    harm = torch.rand(3, 64, 64)
    region = np.random.default_rng(0).integers(0, 255, (90, 130, 3), dtype=np.uint8)
    rmask = np.zeros((90, 130), np.float32)
    rmask[20:60, 30:90] = 1
    seen = []
    hook = engine.refiner.register_forward_hook(lambda mod, args, out: seen.append(tuple(args[0].shape)))
    try:
        out = refine_region(engine.refiner, harm, region, rmask, max_pixels=40 * 60)
    finally:
        hook.remove()
    assert out.shape == (90, 130, 3)
    assert seen[0][2] * seen[0][3] <= 48 * 64  # refined at about 40x59 (padded to x8), not 90x130


def test_batches_split_by_bucket_and_results_do_not_depend_on_the_batch(engine, scene):
    comp, mask, _ = scene
    m = mask_of(mask)
    policy = ResolutionPolicy(mode="512", class_sizes=(128, 256))
    a = prepare(comp, m, policy)
    b = prepare(comp[:, 30:70], m[:, 30:70], policy)  # a tall strip: another bucket
    assert a.plan.bucket != b.plan.bucket
    together = engine.run([a, b], [1, 2]).regions
    alone = engine.run([b], [2]).regions
    assert np.abs(together[1].astype(int) - alone[0].astype(int)).max() <= 1


def test_baseline_engine_same_interface(scene):
    comp, mask, real = scene
    m = mask_of(mask)
    eng = load_engine("baseline")
    assert isinstance(eng, BaselineEngine) and not eng.needs_resize
    item = prepare(comp, m, ResolutionPolicy(), resize=False)
    out = finish(comp, m, item.plan.region, eng.run([item], [0]).regions[0])
    assert np.array_equal(out[m < 0.5], comp[m < 0.5])
    fg = m >= 0.5
    assert np.mean((out[fg].astype(float) - real[fg]) ** 2) < np.mean((comp[fg].astype(float) - real[fg]) ** 2)


def test_context_crop_is_pasted_back_in_place(engine):
    rng = np.random.default_rng(1)
    comp = rng.integers(0, 255, (400, 600, 3), dtype=np.uint8)
    m = np.zeros((400, 600), np.float32)
    m[200:230, 300:340] = 1  # 0.5%: auto crops
    item = prepare(comp, m, ResolutionPolicy(class_sizes=(64, 128)))
    assert item.plan.crop is not None
    x0, y0, x1, y1 = item.plan.crop
    assert item.region_image.shape == (y1 - y0, x1 - x0, 3)
    out = finish(comp, m, item.plan.region, engine.run([item], [0]).regions[0])
    assert out.shape == comp.shape and np.array_equal(out[m < 0.5], comp[m < 0.5])


def test_dtype_policy():
    assert pick_dtype(torch.device("cpu")) == torch.float32
    assert pick_dtype(torch.device("cuda")) == torch.float16
    assert pick_dtype(torch.device("cpu"), "bf16") == torch.bfloat16
    with pytest.raises(ValueError):
        pick_dtype(torch.device("cpu"), "int8")
