"""Engines: regions at the right scale, refinement at output scale, the baseline behind the same interface."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from harmony_ops.engines import BaselineEngine, refine_region
from harmony_ops.loader import load_diffharmony, load_engine, pick_dtype
from harmony_ops.refiner import make_refiner_input
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


@torch.no_grad()
def hand_refined(refiner, harmonized: torch.Tensor, region: np.ndarray, rmask: np.ndarray) -> np.ndarray:
    """The refiner's contract written out: inputs in [-1, 1] (harmonized, mask in {0, 1}, composite), output
    clamped to [-1, 1] and mapped to uint8. harmonized: 3 x H x W in [0, 1] at the region's size."""
    comp = torch.from_numpy(region.astype(np.float32)).permute(2, 0, 1)[None] / 127.5 - 1
    mask = torch.from_numpy(rmask.astype(np.float32))[None, None]
    x = make_refiner_input(harmonized[None] * 2 - 1, mask, comp, refiner.config.in_channels)
    y = refiner(x).sample.clamp(-1, 1)
    return ((y[0] + 1) / 2 * 255).round().to(torch.uint8).permute(1, 2, 0).numpy()


def region_inputs(h=48, w=64):
    rng = np.random.default_rng(3)
    region = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    rmask = np.zeros((h, w), np.float32)
    rmask[10:40, 16:52] = 1
    harm = torch.from_numpy(rng.random((3, h, w), dtype=np.float32))
    return harm, region, rmask


def test_the_test_refiner_depends_on_all_of_its_inputs(engine):
    """Guard for the tests below: a refiner that passed its first channels through (a zeroed output conv)
    would hide a wrong mask or composite."""
    harm, region, rmask = region_inputs()
    base = hand_refined(engine.refiner, harm, region, rmask).astype(int)
    assert np.abs(base - np.round(harm.permute(1, 2, 0).numpy() * 255)).mean() > 5  # not the identity
    for changed in (hand_refined(engine.refiner, 1 - harm, region, rmask),
                    hand_refined(engine.refiner, harm, region, 1 - rmask),
                    hand_refined(engine.refiner, harm, 255 - region, rmask)):
        assert np.abs(changed.astype(int) - base).mean() > 5


def test_refine_region_equals_a_hand_built_refiner_call(engine):
    harm, region, rmask = region_inputs()  # at the region's size, a multiple of 8: no resize, no padding
    out = refine_region(engine.refiner, harm, region, rmask, max_pixels=10**6)
    expected = hand_refined(engine.refiner, harm, region, rmask)
    assert out.shape == expected.shape and out.dtype == np.uint8
    assert np.abs(out.astype(int) - expected.astype(int)).max() <= 1


def test_engine_refines_the_stage1_result_at_the_regions_size(engine, scene):
    comp, mask, _ = scene
    item = prepare(comp, mask_of(mask), SMALL)  # region: the whole 120x96 image, a multiple of 8
    got = engine.run([item], [4]).regions[0]
    images = torch.from_numpy(item.image.astype(np.float32)).permute(2, 0, 1)[None] / 127.5 - 1
    masks = torch.from_numpy(item.mask.astype(np.float32))[None, None]
    stage1 = engine.sampler(images, masks, seeds=[4], num_inference_steps=engine.steps)[0]
    rh, rw = item.region_mask.shape
    up = F.interpolate(stage1[None], size=(rh, rw), mode="bilinear", antialias=True, align_corners=False)[0]
    expected = hand_refined(engine.refiner, up, item.region_image, item.region_mask)
    assert np.abs(got.astype(int) - expected.astype(int)).max() <= 1


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
