"""Mask handling, feathered pasting and resizing for putting harmonized pixels back.

The contract every paste function keeps: a pixel outside the binarised mask is returned
bit-identical to the composite. Harmonization may only change the inserted object;
anything the model (or a resize round trip) did to the background is discarded.

Masks are HxW arrays: bool, float in [0, 1], or uint8 in [0, 255] (as loaded from a PNG);
`binarize_mask` is the one place that decides what counts as foreground.

Morphology is done with separable box counts over cumulative sums, so erosion, dilation
and blurring cost O(H*W) whatever the radius (tens of milliseconds for a 2000x2000
mask), with no scipy dependency. The neighbourhood is a square (Chebyshev distance).
"""

from __future__ import annotations

import cv2
import numpy as np
from PIL import Image

Box = tuple[int, int, int, int]  # x0, y0, x1, y1 (x1, y1 exclusive)


def binarize_mask(mask: np.ndarray) -> np.ndarray:
    """Return the mask as a bool HxW array: foreground where the value is >= 0.5.

    uint8 masks are read on a 0..255 scale (foreground >= 128, i.e. >= 0.5 after /255),
    everything else on a 0..1 scale. A trailing singleton channel (HxWx1) is dropped.
    """
    arr = np.asarray(mask)
    if arr.ndim == 3 and arr.shape[-1] == 1:
        arr = arr[..., 0]
    if arr.ndim != 2:
        raise ValueError(f"mask must be HxW, got shape {arr.shape}")
    if arr.dtype == np.bool_:
        return arr.copy()
    if arr.dtype == np.uint8:
        return arr >= 128
    return arr >= 0.5


def _window_sum(values: np.ndarray, radius: int, axis: int, pad: bool | None) -> np.ndarray:
    """Sum of a 2*radius+1 window along `axis` of an integer array.

    Out-of-image samples are `pad` (as 0/1), or replicate the edge when `pad` is None.
    """
    widths = [(0, 0), (0, 0)]
    # One extra leading pad element makes window j equal csum[j + 2r + 1] - csum[j].
    widths[axis] = (radius + 1, radius)
    arr = values.astype(np.int32, copy=False)
    if pad is None:
        padded = np.pad(arr, widths, mode="edge")
    else:
        padded = np.pad(arr, widths, constant_values=int(pad))
    csum = np.cumsum(padded, axis=axis, dtype=np.int32)
    n = values.shape[axis]
    k = 2 * radius + 1
    hi: list[slice] = [slice(None), slice(None)]
    lo: list[slice] = [slice(None), slice(None)]
    hi[axis] = slice(k, k + n)
    lo[axis] = slice(0, n)
    return csum[tuple(hi)] - csum[tuple(lo)]


def dilate(binary: np.ndarray, radius: int) -> np.ndarray:
    """Binary dilation by a (2*radius+1)^2 square; outside the image counts as background."""
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    out = np.asarray(binary, dtype=bool)
    if radius == 0:
        return out.copy()
    for axis in (0, 1):
        out = _window_sum(out, radius, axis, pad=False) > 0
    return out


def erode(binary: np.ndarray, radius: int) -> np.ndarray:
    """Binary erosion by a (2*radius+1)^2 square; outside the image counts as foreground.

    Treating the frame as foreground keeps objects that touch the image border from being
    eroded there: there is no background beyond the frame to blend towards.
    """
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    out = np.asarray(binary, dtype=bool)
    if radius == 0:
        return out.copy()
    full = 2 * radius + 1
    for axis in (0, 1):
        out = _window_sum(out, radius, axis, pad=True) == full
    return out


def _box_fraction(binary: np.ndarray, radius: int) -> np.ndarray:
    """Fraction of each (2*radius+1)^2 window that is True, replicating the image edge."""
    counts = _window_sum(_window_sum(binary, radius, 0, pad=None), radius, 1, pad=None)
    # Integer counts stay exact, so a window fully inside gives exactly 1.0.
    return (counts / float((2 * radius + 1) ** 2)).astype(np.float32)


