"""harmony_ops.metrics against an independent transcription of DiffHarmony's evaluation."""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw, ImageFilter
from skimage.color import deltaE_cie76 as sk_delta_e76
from skimage.color import rgb2lab as sk_rgb2lab
from skimage.metrics import mean_squared_error as sk_mse
from skimage.metrics import peak_signal_noise_ratio as sk_psnr
from skimage.metrics import structural_similarity

from harmony_ops.baseline import harmonize_baseline
from harmony_ops.metrics import (
    FG_BUCKETS,
    evaluate_arrays,
    evaluate_images,
    fg_bucket,
    full_resolution_metrics,
    no_reference_metrics,
    psnr_from_mse,
    ssim,
)

R = 256
W, H = 300, 200


# --- reference transcription (scripts/evaluate/main.py of DiffHarmony) -----------------


def _reference(pred_path: Path, gt_path: Path, mask_path: Path, use_gt_bg: bool) -> dict:
    def possible_resize(image: Image.Image) -> Image.Image:
        # torchvision TF.resize(img, [R, R], antialias=True) on a PIL image.
        if image.size != (R, R):
            image = image.resize((R, R), Image.BILINEAR)
        return image

    ot_img = possible_resize(Image.open(pred_path).convert("RGB"))
    mk_img = possible_resize(Image.open(mask_path).convert("1"))
    gt_img = possible_resize(Image.open(gt_path).convert("RGB"))
    mk_np = np.array(mk_img, dtype=np.float32)[..., np.newaxis]
    gt_np = np.array(gt_img, dtype=np.float32)
    ot_np = np.array(ot_img, dtype=np.float32)
    if use_gt_bg:
        ot_np = ot_np * mk_np + gt_np * (1 - mk_np)
    mse_score = sk_mse(ot_np, gt_np)
    psnr_score = sk_psnr(gt_np, ot_np, data_range=255)
    w, h = ot_img.size
    fscore = sk_mse(ot_np * mk_np, gt_np * mk_np) * (h * w) / (mk_np.sum())
    bscore = sk_mse(ot_np * (1 - mk_np), gt_np * (1 - mk_np)) * (h * w) / ((1 - mk_np).sum())
    ratio = mk_np.sum() / (h * w)
    bucket = None
    for (lo, hi), name in zip([(0.0, 0.05), (0.05, 0.15), (0.15, 1.0)], FG_BUCKETS):
        if lo <= ratio < hi:
            bucket = name
    ssim_score = structural_similarity(
        gt_np.astype(np.uint8),
        ot_np.astype(np.uint8),
        channel_axis=2,
        data_range=255,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
    )
    return {
        "mse": mse_score,
        "psnr": psnr_score,
        "fmse": fscore,
        "bmse": bscore,
        "fg_ratio": ratio,
        "fg_bucket": bucket,
        "ssim": ssim_score,
    }


# --- fixtures --------------------------------------------------------------------------


def _scene(rng: np.random.Generator, w: int = W, h: int = H) -> np.ndarray:
    """Smooth gradients plus noise: realistic enough for resampling and JPEG to matter."""
    yy, xx = np.mgrid[0:h, 0:w]
    base = np.stack([xx / w * 200, yy / h * 180 + 30, (xx + yy) / (w + h) * 120 + 60], -1)
    return np.clip(base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)


def _binary_mask(w: int = W, h: int = H) -> Image.Image:
    img = Image.new("L", (w, h), 0)
    ImageDraw.Draw(img).ellipse((80, 50, 190, 160), fill=255)
    return img


def _soft_mask(w: int = W, h: int = H) -> Image.Image:
    """Antialiased edge: grey values that convert("1") dithers."""
    return _binary_mask(w, h).filter(ImageFilter.GaussianBlur(3))


