"""Cutting a composite into the planned region and pasting a result back (numpy only)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .compositing import paste_region, resize_mask, resize_rgb
from .resolution import InferencePlan, ResolutionPolicy, plan_inference


@dataclass
class Prepared:
    """One image ready for an engine: its plan, the region at inference size and at full size."""

    plan: InferencePlan
    region_image: np.ndarray  # uint8 h x w x 3, the planned region at the original scale
    region_mask: np.ndarray  # float32 h x w in {0, 1}
    image: np.ndarray | None = None  # uint8, region resized to the inference size
    mask: np.ndarray | None = None  # float32, idem


def prepare(composite: np.ndarray, mask: np.ndarray, policy: ResolutionPolicy, resize: bool = True) -> Prepared:
    """Plan, crop and (when the engine needs it) resize one composite for inference."""
    plan = plan_inference(mask, policy)
    x0, y0, x1, y1 = plan.region
    region = np.ascontiguousarray(composite[y0:y1, x0:x1])
    region_mask = (np.asarray(mask[y0:y1, x0:x1]) >= 0.5).astype(np.float32)
    item = Prepared(plan=plan, region_image=region, region_mask=region_mask)
    if resize:
        size = (plan.width, plan.height)
        item.image = resize_rgb(region, size)
        item.mask = resize_mask(region_mask, size)
    return item


def finish(composite: np.ndarray, mask: np.ndarray, box: tuple[int, int, int, int], region_result: np.ndarray, feather: int = 0) -> np.ndarray:
    """The full-size output: composite outside the mask (bit-identical), the result inside `box`."""
    return paste_region(composite, region_result, box, mask, feather=feather)
