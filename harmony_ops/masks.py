"""Random foreground masks for images that come without one (`harmony synthesize --mask-source`).

Three shapes, each covering a foreground ratio drawn uniformly from a requested range:

- ``ellipse``: a rotated ellipse with a random aspect ratio (1:2.5 to 2.5:1);
- ``box``: an axis-aligned rectangle with a random aspect ratio (1:3 to 3:1);
- ``blob``: a star-shaped irregular outline, a rotated and stretched circle whose radius is
  modulated by a few random low-frequency harmonics (always one connected region).

Guarantees, whatever the draw: the foreground pixel count lies in
``[ceil(lo * H * W), floor(hi * H * W)]`` (ellipse and blob hit the drawn target to the pixel: the
pixels are ranked by a shape "gauge" and exactly the target number is kept; a box gets the area
nearest the target that a box can have, which is in the range whenever the range is at least a row
of pixels wide); the shape lies inside the image, never touching its one-pixel border; and the mask
is a pure function of the random generator's state (callers seed it from the job seed, the row id
and the sample number).
Plain numpy: no Ray, no torch, no scipy.
"""

from __future__ import annotations

import math

import numpy as np

MASK_SOURCES = ("ellipse", "box", "blob")
# Largest foreground ratio a random mask may be asked for: an ellipse inscribed in an image covers
# at most pi/4 of it, and a foreground that large leaves little background to harmonize against.
MAX_FG_RATIO = 0.7
MIN_SIDE = 8  # smaller images cannot hold a shape inside a one-pixel border

_BOUNDARY_SAMPLES = 720


def check_fg_ratio(fg_ratio: tuple[float, float]) -> tuple[float, float]:
    lo, hi = (float(v) for v in fg_ratio)
    if not (0.0 < lo <= hi <= MAX_FG_RATIO):
        raise ValueError(f"foreground ratio range must satisfy 0 < min <= max <= {MAX_FG_RATIO}, got ({lo}, {hi})")
    return lo, hi


def _count_bounds(lo: float, hi: float, height: int, width: int) -> tuple[int, int]:
    """Pixel counts [n_lo, n_hi] allowed by the ratio range (inside the border)."""
    total = height * width
    inner = (height - 2) * (width - 2)
    n_lo = max(1, math.ceil(lo * total - 1e-9))
    n_hi = min(inner, math.floor(hi * total + 1e-9))
    if n_hi < n_lo:  # a range narrower than one pixel: the nearest count
        n_lo = n_hi = min(inner, max(1, round((lo + hi) / 2 * total)))
    return n_lo, n_hi


def random_mask(
    source: str, height: int, width: int, rng: np.random.Generator, fg_ratio: tuple[float, float] = (0.05, 0.4)
) -> tuple[np.ndarray, dict]:
    """(float32 H x W mask in {0, 1}, parameters of the draw) for one of MASK_SOURCES."""
    if source not in MASK_SOURCES:
        raise ValueError(f"unknown mask source {source!r}; choose one of {MASK_SOURCES}")
    if min(height, width) < MIN_SIDE:
        raise ValueError(f"image of {width}x{height} px is too small for a random mask (needs {MIN_SIDE} px per side)")
    lo, hi = check_fg_ratio(fg_ratio)
    target = float(rng.uniform(lo, hi))
    n_lo, n_hi = _count_bounds(lo, hi, height, width)
    count = int(min(n_hi, max(n_lo, round(target * height * width))))
    if source == "box":
        mask, params = _box(height, width, rng, count, n_lo, n_hi)
    else:
        mask, params = _star(height, width, rng, count, harmonics=source == "blob")
    params = {"source": source, "target_ratio": target, "fg_ratio": float(mask.mean()), **params}
    return mask, params


def ellipse(height: int, width: int, rng: np.random.Generator, fg_ratio=(0.05, 0.4)) -> np.ndarray:
    return random_mask("ellipse", height, width, rng, fg_ratio)[0]


def box(height: int, width: int, rng: np.random.Generator, fg_ratio=(0.05, 0.4)) -> np.ndarray:
    return random_mask("box", height, width, rng, fg_ratio)[0]


def blob(height: int, width: int, rng: np.random.Generator, fg_ratio=(0.05, 0.4)) -> np.ndarray:
    return random_mask("blob", height, width, rng, fg_ratio)[0]


def _box(height: int, width: int, rng: np.random.Generator, count: int, n_lo: int, n_hi: int) -> tuple[np.ndarray, dict]:
    """The box with an area in [n_lo, n_hi] whose aspect ratio is nearest the drawn one (the area nearest
    `count` when no box fits the range, which only happens for ranges narrower than a row of pixels)."""
    aspect = float(math.exp(rng.uniform(math.log(1 / 3), math.log(3))))  # width / height
    bw = np.arange(1, width - 1)
    cost = None
    for raw in (np.rint(count / bw), np.ceil(n_lo / bw)):  # area nearest the target, else the range's low end
        bh = np.minimum(height - 2, np.maximum(1, raw)).astype(int)
        ok = (bw * bh >= n_lo) & (bw * bh <= n_hi) & (bh == raw)
        if ok.any():
            cost = np.where(ok, np.abs(np.log(bw / bh) - math.log(aspect)), np.inf)
            break
    if cost is None:
        bh = np.minimum(height - 2, np.maximum(1, np.rint(count / bw))).astype(int)
        cost = np.abs(bw * bh - count) + 1e-6 * np.abs(np.log(bw / bh) - math.log(aspect))
    i = int(np.argmin(cost))
    bw, bh = int(bw[i]), int(bh[i])
    x0 = int(rng.integers(1, width - 1 - bw + 1))
    y0 = int(rng.integers(1, height - 1 - bh + 1))
    mask = np.zeros((height, width), np.float32)
    mask[y0 : y0 + bh, x0 : x0 + bw] = 1.0
    return mask, {"x0": x0, "y0": y0, "x1": x0 + bw, "y1": y0 + bh, "aspect": aspect}