def feather_alpha(mask: np.ndarray, radius: int) -> np.ndarray:
    """Blend weight for pasting: float32 HxW in [0, 1], zero outside the binarised mask.

    The mask is eroded by `radius` and box-blurred with the same radius, so alpha is 1 at
    Chebyshev distance >= 2*radius from the background and falls to 1/(2*radius+1)^2 on
    the mask's outermost pixels. The ramp lies entirely inside the mask, which keeps the
    background untouched and hides the seam in the object's own border instead.
    `radius` 0 gives the binary mask itself.
    """
    if radius < 0:
        raise ValueError(f"radius must be >= 0, got {radius}")
    binary = binarize_mask(mask)
    if radius == 0 or not binary.any():
        return binary.astype(np.float32)
    alpha = _box_fraction(erode(binary, radius), radius)
    # The blur cannot reach the background by construction; the product makes it explicit.
    return alpha * binary


def _check_rgb(img: np.ndarray, name: str) -> np.ndarray:
    arr = np.asarray(img)
    if arr.ndim != 3 or arr.shape[2] != 3 or arr.dtype != np.uint8:
        raise ValueError(f"{name} must be uint8 HxWx3, got {arr.dtype} {arr.shape}")
    return arr


def _copy_where(dst: np.ndarray, src: np.ndarray, where: np.ndarray) -> None:
    """dst[where] = src[where] for HxWx3 uint8 images and an HxW bool mask, in place.

    OpenCV's masked copy is ~50x numpy's masked assignment; it writes into `dst` itself
    (also a view into a larger image), else its result is copied back.
    """
    res = cv2.copyTo(src, np.ascontiguousarray(where).view(np.uint8), dst)
    if res is not dst:
        dst[...] = res


def _blend_into(dst: np.ndarray, src: np.ndarray, alpha: np.ndarray | None, binary: np.ndarray) -> None:
    """Write round(alpha*src + (1-alpha)*dst) into `dst` where `binary` is set (alpha None: 1).

    Where alpha is 1 the formula gives src exactly, so those pixels are copied; only the
    feather ramp (0 < alpha < 1) is blended in float64.
    """
    full = binary if alpha is None else binary & (alpha >= 1.0)
    _copy_where(dst, src, full)
    if alpha is None:
        return
    ramp = binary & ~full
    if not ramp.any():
        return
    a = alpha[ramp][:, None].astype(np.float64)
    base = dst[ramp].astype(np.float64)
    blended = base + a * (src[ramp].astype(np.float64) - base)
    dst[ramp] = np.clip(np.rint(blended), 0, 255).astype(np.uint8)


def paste(
    composite: np.ndarray, harmonized: np.ndarray, mask: np.ndarray, feather: int = 0
) -> np.ndarray:
    """Paste `harmonized` into `composite` through the mask (both HxWx3 uint8, same size).

    Pixels outside the binarised mask are copied bit-identically from the composite;
    inside, the images are alpha-blended with `feather_alpha(mask, feather)` and rounded.
    """
    composite = _check_rgb(composite, "composite")
    harmonized = _check_rgb(harmonized, "harmonized")
    if harmonized.shape != composite.shape:
        raise ValueError(f"harmonized {harmonized.shape} != composite {composite.shape}")
    binary = binarize_mask(mask)
    if binary.shape != composite.shape[:2]:
        raise ValueError(f"mask {binary.shape} does not match image {composite.shape[:2]}")
    out = composite.copy()
    _blend_into(out, harmonized, feather_alpha(binary, feather) if feather > 0 else None, binary)
    return out


