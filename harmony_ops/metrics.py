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

import numpy as np
from PIL import Image

from harmony_ops.color import delta_e76, rgb_to_lab
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
    """Separable 2-D filter of a float64 HxW array with mirrored borders.

    numpy's "symmetric" padding (d c b a | a b c d) is scipy.ndimage's "reflect" mode.
    """
    radius = (len(window) - 1) // 2
    out = img
    for axis in (0, 1):
        widths = [(0, 0), (0, 0)]
        widths[axis] = (radius, radius)
        padded = np.pad(out, widths, mode="symmetric")
        n = out.shape[axis]
        acc = np.zeros_like(out)
        for k, wk in enumerate(window):
            acc += wk * (padded[k : k + n] if axis == 0 else padded[:, k : k + n])
        out = acc
    return out


def _ssim_channel(x: np.ndarray, y: np.ndarray, data_range: float, window: np.ndarray) -> float:
    ux = _gaussian_filter(x, window)
    uy = _gaussian_filter(y, window)
    uxx = _gaussian_filter(x * x, window)
    uyy = _gaussian_filter(y * y, window)
    uxy = _gaussian_filter(x * y, window)
    # Population covariances (Wang et al. 2004), not the sample ones.
    vx = uxx - ux * ux
    vy = uyy - uy * uy
    vxy = uxy - ux * uy
    c1 = (_SSIM_K1 * data_range) ** 2
    c2 = (_SSIM_K2 * data_range) ** 2
    s = ((2 * ux * uy + c1) * (2 * vxy + c2)) / ((ux**2 + uy**2 + c1) * (vx + vy + c2))
    # Border pixels, whose window leaves the image, are excluded from the mean.
    pad = (len(window) - 1) // 2
    return float(s[pad : s.shape[0] - pad, pad : s.shape[1] - pad].mean(dtype=np.float64))


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
    window = _gaussian_window(_SSIM_SIGMA, _SSIM_TRUNCATE)
    if min(a.shape[:2]) < len(window):
        raise ValueError(f"SSIM needs images of at least {len(window)}x{len(window)} px")
    return float(
        np.mean([_ssim_channel(a[..., c], b[..., c], data_range, window) for c in range(a.shape[2])])
    )


def _possible_resize(img: Image.Image, resolution: int) -> Image.Image:
    # PIL switches mode "1" (and "P") to NEAREST by itself, as in the reference.
    if img.size != (resolution, resolution):
        img = img.resize((resolution, resolution), Image.Resampling.BILINEAR)
    return img


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
    ot_img = _possible_resize(prediction.convert("RGB"), resolution)
    mk_img = _possible_resize(mask.convert("1"), resolution)
    gt_img = _possible_resize(ground_truth.convert("RGB"), resolution)

    mk = np.array(mk_img, dtype=np.float32)[..., np.newaxis]
    gt = np.array(gt_img, dtype=np.float32)
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
        ssim=ssim(gt, ot),
        fg_ratio=fg_ratio,
        fg_bucket=fg_bucket(fg_ratio),
    )


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
        grey = m.astype(np.uint8) * 255
    elif m.dtype == np.uint8:
        grey = m
    else:
        grey = np.clip(np.rint(m.astype(np.float64) * 255.0), 0, 255).astype(np.uint8)
    return Image.fromarray(grey)


def evaluate_arrays(
    prediction: np.ndarray,
    ground_truth: np.ndarray,
    mask: np.ndarray,
    *,
    resolution: int = REFERENCE_RESOLUTION,
    use_gt_bg: bool = False,
) -> ReferenceMetrics:
    """`evaluate_images` for in-memory uint8 HxWx3 images and an HxW mask.

    The arrays are wrapped as PIL images and go through the same path, so the numbers are
    identical to evaluating the same pixels from files (a soft mask is dithered as well).
    """
    return evaluate_images(
        _rgb_image(prediction, "prediction"),
        _rgb_image(ground_truth, "ground_truth"),
        _mask_image(mask),
        resolution=resolution,
        use_gt_bg=use_gt_bg,
    )


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
    """
    ot = np.asarray(prediction)
    gt = np.asarray(ground_truth)
    if ot.shape != gt.shape or ot.ndim != 3 or ot.shape[2] != 3:
        raise ValueError(f"expected two HxWx3 images of one size, got {ot.shape} and {gt.shape}")
    ot = ot.astype(np.float32)
    gt = gt.astype(np.float32)
    if use_gt_bg:
        if mask is None:
            raise ValueError("use_gt_bg needs a mask")
        fg = binarize_mask(mask)
        if fg.shape != ot.shape[:2]:
            raise ValueError(f"mask {fg.shape} does not match image {ot.shape[:2]}")
        ot = np.where(fg[..., None], ot, gt)
    mse = _mse(ot, gt)
    return FullResolutionMetrics(mse=mse, psnr=psnr_from_mse(mse))


def _lab_stat_gap(fg_lab: np.ndarray, bg_lab: np.ndarray) -> float:
    if len(fg_lab) == 0 or len(bg_lab) == 0:
        return math.nan
    mean_gap = np.linalg.norm(fg_lab.mean(axis=0) - bg_lab.mean(axis=0))
    std_gap = np.linalg.norm(fg_lab.std(axis=0) - bg_lab.std(axis=0))
    return float(mean_gap + std_gap)


def no_reference_metrics(
    composite: np.ndarray, harmonized: np.ndarray, mask: np.ndarray
) -> NoReferenceMetrics:
    """Ground-truth-free diagnostics of a harmonization, at full resolution.

    - fg_ratio: foreground pixels (mask >= 0.5) / all pixels;
    - delta_e_fg: mean CIE76 delta-E (in L*a*b*) between composite and harmonized over
      the foreground, i.e. how much the object's colour was changed;
    - stat_gap_before / stat_gap_after: colour-statistics gap between foreground and
      background of the composite / of the harmonized image, defined as
      ``||mean_fg - mean_bg||_2 + ||std_fg - std_bg||_2`` where mean and std are the
      per-channel L*a*b* mean and population standard deviation over the respective
      pixels. A harmonization that fits the object to its scene usually lowers it.

    Values are NaN where undefined: delta_e_fg for an empty foreground, the gaps for an
    empty foreground or background.
    """
    comp = np.asarray(composite)
    harm = np.asarray(harmonized)
    if comp.shape != harm.shape or comp.ndim != 3 or comp.shape[2] != 3:
        raise ValueError(f"expected two HxWx3 images of one size, got {comp.shape} and {harm.shape}")
    fg = binarize_mask(mask)
    if fg.shape != comp.shape[:2]:
        raise ValueError(f"mask {fg.shape} does not match image {comp.shape[:2]}")

    comp_lab = rgb_to_lab(comp)
    harm_lab = rgb_to_lab(harm)
    comp_fg, comp_bg = comp_lab[fg], comp_lab[~fg]
    harm_fg, harm_bg = harm_lab[fg], harm_lab[~fg]
    delta_e = float(delta_e76(comp_fg, harm_fg).mean()) if len(comp_fg) else math.nan
    return NoReferenceMetrics(
        fg_ratio=float(fg.sum()) / fg.size,
        delta_e_fg=delta_e,
        stat_gap_before=_lab_stat_gap(comp_fg, comp_bg),
        stat_gap_after=_lab_stat_gap(harm_fg, harm_bg),
    )