def _radius(theta: np.ndarray, amps: np.ndarray, phases: np.ndarray) -> np.ndarray:
    """Radius of the unit shape at angle theta: 1 + sum_k a_k cos(k theta + phi_k), k = 2, 3, ..."""
    r = np.ones_like(theta)
    for k, (a, p) in enumerate(zip(amps, phases), start=2):
        r += a * np.cos(k * theta + p)
    return r


def _star(height: int, width: int, rng: np.random.Generator, count: int, harmonics: bool) -> tuple[np.ndarray, dict]:
    """A stretched, rotated star-shaped region (an ellipse without harmonics) of exactly `count` pixels.

    Shape: points p with gauge(p) <= s, gauge = |q| / r(angle(q)) where q is p relative to the
    centre, rotated by -angle and un-stretched by the aspect ratio. The scale s comes from the
    continuous area; the shape is redrawn (up to 20 times, then an image-shaped ellipse) until its
    extent fits inside the border; the pixels are then ranked by gauge and exactly `count` kept.
    """
    theta = np.linspace(0, 2 * np.pi, _BOUNDARY_SAMPLES, endpoint=False)
    max_x, max_y = (width - 3) / 2, (height - 3) / 2  # half-extents that keep a one-pixel border clear
    fitted = None
    for _ in range(20):
        aspect = float(math.exp(rng.uniform(math.log(1 / 2.5), math.log(2.5))))
        angle = float(rng.uniform(0, math.pi))
        if harmonics:
            amps = rng.uniform(0, 0.3, 4) * np.array([1.0, 0.9, 0.75, 0.6])
            phases = rng.uniform(0, 2 * np.pi, 4)
        else:
            amps, phases = np.zeros(0), np.zeros(0)
        r = _radius(theta, amps, phases)
        if r.min() < 0.3:
            continue
        scale = math.sqrt(count / (0.5 * float(np.mean(r**2)) * 2 * np.pi))
        ex, ey = _extent(theta, r * scale, aspect, angle)
        if ex <= max_x and ey <= max_y:
            fitted = (aspect, angle, amps, phases, scale, ex, ey)
            break
    if fitted is None:  # an ellipse shaped like the image always fits for ratios up to MAX_FG_RATIO
        aspect, angle, amps, phases = width / height, 0.0, np.zeros(0), np.zeros(0)
        scale = math.sqrt(count / np.pi)
        ex, ey = _extent(theta, np.full_like(theta, scale), aspect, angle)
        shrink = min(1.0, max_x / ex, max_y / ey)
        scale, ex, ey = scale * shrink, ex * shrink, ey * shrink
        fitted = (aspect, angle, amps, phases, scale, ex, ey)
    aspect, angle, amps, phases, scale, ex, ey = fitted
    cx = float(rng.uniform(1 + ex, width - 2 - ex)) if width - 2 - ex > 1 + ex else (width - 1) / 2
    cy = float(rng.uniform(1 + ey, height - 2 - ey)) if height - 2 - ey > 1 + ey else (height - 1) / 2

    # Rank only the pixels of the shape's bounding box (plus a margin): everything outside is farther out.
    x0, x1 = max(1, math.floor(cx - ex) - 2), min(width - 1, math.ceil(cx + ex) + 3)
    y0, y1 = max(1, math.floor(cy - ey) - 2), min(height - 1, math.ceil(cy + ey) + 3)
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float64)
    dx, dy = xx - cx, yy - cy
    c, s = math.cos(angle), math.sin(angle)
    u = (dx * c + dy * s) / math.sqrt(aspect)
    v = (-dx * s + dy * c) * math.sqrt(aspect)
    gauge = (np.hypot(u, v) / _radius(np.arctan2(v, u), amps, phases)).ravel()
    keep = np.argpartition(gauge, min(count, gauge.size) - 1)[:count]
    region = np.zeros(gauge.size, np.float32)
    region[keep] = 1.0
    mask = np.zeros((height, width), np.float32)
    mask[y0:y1, x0:x1] = region.reshape(y1 - y0, x1 - x0)
    params = {"cx": cx, "cy": cy, "aspect": aspect, "angle": angle, "scale": float(scale)}
    if harmonics:
        params["amplitudes"] = [float(a) for a in amps]
        params["phases"] = [float(p) for p in phases]
    return mask, params


def _extent(theta: np.ndarray, radius: np.ndarray, aspect: float, angle: float) -> tuple[float, float]:
    """Half-extents (x, y) of the stretched, rotated outline (plus half a pixel for rasterisation)."""
    u = radius * np.cos(theta) * math.sqrt(aspect)
    v = radius * np.sin(theta) / math.sqrt(aspect)
    c, s = math.cos(angle), math.sin(angle)
    x = u * c - v * s
    y = u * s + v * c
    return float(np.abs(x).max()) + 0.5, float(np.abs(y).max()) + 0.5
