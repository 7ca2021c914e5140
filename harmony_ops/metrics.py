"""Image harmonization metrics: the iHarmony4 protocol plus reference-free diagnostics.

`evaluate_images` reproduces DiffHarmony's reference evaluation script number for number:
per image, at resolution R (256),

- prediction and ground truth: ``.convert("RGB")``, then, if the size is not (R, R),
  ``resize((R, R), BILINEAR)``: what torchvision's ``TF.resize(..., antialias=True)``
  does for PIL images (PIL's bilinear filter antialiases when downscaling);
- mask: ``.convert("1")`` with PIL's default Floyd-Steinberg dithering (a soft,
  antialiased mask becomes a dither pattern, not a thresholded edge; kept on purpose,
  because it is what the published numbers were computed with), then the same resize,
  which PIL always performs with NEAREST for mode "1";
- float32 arrays; optionally ``ot = ot * mk + gt * (1 - mk)`` (``use_gt_bg``);
- MSE = mean((ot - gt)^2) over HxWx3 (float32 differences, float64 mean, as
  ``skimage.metrics.mean_squared_error``); PSNR = 10 log10(255^2 / MSE);
  fMSE = MSE(ot*mk, gt*mk) * H*W / sum(mk); bMSE likewise with 1 - mk; the foreground
  ratio sum(mk) / (H*W) selects the bucket (0-5%, 5-15%, 15-100%).

fPSNR (from fMSE) and SSIM are added on the same 256x256 arrays. Where a quantity is
undefined (fMSE of an empty mask, bMSE of an all-foreground mask) it is NaN instead of
the reference's 0/0 warning.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass

import cv2
import numpy as np
from PIL import Image

from harmony_ops.color import rgb_to_lab
from harmony_ops.compositing import binarize_mask
from schemas.vocabulary import FG_BUCKETS

REFERENCE_RESOLUTION = 256
DATA_RANGE = 255.0
_BUCKET_EDGES: tuple[float, ...] = (0.05, 0.15)

_SSIM_SIGMA = 1.5
_SSIM_TRUNCATE = 3.5  # scipy.ndimage / scikit-image default: an 11-tap window at sigma 1.5
_SSIM_K1 = 0.01
_SSIM_K2 = 0.03


@dataclass(frozen=True)
class ReferenceMetrics:
    """Full-reference metrics on the iHarmony4 protocol (256x256 evaluation)."""

    mse: float
    psnr: float
    fmse: float
    fpsnr: float
    bmse: float
    ssim: float
    fg_ratio: float
    fg_bucket: str

    def as_dict(self) -> dict[str, float | str]:
        return asdict(self)


@dataclass(frozen=True)
class FullResolutionMetrics:
    """MSE and PSNR at the image's own resolution (no resize)."""

    mse: float
    psnr: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class NoReferenceMetrics:
    """Diagnostics that need no ground truth; see `no_reference_metrics`."""

    fg_ratio: float
    delta_e_fg: float
    stat_gap_before: float
    stat_gap_after: float

    def as_dict(self) -> dict[str, float]:
        return asdict(self)


def fg_bucket(ratio: float) -> str:
    """Foreground-ratio bucket: "0-5%" [0, 0.05), "5-15%" [0.05, 0.15), "15-100%" [0.15, 1].

    The reference script's last range is half-open at 1.0 and so silently drops
    all-foreground images; here a ratio of exactly 1.0 belongs to "15-100%".
    """
    if not 0.0 <= ratio <= 1.0:  # also rejects NaN
        raise ValueError(f"foreground ratio must be in [0, 1], got {ratio}")
    for edge, name in zip(_BUCKET_EDGES, FG_BUCKETS):
        if ratio < edge:
            return name
    return FG_BUCKETS[-1]


def psnr_from_mse(mse: float, data_range: float = DATA_RANGE) -> float:
    """10 log10(data_range^2 / mse): inf for a perfect match, NaN for a NaN input."""
    if math.isnan(mse):
        return math.nan
    if mse == 0:
        return math.inf
    return float(10.0 * np.log10((data_range**2) / mse))