def paste_region(
    composite: np.ndarray,
    region_result: np.ndarray,
    box: Box,
    mask: np.ndarray,
    feather: int = 0,
) -> np.ndarray:
    """Paste a harmonized crop back into the full composite.

    `region_result` covers `box` = (x0, y0, x1, y1) of the composite (x1, y1 exclusive) and
    is already at the box's size; `mask` is the full-size mask. Foreground outside the box
    has no harmonized pixels and stays as in the composite; the feather ramp is therefore
    computed on the foreground clipped to the box, so it also fades out where the box
    cuts through the object (but not along the image frame). Pixels outside the binarised
    mask are bit-identical to the composite.
    """
    composite = _check_rgb(composite, "composite")
    region_result = _check_rgb(region_result, "region_result")
    h, w = composite.shape[:2]
    x0, y0, x1, y1 = (int(v) for v in box)
    if not (0 <= x0 < x1 <= w and 0 <= y0 < y1 <= h):
        raise ValueError(f"box {box} is empty or not inside the {w}x{h} image")
    if region_result.shape[:2] != (y1 - y0, x1 - x0):
        raise ValueError(
            f"region_result {region_result.shape[:2]} does not match box size {(y1 - y0, x1 - x0)}"
        )
    m = np.asarray(mask)
    if m.shape[:2] != (h, w) or not (m.ndim == 2 or (m.ndim == 3 and m.shape[2] == 1)):
        raise ValueError(f"mask {m.shape} does not match image {(h, w)}")
    if feather < 0:
        raise ValueError(f"feather must be >= 0, got {feather}")
    # Only the box's part of the mask matters: pixels outside it are the composite's.
    binary = binarize_mask(m[y0:y1, x0:x1])

    alpha = None
    if feather > 0:
        # Work on the box grown by the feather reach: inside the image, the margin is
        # background (not harmonized), while at the frame the erosion sees "outside" as
        # foreground, exactly as for a full-image paste.
        margin = 2 * feather + 1
        gx0, gy0 = max(x0 - margin, 0), max(y0 - margin, 0)
        gx1, gy1 = min(x1 + margin, w), min(y1 + margin, h)
        grown = np.zeros((gy1 - gy0, gx1 - gx0), dtype=bool)
        by0, bx0 = y0 - gy0, x0 - gx0
        grown[by0 : by0 + (y1 - y0), bx0 : bx0 + (x1 - x0)] = binary
        alpha = feather_alpha(grown, feather)[by0 : by0 + (y1 - y0), bx0 : bx0 + (x1 - x0)]

    out = composite.copy()
    _blend_into(out[y0:y1, x0:x1], region_result, alpha, binary)
    return out