@pytest.fixture(scope="module")
def files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    rng = np.random.default_rng(7)
    d = tmp_path_factory.mktemp("ihd")
    real = _scene(rng)
    fg = np.array(_binary_mask()) > 0
    shifted = real.astype(np.int16)
    shifted[fg] = shifted[fg] * np.array([1.15, 0.9, 0.8]) + np.array([10, -5, 20])
    comp = np.clip(shifted, 0, 255).astype(np.uint8)
    pred = np.clip(real.astype(np.int16) + rng.integers(-6, 7, real.shape), 0, 255).astype(np.uint8)

    paths = {
        "real_jpg": d / "real.jpg",
        "comp_jpg": d / "comp.jpg",
        "pred_png": d / "pred.png",
        "pred_jpg": d / "pred.jpg",
        "pred_256_png": d / "pred_256.png",
        "mask_png": d / "mask.png",
        "soft_mask_png": d / "soft_mask.png",
        "rgb_mask_png": d / "rgb_mask.png",
    }
    Image.fromarray(real).save(paths["real_jpg"], quality=90)
    Image.fromarray(comp).save(paths["comp_jpg"], quality=90)
    Image.fromarray(pred).save(paths["pred_png"])
    Image.fromarray(pred).save(paths["pred_jpg"], quality=85)
    Image.fromarray(pred).resize((R, R), Image.BICUBIC).save(paths["pred_256_png"])
    _binary_mask().save(paths["mask_png"])
    _soft_mask().save(paths["soft_mask_png"])
    _soft_mask().convert("RGB").save(paths["rgb_mask_png"])
    return paths


# --- reference protocol ----------------------------------------------------------------


@pytest.mark.parametrize("use_gt_bg", [False, True])
@pytest.mark.parametrize("pred", ["pred_png", "pred_jpg", "pred_256_png", "comp_jpg"])
@pytest.mark.parametrize("mask", ["mask_png", "soft_mask_png", "rgb_mask_png"])
def test_matches_reference(files: dict[str, Path], pred: str, mask: str, use_gt_bg: bool) -> None:
    ref = _reference(files[pred], files["real_jpg"], files[mask], use_gt_bg)
    got = evaluate_images(
        Image.open(files[pred]),
        Image.open(files["real_jpg"]),
        Image.open(files[mask]),
        use_gt_bg=use_gt_bg,
    )
    # Same operations in the same order: the numbers must be identical, not just close.
    assert got.mse == ref["mse"]
    assert got.psnr == ref["psnr"]
    assert got.fmse == ref["fmse"]
    assert got.bmse == ref["bmse"]
    assert got.fg_ratio == pytest.approx(float(ref["fg_ratio"]), rel=1e-9)
    assert got.fg_bucket == ref["fg_bucket"]
    assert got.fpsnr == pytest.approx(10 * math.log10(255**2 / ref["fmse"]), rel=1e-12)
    assert got.ssim == pytest.approx(ref["ssim"], rel=0, abs=1e-9)
    if use_gt_bg:
        assert got.bmse == 0.0


def test_soft_mask_is_dithered_not_thresholded(files: dict[str, Path]) -> None:
    """The reference's convert("1") dithers; a thresholded mask gives other numbers."""
    dithered = evaluate_images(
        Image.open(files["pred_png"]), Image.open(files["real_jpg"]), Image.open(files["soft_mask_png"])
    )
    thresholded = evaluate_images(
        Image.open(files["pred_png"]),
        Image.open(files["real_jpg"]),
        Image.open(files["soft_mask_png"]).point(lambda v: 255 if v >= 128 else 0),
    )
    assert dithered.fmse != thresholded.fmse


@pytest.mark.parametrize("use_gt_bg", [False, True])
@pytest.mark.parametrize(
    ("mask", "mask_kind"),
    [
        ("mask_png", "float"),
        ("mask_png", "uint8"),
        ("mask_png", "bool"),
        # A bool mask cannot carry the soft edge, so only float and uint8 here.
        ("soft_mask_png", "float"),
        ("soft_mask_png", "uint8"),
    ],
)
def test_arrays_equal_files(files: dict[str, Path], mask: str, mask_kind: str, use_gt_bg: bool) -> None:
    pred = np.array(Image.open(files["pred_jpg"]).convert("RGB"))
    real = np.array(Image.open(files["real_jpg"]).convert("RGB"))
    grey = np.array(Image.open(files[mask]).convert("L"))
    mask_arr = {"float": grey / 255.0, "uint8": grey, "bool": grey >= 128}[mask_kind]
    from_arrays = evaluate_arrays(pred, real, mask_arr, use_gt_bg=use_gt_bg)
    from_files = evaluate_images(
        Image.open(files["pred_jpg"]),
        Image.open(files["real_jpg"]),
        Image.open(files[mask]),
        use_gt_bg=use_gt_bg,
    )
    assert from_arrays == from_files