def _mse(a: np.ndarray, b: np.ndarray) -> float:
    # Same arithmetic as skimage's mean_squared_error on float32 inputs: float32
    # difference and square, float64 accumulation.
    return float(np.mean((a - b) ** 2, dtype=np.float64))


def _gaussian_window(sigma: float, truncate: float) -> np.ndarray:
    radius = int(truncate * sigma + 0.5)
    x = np.arange(-radius, radius + 1, dtype=np.float64)
    w = np.exp(-0.5 / (sigma * sigma) * x**2)
    return w / w.sum()


def _gaussian_filter(img: np.ndarray, window: np.ndarray) -> np.ndarray:
    """Separable 2-D filter of a float64 HxW (or HxWxC) array with mirrored borders.

    OpenCV's BORDER_REFLECT (d c b a | a b c d) is scipy.ndimage's "reflect" mode, the one
    scikit-image's SSIM uses; the sums run in float64 like the rest of the metric.
    """
    return cv2.sepFilter2D(img, cv2.CV_64F, window, window, borderType=cv2.BORDER_REFLECT)


def _ssim_window() -> np.ndarray:
    return _gaussian_window(_SSIM_SIGMA, _SSIM_TRUNCATE)


def _local_moments(x: np.ndarray, window: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Local means of x and of x^2: the part of SSIM that depends on one image only."""
    return _gaussian_filter(x, window), _gaussian_filter(x * x, window)


def _ssim_channels(x: np.ndarray, y: np.ndarray, data_range: float, window: np.ndarray,
                   x_moments: tuple[np.ndarray, np.ndarray] | None = None) -> np.ndarray:
    """Mean SSIM of each channel of two HxWxC float64 arrays (C <= 4: OpenCV filters them together).
    `x_moments`: `_local_moments(x)`, when several images are compared with the same x."""
    ux, uxx = _local_moments(x, window) if x_moments is None else x_moments
    uy, uyy = _local_moments(y, window)
    uxy = _gaussian_filter(x * y, window)
    # Border pixels, whose window leaves the image, are excluded from the mean: the formula runs on
    # the interior only, in place (each temporary of a 256 px image is 1.5 MB), with the same
    # operations in the same order as the textbook expression, so the values are the same.
    pad = (len(window) - 1) // 2
    inner = (slice(pad, ux.shape[0] - pad), slice(pad, ux.shape[1] - pad))
    ux, uy, uxx, uyy, uxy = (a[inner] for a in (ux, uy, uxx, uyy, uxy))
    c1 = (_SSIM_K1 * data_range) ** 2
    c2 = (_SSIM_K2 * data_range) ** 2
    # Population covariances (Wang et al. 2004), not the sample ones.
    uxuy = ux * uy
    vxy = np.subtract(uxy, uxuy)                       # vxy = uxy - ux uy
    num = np.multiply(uxuy, 2, out=uxuy)               # (2 ux uy + c1)(2 vxy + c2)
    num += c1
    vxy *= 2
    vxy += c2
    num *= vxy
    sx = np.multiply(ux, ux)                           # (ux^2 + uy^2 + c1)(vx + vy + c2)
    sy = np.multiply(uy, uy)
    vx = np.subtract(uxx, sx)
    vy = np.subtract(uyy, sy)
    sx += sy
    sx += c1
    vx += vy
    vx += c2
    sx *= vx
    num /= sx
    s = num.reshape(num.shape[0], num.shape[1], -1)
    return s.mean(axis=(0, 1), dtype=np.float64)


def ssim(img1: np.ndarray, img2: np.ndarray, data_range: float = DATA_RANGE) -> float:
    """Structural similarity (Wang et al. 2004) of two HxW or HxWxC images.

    Gaussian weights (sigma 1.5, 11 taps), K1 = 0.01, K2 = 0.03, population covariance,
    mirrored borders, averaged over the interior and then over channels; equivalent to
    ``skimage.metrics.structural_similarity(img1, img2, channel_axis=2, data_range=255,
    gaussian_weights=True, sigma=1.5, use_sample_covariance=False)``.
    """
    a = np.asarray(img1, dtype=np.float64)
    b = np.asarray(img2, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"image shapes differ: {a.shape} vs {b.shape}")
    if a.ndim == 2:
        a, b = a[..., None], b[..., None]
    if a.ndim != 3:
        raise ValueError(f"expected HxW or HxWxC images, got shape {a.shape}")
    window = _ssim_window()
    if min(a.shape[:2]) < len(window):
        raise ValueError(f"SSIM needs images of at least {len(window)}x{len(window)} px")
    per_channel = [_ssim_channels(a[..., c : c + 4], b[..., c : c + 4], data_range, window) for c in range(0, a.shape[2], 4)]
    return float(np.mean(np.concatenate(per_channel)))


def _possible_resize(img: Image.Image, resolution: int) -> Image.Image:
    # PIL switches mode "1" (and "P") to NEAREST by itself, as in the reference.
    if img.size != (resolution, resolution):
        img = img.resize((resolution, resolution), Image.Resampling.BILINEAR)
    return img


def _as_rgb(img: Image.Image) -> Image.Image:
    # convert() of an RGB image is a copy: same pixels, so skipped.
    return img if img.mode == "RGB" else img.convert("RGB")


def _protocol_mask(mask: Image.Image, resolution: int) -> Image.Image:
    """``mask.convert("1")`` resized (NEAREST) to the protocol's size.

    Floyd-Steinberg dithering leaves a pure 0/255 image unchanged and NEAREST picks the
    same source pixels in mode "L" as in mode "1", so a binary 8-bit mask is resized first
    and dithered at 256 px: the same pixels, without dithering megapixels.
    """
    if mask.mode == "L" and mask.size != (resolution, resolution) and sum(mask.histogram()[1:255]) == 0:
        return mask.resize((resolution, resolution), Image.Resampling.NEAREST).convert("1")
    return _possible_resize(mask.convert("1"), resolution)


@dataclass(frozen=True)
class ProtocolReference:
    """Ground truth and mask as the protocol sees them (converted, resized, float32): computed
    once and shared by every prediction scored against the same pair."""

    gt: np.ndarray  # resolution x resolution x 3
    mk: np.ndarray  # resolution x resolution x 1, {0, 1}
    resolution: int
    gt_moments: tuple[np.ndarray, np.ndarray]  # SSIM's local moments of gt (float64)


def protocol_reference(ground_truth: Image.Image, mask: Image.Image, *, resolution: int = REFERENCE_RESOLUTION) -> ProtocolReference:
    mk_img = _protocol_mask(mask, resolution)
    gt_img = _possible_resize(_as_rgb(ground_truth), resolution)
    gt = np.array(gt_img, dtype=np.float32)
    if resolution < len(_ssim_window()):
        raise ValueError(f"SSIM needs images of at least {len(_ssim_window())}x{len(_ssim_window())} px")
    return ProtocolReference(gt=gt, mk=np.array(mk_img, dtype=np.float32)[..., np.newaxis], resolution=resolution,
                             gt_moments=_local_moments(gt.astype(np.float64), _ssim_window()))


def evaluate_against(prediction: Image.Image, reference: ProtocolReference, *, use_gt_bg: bool = False) -> ReferenceMetrics:
    """iHarmony4 metrics of one prediction against a prepared `ProtocolReference`."""
    ot_img = _possible_resize(_as_rgb(prediction), reference.resolution)
    mk, gt = reference.mk, reference.gt
    ot = np.array(ot_img, dtype=np.float32)
    if use_gt_bg:
        ot = ot * mk + gt * (1 - mk)

    w, h = ot_img.size
    mse = _mse(ot, gt)
    fg_sum = float(mk.sum())
    bg_sum = float((1 - mk).sum())
    # The reference's expressions, evaluated in the same order for identical rounding.
    fmse = _mse(ot * mk, gt * mk) * (h * w) / fg_sum if fg_sum > 0 else math.nan
    bmse = _mse(ot * (1 - mk), gt * (1 - mk)) * (h * w) / bg_sum if bg_sum > 0 else math.nan
    fg_ratio = fg_sum / (h * w)
    return ReferenceMetrics(
        mse=mse,
        psnr=psnr_from_mse(mse),
        fmse=fmse,
        fpsnr=psnr_from_mse(fmse),
        bmse=bmse,
        ssim=float(np.mean(_ssim_channels(gt.astype(np.float64), ot.astype(np.float64), DATA_RANGE, _ssim_window(),
                                          reference.gt_moments))),
        fg_ratio=fg_ratio,
        fg_bucket=fg_bucket(fg_ratio),
    )


def evaluate_images(
    prediction: Image.Image,
    ground_truth: Image.Image,
    mask: Image.Image,
    *,
    resolution: int = REFERENCE_RESOLUTION,
    use_gt_bg: bool = False,
) -> ReferenceMetrics:
    """iHarmony4 metrics of one prediction, exactly as the DiffHarmony reference computes them.

    Takes the images as opened (any mode, any size); conversion, dithering of the mask
    and resizing to `resolution` happen here. With `use_gt_bg` the prediction's
    background is replaced by the ground truth's before any metric.
    """
    return evaluate_against(prediction, protocol_reference(ground_truth, mask, resolution=resolution), use_gt_bg=use_gt_bg)


def _rgb_image(arr: np.ndarray, name: str) -> Image.Image:
    a = np.asarray(arr)
    if a.ndim != 3 or a.shape[2] != 3 or a.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8 HxWx3, got {a.dtype} {a.shape}")
    return Image.fromarray(a)


def _mask_image(mask: np.ndarray) -> Image.Image:
    """8-bit grey image of a mask, so that ``convert("1")`` sees what a PNG would give.

    bool -> 0/255; uint8 as is; float in [0, 1] -> round(255 * m), which restores the
    original bytes of a mask that was loaded as uint8 and divided by 255.
    """
    m = np.asarray(mask)
    if m.ndim == 3 and m.shape[-1] == 1:
        m = m[..., 0]
    if m.ndim != 2:
        raise ValueError(f"mask must be HxW, got shape {m.shape}")
    if m.dtype == np.bool_:
        grey = np.ascontiguousarray(m).view(np.uint8) * np.uint8(255)
    elif m.dtype == np.uint8:
        grey = m
    else:
        grey = np.clip(np.rint(m.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    return Image.fromarray(grey)


def protocol_reference_arrays(ground_truth: np.ndarray, mask: np.ndarray, *, resolution: int = REFERENCE_RESOLUTION) -> ProtocolReference:
    """`protocol_reference` of an in-memory uint8 HxWx3 ground truth and HxW mask."""
    return protocol_reference(_rgb_image(ground_truth, "ground_truth"), _mask_image(mask), resolution=resolution)


def evaluate_arrays(
    prediction: np.ndarray,
    ground_truth: np.ndarray,
    mask: np.ndarray,
    *,
    resolution: int = REFERENCE_RESOLUTION,
    use_gt_bg: bool = False,
    reference: ProtocolReference | None = None,
) -> ReferenceMetrics:
    """`evaluate_images` for in-memory uint8 HxWx3 images and an HxW mask.

    The arrays are wrapped as PIL images and go through the same path, so the numbers are
    identical to evaluating the same pixels from files (a soft mask is dithered as well).
    `reference` (from `protocol_reference_arrays` of the same ground truth and mask) skips
    preparing them again when several predictions are scored against one pair.
    """
    if reference is None:
        reference = protocol_reference_arrays(ground_truth, mask, resolution=resolution)
    return evaluate_against(_rgb_image(prediction, "prediction"), reference, use_gt_bg=use_gt_bg)


def _check_pair(a: np.ndarray, b: np.ndarray) -> None:
    if a.shape != b.shape or a.ndim != 3 or a.shape[2] != 3:
        raise ValueError(f"expected two HxWx3 images of one size, got {a.shape} and {b.shape}")


def _squared_error_sum(a: np.ndarray, b: np.ndarray, where: np.ndarray | None = None) -> int:
    """Exact sum of (a - b)^2 over two uint8 images (only where HxW bool `where` is set, if given).

    The sum is an integer; OpenCV's L2SQR norm computes it in one pass but hands it back through a
    square root and a square, off by a few ulps (under 0.01 even for 64 MP): rounding restores it.
    """
    return round(cv2.norm(a, b, cv2.NORM_L2SQR, mask=None if where is None else where.view(np.uint8)))


def full_resolution_metrics(
    prediction: np.ndarray,
    ground_truth: np.ndarray,
    mask: np.ndarray | None = None,
    *,
    use_gt_bg: bool = False,
) -> FullResolutionMetrics:
    """MSE and PSNR of uint8 HxWx3 images at their own resolution, without resizing.

    Same formulas as the 256 px protocol; the mask (binarised at >= 0.5) is only needed
    for `use_gt_bg`, which replaces the prediction's background by the ground truth's.
    The squared differences of uint8 images are integers and summed exactly, so the value is
    the one of float32 differences with a float64 mean, at a fraction of the memory traffic.
    """
    ot = np.ascontiguousarray(prediction)
    gt = np.ascontiguousarray(ground_truth)
    _check_pair(ot, gt)
    fg = None
    if use_gt_bg:
        if mask is None:
            raise ValueError("use_gt_bg needs a mask")
        fg = binarize_mask(mask)
        if fg.shape != ot.shape[:2]:
            raise ValueError(f"mask {fg.shape} does not match image {ot.shape[:2]}")
    if ot.dtype == np.uint8 and gt.dtype == np.uint8:
        mse = _squared_error_sum(ot, gt, fg) / ot.size
    else:
        a, b = ot.astype(np.float32), gt.astype(np.float32)
        mse = _mse(a if fg is None else np.where(fg[..., None], a, b), b)
    return FullResolutionMetrics(mse=mse, psnr=psnr_from_mse(mse))


# No-reference statistics are distribution statistics: above this many pixels they are taken on
# a regular grid of at most this many points (see `no_reference_metrics`).
NOREF_GRID_POINTS = 1 << 18


def grid_stride(height: int, width: int, points: int = NOREF_GRID_POINTS) -> int:
    """The smallest s >= 1 for which every s-th row and column of height x width keep at most `points`."""
    s = max(1, math.isqrt((height * width) // points))
    while -(-height // s) * -(-width // s) > points:
        s += 1
    while s > 1 and -(-height // (s - 1)) * -(-width // (s - 1)) <= points:
        s -= 1
    return s


def _changed_pixels(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """HxW bool: where two HxWx3 uint8 images differ in any channel."""
    # |a - b| summed over the channels (saturating at 255) is zero exactly where all three agree.
    return cv2.transform(cv2.absdiff(a, b), np.ones((1, 3))) > 0


def _masked_moments(lab: np.ndarray, select: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """Per-channel mean and population standard deviation of HxWx3 `lab` where HxW bool `select` is
    set (float64 sums, no copy of the pixels); None for an empty selection."""
    sel = select.view(np.uint8)
    if not cv2.countNonZero(sel):
        return None
    mean, std = cv2.meanStdDev(lab, mask=sel)
    return mean.ravel(), std.ravel()


def _stat_gap(fg: tuple[np.ndarray, np.ndarray] | None, bg: tuple[np.ndarray, np.ndarray] | None) -> float:
    if fg is None or bg is None:
        return math.nan
    return float(np.linalg.norm(fg[0] - bg[0]) + np.linalg.norm(fg[1] - bg[1]))


def no_reference_metrics(
    composite: np.ndarray, harmonized: np.ndarray, mask: np.ndarray
) -> NoReferenceMetrics:
    """Ground-truth-free diagnostics of a harmonization.

    - fg_ratio: foreground pixels (mask >= 0.5) / all pixels, at full resolution;
    - delta_e_fg: mean CIE76 delta-E (in L*a*b*) between composite and harmonized over
      the foreground, i.e. how much the object's colour was changed;
    - stat_gap_before / stat_gap_after: colour-statistics gap between foreground and
      background of the composite / of the harmonized image, defined as
      ``||mean_fg - mean_bg||_2 + ||std_fg - std_bg||_2`` where mean and std are the
      per-channel L*a*b* mean and population standard deviation over the respective
      pixels. A harmonization that fits the object to its scene usually lowers it.

    Which pixels: all of them up to NOREF_GRID_POINTS (2^18) per set; above, a regular grid.
    The foreground's pixels (for delta_e_fg and the foreground statistics) are those of the
    grid of every s-th row and column of the foreground's bounding box, starting at its top
    left corner; the background's those of the same kind of grid over the whole image; each
    s is the smallest stride (`grid_stride`) leaving at most 2^18 grid points in its box. A
    sample of a quarter million pixels estimates a mean or standard deviation of L*a*b* to
    well under 0.1 for photographs, and keeps the cost flat in the image size.

    Values are NaN where undefined: delta_e_fg for an empty foreground, the gaps for an
    empty foreground or background.
    """
    comp = np.asarray(composite)
    harm = np.asarray(harmonized)
    _check_pair(comp, harm)
    fg = binarize_mask(mask)
    if fg.shape != comp.shape[:2]:
        raise ValueError(f"mask {fg.shape} does not match image {comp.shape[:2]}")
    h, w = fg.shape
    n_fg = cv2.countNonZero(fg.view(np.uint8))

    bg_before = bg_after = None
    if n_fg < fg.size:
        s = grid_stride(h, w)
        cg, hg = np.ascontiguousarray(comp[::s, ::s]), np.ascontiguousarray(harm[::s, ::s])
        bg = ~fg[::s, ::s]
        comp_lab = rgb_to_lab(cg)
        bg_before = bg_after = _masked_moments(comp_lab, bg)
        # A background left as it was (the paste contract) has the composite's statistics.
        if (_changed_pixels(cg, hg) & bg).any():
            bg_after = _masked_moments(rgb_to_lab(hg), bg)

    fg_before = fg_after = None
    delta_e = math.nan
    if n_fg:
        x, y, bw, bh = cv2.boundingRect(fg.view(np.uint8))
        sf = grid_stride(bh, bw)
        box = (slice(y, y + bh, sf), slice(x, x + bw, sf))
        cf, hf = np.ascontiguousarray(comp[box]), np.ascontiguousarray(harm[box])
        sel = np.ascontiguousarray(fg[box])
        comp_lab = rgb_to_lab(cf)
        fg_before = fg_after = _masked_moments(comp_lab, sel)
        delta_e = 0.0
        if (_changed_pixels(cf, hf) & sel).any():
            harm_lab = rgb_to_lab(hf)
            fg_after = _masked_moments(harm_lab, sel)
            d = comp_lab - harm_lab
            per_pixel = np.sqrt(np.einsum("ijk,ijk->ij", d, d))
            delta_e = float(cv2.mean(per_pixel, mask=sel.view(np.uint8))[0])
    return NoReferenceMetrics(
        fg_ratio=n_fg / fg.size,
        delta_e_fg=delta_e,
        stat_gap_before=_stat_gap(fg_before, bg_before),
        stat_gap_after=_stat_gap(fg_after, bg_after),
    )