def resize_rgb(img: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Resize an HxWx3 uint8 image to `size` = (w, h) with PIL BILINEAR.

    PIL's bilinear filter widens its support when downscaling (antialiasing), which is
    what torchvision's `TF.resize(..., antialias=True)` does for PIL images and therefore
    what the reference evaluation uses.
    """
    arr = _check_rgb(img, "img")
    w, h = (int(v) for v in size)
    if w <= 0 or h <= 0:
        raise ValueError(f"size must be positive, got {size}")
    if (w, h) == (arr.shape[1], arr.shape[0]):
        return arr.copy()
    return np.array(Image.fromarray(arr).resize((w, h), Image.Resampling.BILINEAR))


def resize_mask(mask: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Binarise a mask at 0.5 and resize it to `size` = (w, h) with PIL NEAREST.

    Nearest-neighbour keeps the mask binary; returns float32 0/1.
    """
    binary = binarize_mask(mask)
    w, h = (int(v) for v in size)
    if w <= 0 or h <= 0:
        raise ValueError(f"size must be positive, got {size}")
    img = Image.fromarray(binary.astype(np.uint8) * 255)
    resized = np.asarray(img.resize((w, h), Image.Resampling.NEAREST))
    return (resized >= 128).astype(np.float32)


# --- cutouts with a soft alpha -------------------------------------------------------------------


def _over(base: np.ndarray, top: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """round((alpha*top + (255-alpha)*base) / 255) in integers: exactly `base` where alpha is 0 and
    exactly `top` where it is 255, the blend in between."""
    a = alpha.astype(np.uint32)[..., None]
    return ((top.astype(np.uint32) * a + base.astype(np.uint32) * (255 - a) + 127) // 255).astype(np.uint8)


def place_cutout(background: np.ndarray, cutout_rgb: np.ndarray, cutout_alpha: np.ndarray, x: int, y: int,
                 scale: float = 1.0) -> tuple[np.ndarray, np.ndarray, bool]:
    """Alpha-over of a cutout onto a background at (x, y), its top-left corner in background pixels,
    after scaling it by `scale`. Returns (composite, alpha over the whole background, clipped): the
    composite is the background's size; the part of the cutout outside it is dropped (clipped True)."""
    bg = _check_rgb(background, "background")
    fg = _check_rgb(cutout_rgb, "cutout")
    alpha = np.asarray(cutout_alpha)
    if alpha.shape != fg.shape[:2] or alpha.dtype != np.uint8:
        raise ValueError(f"cutout alpha must be uint8 {fg.shape[:2]}, got {alpha.dtype} {alpha.shape}")
    if not scale > 0:
        raise ValueError(f"scale must be > 0, got {scale}")
    if scale != 1.0:
        size = (max(1, round(fg.shape[1] * scale)), max(1, round(fg.shape[0] * scale)))
        fg, alpha = resize_rgb(fg, size), cv2.resize(alpha, size, interpolation=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
    h, w = bg.shape[:2]
    fh, fw = alpha.shape
    x0, y0, x1, y1 = max(x, 0), max(y, 0), min(x + fw, w), min(y + fh, h)
    full = np.zeros((h, w), np.uint8)
    composite = bg.copy()
    clipped = (x0, y0, x1, y1) != (x, y, x + fw, y + fh)
    if x1 > x0 and y1 > y0:
        a = alpha[y0 - y : y1 - y, x0 - x : x1 - x]
        full[y0:y1, x0:x1] = a
        composite[y0:y1, x0:x1] = _over(bg[y0:y1, x0:x1], fg[y0 - y : y1 - y, x0 - x : x1 - x], a)
    return composite, full, clipped


def soft_paste(base: np.ndarray, harmonized: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """The delivered image of a soft-alpha row: `base` (the background) where alpha is 0, bit for bit;
    `harmonized` where it is 255; the alpha blend of the two in between (rounded to nearest)."""
    b, t = _check_rgb(base, "base"), _check_rgb(harmonized, "harmonized")
    a = np.asarray(alpha)
    if b.shape != t.shape or a.shape != b.shape[:2] or a.dtype != np.uint8:
        raise ValueError(f"base {b.shape}, harmonized {t.shape} and alpha {a.dtype} {a.shape} must agree (alpha uint8)")
    return _over(b, t, a)


def harmonized_foreground(harmonized: np.ndarray, alpha: np.ndarray) -> np.ndarray:
    """The harmonized foreground's colour wherever the alpha is above 0, for `soft_paste`.

    Where the alpha is 255 the engine saw the product alone: its output there is the harmonized
    foreground. A partly transparent pixel's composite already mixes in the background, so the engine's
    output there would bring the background in twice once blended again; those pixels take the colour of
    the nearest opaque ones instead (grown outward a pixel at a time, averaging the neighbours already
    known). A cutout with no opaque pixel uses the engine's output wherever alpha >= 128."""
    img = _check_rgb(harmonized, "harmonized")
    a = np.asarray(alpha)
    known = a == 255
    if not known.any():
        known = a >= 128
    need = (a > 0) & ~known
    out = img.copy()
    if not need.any() or not known.any():
        return out
    ys, xs = np.nonzero(need | known)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    sub, k, todo = out[y0:y1, x0:x1].astype(np.float32), known[y0:y1, x0:x1].astype(np.float32), need[y0:y1, x0:x1]
    while todo.any():  # each pass reaches one pixel further; a pass that reaches nothing ends it
        weight = cv2.blur(k, (3, 3), borderType=cv2.BORDER_CONSTANT)
        total = cv2.blur(sub * k[..., None], (3, 3), borderType=cv2.BORDER_CONSTANT)
        grow = todo & (weight > 0)
        if not grow.any():
            break
        sub[grow] = total[grow] / weight[grow][:, None]
        k[grow], todo = 1.0, todo & ~grow
    out[y0:y1, x0:x1] = np.clip(np.rint(sub), 0, 255).astype(np.uint8)
    return out