def test_identical_images() -> None:
    rng = np.random.default_rng(0)
    img = _scene(rng, R, R)
    mask = np.zeros((R, R), dtype=bool)
    mask[50:120, 60:200] = True
    m = evaluate_arrays(img, img, mask)
    assert m.mse == 0.0 and m.fmse == 0.0 and m.bmse == 0.0
    assert m.psnr == math.inf and m.fpsnr == math.inf
    assert m.ssim == pytest.approx(1.0, abs=1e-12)


def test_empty_and_full_masks_give_nan_without_warnings() -> None:
    rng = np.random.default_rng(1)
    gt = _scene(rng, R, R)
    pred = _scene(rng, R, R)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        empty = evaluate_arrays(pred, gt, np.zeros((R, R), dtype=bool))
        full = evaluate_arrays(pred, gt, np.ones((R, R), dtype=bool))
        full_bg = evaluate_arrays(pred, gt, np.ones((R, R), dtype=bool), use_gt_bg=True)
        empty_bg = evaluate_arrays(pred, gt, np.zeros((R, R), dtype=bool), use_gt_bg=True)
    assert math.isnan(empty.fmse) and math.isnan(empty.fpsnr)
    assert empty.bmse == pytest.approx(empty.mse) and empty.fg_ratio == 0.0
    assert empty.fg_bucket == "0-5%"
    assert math.isnan(full.bmse) and full.fmse == pytest.approx(full.mse)
    assert full.fg_ratio == 1.0 and full.fg_bucket == "15-100%"
    assert full_bg == full
    assert empty_bg.mse == 0.0 and empty_bg.psnr == math.inf


@pytest.mark.parametrize(
    ("pixels", "bucket"), [(0, "0-5%"), (3276, "0-5%"), (3277, "5-15%"), (9830, "5-15%"), (9831, "15-100%")]
)
def test_bucket_of_pixel_counts(pixels: int, bucket: str) -> None:
    """At 256x256, 5% is 3276.8 px and 15% is 9830.4 px."""
    mask = np.zeros(R * R, dtype=bool)
    mask[:pixels] = True
    img = np.zeros((R, R, 3), dtype=np.uint8)
    m = evaluate_arrays(img, img, mask.reshape(R, R))
    assert m.fg_ratio == pixels / (R * R)
    assert m.fg_bucket == bucket


def test_fg_bucket_boundaries() -> None:
    assert fg_bucket(0.0) == "0-5%"
    assert fg_bucket(np.nextafter(0.05, 0)) == "0-5%"
    assert fg_bucket(0.05) == "5-15%"
    assert fg_bucket(np.nextafter(0.15, 0)) == "5-15%"
    assert fg_bucket(0.15) == "15-100%"
    assert fg_bucket(np.nextafter(1.0, 0)) == "15-100%"
    assert fg_bucket(1.0) == "15-100%"
    for bad in (-1e-9, 1.0 + 1e-9, math.nan):
        with pytest.raises(ValueError):
            fg_bucket(bad)


def test_psnr_from_mse() -> None:
    assert psnr_from_mse(0.0) == math.inf
    assert math.isnan(psnr_from_mse(math.nan))
    assert psnr_from_mse(255.0**2) == pytest.approx(0.0)
    assert psnr_from_mse(1.0) == pytest.approx(20 * math.log10(255))


@pytest.mark.parametrize("shape", [(256, 256, 3), (31, 47, 3), (11, 11, 3), (40, 30)])
def test_ssim_matches_skimage(shape: tuple[int, ...]) -> None:
    rng = np.random.default_rng(sum(shape))
    a = rng.integers(0, 256, size=shape, dtype=np.uint8)
    b = np.clip(a.astype(np.int16) + rng.integers(-40, 41, size=shape), 0, 255).astype(np.uint8)
    expected = structural_similarity(
        a,
        b,
        channel_axis=2 if len(shape) == 3 else None,
        data_range=255,
        gaussian_weights=True,
        sigma=1.5,
        use_sample_covariance=False,
    )
    assert ssim(a, b) == pytest.approx(expected, rel=0, abs=1e-9)
    with pytest.raises(ValueError):
        ssim(a[:10, :10], b[:10, :10])


# --- full resolution -------------------------------------------------------------------


