"""Training-free harmonization baseline: L*a*b* colour-statistics transfer.

The classic Reinhard-style transfer, made local: the foreground's per-channel L*a*b* mean
and standard deviation are moved to those of a ring of background around it, the part of
the scene the eye compares the object with. It needs no model, runs in milliseconds, and
is the floor the diffusion model has to beat (and a fallback when it cannot run).
"""

from __future__ import annotations

import math
import time
from typing import TYPE_CHECKING

import numpy as np

from harmony_ops.color import lab_to_rgb_uint8, rgb_to_lab
from harmony_ops.compositing import binarize_mask, dilate
from harmony_ops.defaults import BASELINE_MODEL_ID
from harmony_ops.engine_api import RunResult

if TYPE_CHECKING:
    from harmony_ops.regions import Prepared

MIN_RING_WIDTH = 8
RING_WIDTH_FRACTION = 0.1
# Bounds of the std ratio: a flat ring (sky, wall) would otherwise erase the object's
# texture, and a busy ring would blow it up.
STD_RATIO_BOUNDS = (0.5, 2.0)
_STD_EPS = 1e-6


def default_ring_width(fg_area: int) -> int:
    """Ring width in px: max(8, ceil(0.1 * sqrt(fg_area))).

    Scaling with the object's linear size keeps the ring's area at roughly 40% of the
    object's for compact shapes (perimeter ~ 4 sqrt(A) times 0.1 sqrt(A)): enough pixels
    for stable statistics while staying local; the 8 px floor keeps tiny objects from
    being judged by a sliver of pixels.
    """
    return max(MIN_RING_WIDTH, math.ceil(RING_WIDTH_FRACTION * math.sqrt(max(fg_area, 0))))


def ring_mask(mask: np.ndarray, width: int | None = None) -> np.ndarray:
    """Background pixels within `width` px (Chebyshev distance) of the foreground, as bool HxW.

    `width` defaults to `default_ring_width` of the foreground area. When the ring is
    empty (no foreground, or nothing of the background near it), the whole background
    is returned instead.
    """
    fg = binarize_mask(mask)
    if width is None:
        width = default_ring_width(int(fg.sum()))
    if width < 0:
        raise ValueError(f"ring width must be >= 0, got {width}")
    ring = dilate(fg, width) & ~fg
    if not ring.any():
        return ~fg
    return ring


def harmonize_baseline(
    composite: np.ndarray,
    mask: np.ndarray,
    strength: float = 1.0,
    ring_width: int | None = None,
) -> np.ndarray:
    """Match the foreground's L*a*b* statistics to the surrounding background ring.

    Per L*a*b* channel, foreground values x become ``mu_ring + (x - mu_fg) * s`` with
    ``s = clip(std_ring / std_fg, 0.5, 2)`` (1 for a flat foreground); `strength` in
    [0, 1] blends linearly (in L*a*b*) between the original (0) and the full transfer
    (1). Returns uint8 HxWx3; every pixel outside the binarised mask is bit-identical to
    the composite, and an empty or all-foreground mask returns the composite unchanged
    (there is no background to match).
    """
    comp = np.asarray(composite)
    if comp.ndim != 3 or comp.shape[2] != 3 or comp.dtype != np.uint8:
        raise ValueError(f"composite must be uint8 HxWx3, got {comp.dtype} {comp.shape}")
    if not 0.0 <= strength <= 1.0:
        raise ValueError(f"strength must be in [0, 1], got {strength}")
    fg = binarize_mask(mask)
    if fg.shape != comp.shape[:2]:
        raise ValueError(f"mask {fg.shape} does not match image {comp.shape[:2]}")
    out = comp.copy()
    if strength == 0.0 or not fg.any() or fg.all():
        return out

    ring = ring_mask(fg, ring_width)
    # Only the pixels that take part are converted: on large images with small objects
    # this is a small fraction of the frame.
    fg_lab = rgb_to_lab(comp[fg])
    ring_lab = rgb_to_lab(comp[ring])
    mu_fg, sd_fg = fg_lab.mean(axis=0), fg_lab.std(axis=0)
    mu_ring, sd_ring = ring_lab.mean(axis=0), ring_lab.std(axis=0)
    scale = np.ones(3)
    textured = sd_fg > _STD_EPS  # a flat channel has no spread to rescale
    scale[textured] = np.clip(sd_ring[textured] / sd_fg[textured], *STD_RATIO_BOUNDS)

    transferred = mu_ring + (fg_lab - mu_fg) * scale
    blended = fg_lab + strength * (transferred - fg_lab)
    out[fg] = lab_to_rgb_uint8(blended)
    return out


class BaselineEngine:
    """`harmonize_baseline` behind the engine interface (engine_api.py); needs no torch."""

    name = "baseline"
    model_id = BASELINE_MODEL_ID
    needs_resize = False
    class_sizes = None  # works at the image's own size

    def __init__(self, strength: float = 1.0):
        self.strength = strength

    def run(self, items: list[Prepared], seeds: list[int]) -> RunResult:
        t = time.perf_counter()
        out = [harmonize_baseline(it.region_image, it.region_mask, strength=self.strength) for it in items]
        return RunResult(regions=out, seconds={"stage1": time.perf_counter() - t})