def test_full_resolution_metrics() -> None:
    rng = np.random.default_rng(3)
    gt = _scene(rng)
    pred = _scene(rng)
    m = full_resolution_metrics(pred, gt)
    assert m.mse == sk_mse(pred.astype(np.float32), gt.astype(np.float32))
    assert m.psnr == sk_psnr(gt.astype(np.float32), pred.astype(np.float32), data_range=255)

    soft = np.array(_soft_mask(), dtype=np.float64) / 255.0
    fg = soft >= 0.5
    composited = np.where(fg[..., None], pred, gt)
    with_bg = full_resolution_metrics(pred, gt, soft, use_gt_bg=True)
    assert with_bg.mse == pytest.approx(sk_mse(composited, gt), rel=1e-12)
    assert with_bg.mse < m.mse
    assert full_resolution_metrics(gt, gt).psnr == math.inf
    with pytest.raises(ValueError):
        full_resolution_metrics(pred, gt, use_gt_bg=True)


# --- no-reference ----------------------------------------------------------------------


def _shifted_composite(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A near-uniform scene and a copy whose foreground got a colour cast."""
    h, w = 120, 160
    truth = np.clip(np.array([120, 140, 100]) + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)
    mask = np.zeros((h, w), dtype=bool)
    mask[40:90, 50:110] = True
    comp = truth.copy()
    comp[mask] = np.clip(truth[mask] * np.array([1.3, 0.85, 1.1]) + 15, 0, 255).astype(np.uint8)
    return truth, comp, mask


def test_no_reference_identical_images() -> None:
    _, comp, mask = _shifted_composite(np.random.default_rng(4))
    m = no_reference_metrics(comp, comp, mask)
    assert m.delta_e_fg == 0.0
    assert m.stat_gap_before == m.stat_gap_after > 0
    assert m.fg_ratio == pytest.approx(mask.mean())


def _sk_stat_gap(lab: np.ndarray, fg: np.ndarray) -> float:
    """The docstring's definition, on scikit-image's L*a*b*."""
    a, b = lab[fg], lab[~fg]
    return float(np.linalg.norm(a.mean(0) - b.mean(0)) + np.linalg.norm(a.std(0) - b.std(0)))


def test_no_reference_colour_shift_and_baseline() -> None:
    truth, comp, mask = _shifted_composite(np.random.default_rng(5))
    m = no_reference_metrics(comp, truth, mask)
    # expectations from scikit-image, not from the implementation's own colour code
    comp_lab, truth_lab = sk_rgb2lab(comp), sk_rgb2lab(truth)
    expected = sk_delta_e76(comp_lab[mask], truth_lab[mask]).mean()
    assert m.delta_e_fg == pytest.approx(expected, rel=1e-9)
    assert m.stat_gap_before == pytest.approx(_sk_stat_gap(comp_lab, mask), rel=1e-9)
    assert m.stat_gap_after == pytest.approx(_sk_stat_gap(truth_lab, mask), rel=1e-9)
    assert m.delta_e_fg > 5
    # Undoing the cast closes the gap between object and scene.
    assert m.stat_gap_after < m.stat_gap_before

    fixed = no_reference_metrics(comp, harmonize_baseline(comp, mask), mask)
    assert fixed.delta_e_fg > 0
    assert fixed.stat_gap_after < 0.25 * fixed.stat_gap_before


def test_no_reference_degenerate_masks() -> None:
    _, comp, _ = _shifted_composite(np.random.default_rng(6))
    h, w = comp.shape[:2]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        empty = no_reference_metrics(comp, comp, np.zeros((h, w)))
        full = no_reference_metrics(comp, comp, np.ones((h, w)))
    assert empty.fg_ratio == 0.0
    assert math.isnan(empty.delta_e_fg)
    assert math.isnan(empty.stat_gap_before) and math.isnan(empty.stat_gap_after)
    assert full.fg_ratio == 1.0 and full.delta_e_fg == 0.0
    assert math.isnan(full.stat_gap_before) and math.isnan(full.stat_gap_after)


def test_as_dict_round_trip(files: dict[str, Path]) -> None:
    m = evaluate_images(
        Image.open(files["pred_png"]), Image.open(files["real_jpg"]), Image.open(files["mask_png"])
    )
    d = m.as_dict()
    assert set(d) == {"mse", "psnr", "fmse", "fpsnr", "bmse", "ssim", "fg_ratio", "fg_bucket"}
    assert d["fg_bucket"] in FG_BUCKETS
    for name, value in d.items():  # each key holds its own field's value, unrounded
        assert value == getattr(m, name) and type(value) is type(getattr(m, name)), name
    assert type(m)(**d) == m  # and back
    assert len({v for k, v in d.items() if k != "fg_bucket"}) == 7  # distinct values: a swap would show
    truth, comp, mask = _shifted_composite(np.random.default_rng(8))
    for other in (no_reference_metrics(comp, truth, mask), full_resolution_metrics(comp, truth)):
        od = other.as_dict()
        assert od == {k: getattr(other, k) for k in od} and type(other)(**od) == other


# --- fast paths: the same numbers as the definitions -------------------------------------


def _photo_like(rng: np.random.Generator, h: int, w: int) -> np.ndarray:
    """Smooth colour field plus texture: distinct statistics in every region, like a photo."""
    yy, xx = np.mgrid[0:h, 0:w] / max(h, w)
    base = np.stack([120 + 90 * np.sin(5 * xx + 2 * yy), 110 + 80 * np.cos(4 * yy - xx), 90 + 60 * np.sin(3 * (xx + yy))], -1)
    return np.clip(base + rng.normal(0, 10, (h, w, 3)), 0, 255).astype(np.uint8)


def _ellipse(h: int, w: int, cy: float, cx: float, ry: float, rx: float) -> np.ndarray:
    yy, xx = np.ogrid[:h, :w]
    return ((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0


def _grid_definition(comp: np.ndarray, harm: np.ndarray, fg: np.ndarray) -> tuple[float, float, float]:
    """no_reference_metrics' documented sampling, computed with scikit-image's L*a*b*."""
    from harmony_ops.metrics import grid_stride

    h, w = fg.shape
    s = grid_stride(h, w)
    bg = ~fg[::s, ::s]
    bg_c, bg_h = sk_rgb2lab(comp[::s, ::s])[bg], sk_rgb2lab(harm[::s, ::s])[bg]
    rows, cols = np.flatnonzero(fg.any(1)), np.flatnonzero(fg.any(0))
    y0, y1, x0, x1 = rows[0], rows[-1] + 1, cols[0], cols[-1] + 1
    sf = grid_stride(y1 - y0, x1 - x0)
    box = (slice(y0, y1, sf), slice(x0, x1, sf))
    sel = fg[box]
    fg_c, fg_h = sk_rgb2lab(comp[box])[sel], sk_rgb2lab(harm[box])[sel]

    def gap(a, b):
        return float(np.linalg.norm(a.mean(0) - b.mean(0)) + np.linalg.norm(a.std(0) - b.std(0)))

    return float(sk_delta_e76(fg_c, fg_h).mean()), gap(fg_c, bg_c), gap(fg_h, bg_h)


def test_grid_stride_is_the_smallest_that_fits() -> None:
    from harmony_ops.metrics import NOREF_GRID_POINTS, grid_stride

    def points(h, w, s):
        return -(-h // s) * -(-w // s)

    for h, w in [(1, 1), (120, 160), (512, 512), (513, 512), (864, 1152), (3024, 4032), (9000, 7), (7, 70000)]:
        s = grid_stride(h, w)
        assert points(h, w, s) <= NOREF_GRID_POINTS
        assert s == 1 or points(h, w, s - 1) > NOREF_GRID_POINTS
    assert grid_stride(512, 512) == 1 and grid_stride(513, 512) == 2


@pytest.mark.parametrize("shape", [(700, 500), (1100, 1300)])
def test_no_reference_on_a_grid_matches_its_definition(shape: tuple[int, int]) -> None:
    """Above 2^18 pixels the metrics are taken on the documented grids: same numbers as scikit-image on
    those pixels, and within 0.1 of the full-resolution values (the documented tolerance)."""
    h, w = shape
    rng = np.random.default_rng(h)
    comp = _photo_like(rng, h, w)
    fg = _ellipse(h, w, 0.55 * h, 0.4 * w, 0.3 * h, 0.2 * w)
    harm = comp.copy()
    harm[fg] = np.clip(comp[fg] * np.array([0.9, 1.05, 1.2]) - 8, 0, 255).astype(np.uint8)
    m = no_reference_metrics(comp, harm, fg)
    delta, before, after = _grid_definition(comp, harm, fg)
    assert m.delta_e_fg == pytest.approx(delta, rel=1e-9)
    assert m.stat_gap_before == pytest.approx(before, rel=1e-9)
    assert m.stat_gap_after == pytest.approx(after, rel=1e-9)
    assert m.fg_ratio == fg.mean()  # counted at full resolution
    comp_lab, harm_lab = sk_rgb2lab(comp), sk_rgb2lab(harm)
    assert m.delta_e_fg == pytest.approx(sk_delta_e76(comp_lab[fg], harm_lab[fg]).mean(), abs=0.1)
    assert m.stat_gap_before == pytest.approx(_sk_stat_gap(comp_lab, fg), abs=0.1)
    assert m.stat_gap_after == pytest.approx(_sk_stat_gap(harm_lab, fg), abs=0.1)


def test_no_reference_small_foreground_is_sampled_in_its_own_box() -> None:
    """A small object in a large image keeps all its pixels (its box has fewer than 2^18)."""
    h, w = 1200, 1600
    rng = np.random.default_rng(11)
    comp = _photo_like(rng, h, w)
    fg = _ellipse(h, w, 300, 1000, 40, 60)
    harm = comp.copy()
    harm[fg] = 255 - comp[fg]
    m = no_reference_metrics(comp, harm, fg)
    expected = sk_delta_e76(sk_rgb2lab(comp[fg]), sk_rgb2lab(harm[fg])).mean()
    assert m.delta_e_fg == pytest.approx(expected, rel=1e-9)


def test_no_reference_sees_a_changed_background() -> None:
    """The background's statistics are reused only when the background is unchanged."""
    rng = np.random.default_rng(12)
    truth, comp, mask = _shifted_composite(rng)
    harm = truth.copy()
    harm[~mask] = np.clip(harm[~mask].astype(int) + 40, 0, 255).astype(np.uint8)
    m = no_reference_metrics(comp, harm, mask)
    assert m.stat_gap_after == pytest.approx(_sk_stat_gap(sk_rgb2lab(harm), mask), rel=1e-9)


@pytest.mark.parametrize("shape", [(1000, 1000), (37, 41)])
@pytest.mark.parametrize("use_gt_bg", [False, True])
def test_full_resolution_mse_is_exact(shape: tuple[int, int], use_gt_bg: bool) -> None:
    """Integer sums give the float32-difference / float64-mean value bit for bit."""
    rng = np.random.default_rng(shape[0])
    pred = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    gt = rng.integers(0, 256, (*shape, 3), dtype=np.uint8)
    mask = rng.random(shape) < 0.3
    a = pred.astype(np.float32)
    if use_gt_bg:
        a = np.where(mask[..., None], a, gt.astype(np.float32))
    expected = float(np.mean((a - gt.astype(np.float32)) ** 2, dtype=np.float64))
    assert full_resolution_metrics(pred, gt, mask, use_gt_bg=use_gt_bg).mse == expected


@pytest.mark.parametrize("size", [(300, 200), (256, 100), (97, 389), (120, 120), (1000, 700)])
def test_binary_mask_resized_before_dithering_gives_the_reference_pixels(size: tuple[int, int]) -> None:
    from harmony_ops.metrics import _possible_resize, _protocol_mask

    rng = np.random.default_rng(size[0])
    w, h = size
    blocks = rng.random((h // 7 + 1, w // 7 + 1)) < 0.4
    binary = Image.fromarray(np.kron(blocks, np.ones((7, 7), dtype=bool))[:h, :w].astype(np.uint8) * 255)
    fast = _protocol_mask(binary, R)
    reference = _possible_resize(binary.convert("1"), R)
    assert fast.mode == reference.mode == "1"
    np.testing.assert_array_equal(np.asarray(fast), np.asarray(reference))


def test_shared_reference_gives_the_same_numbers(files: dict[str, Path]) -> None:
    from harmony_ops.metrics import protocol_reference_arrays

    real = np.array(Image.open(files["real_jpg"]).convert("RGB"))
    grey = np.array(Image.open(files["soft_mask_png"]).convert("L"))
    ref = protocol_reference_arrays(real, grey)
    for name in ("pred_png", "pred_jpg", "comp_jpg"):
        pred = np.array(Image.open(files[name]).convert("RGB"))
        for use_gt_bg in (False, True):
            assert evaluate_arrays(pred, real, grey, reference=ref, use_gt_bg=use_gt_bg) == evaluate_arrays(
                pred, real, grey, use_gt_bg=use_gt_bg)
