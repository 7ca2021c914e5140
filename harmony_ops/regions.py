"""Cutting a composite into the planned region and pasting a result back (numpy only)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .compositing import paste_region, resize_mask, resize_rgb
from .resolution import InferencePlan, ResolutionPolicy, plan_inference


# A prepared region as Arrow-friendly columns (batch jobs move it between workers this way): the
# plan's scalars, then the pixels as raw uint8 bytes (shapes follow from the plan).
PLAN_COLUMNS = ("width", "height", "inference_width", "inference_height", "crop", "fg_ratio")
PIXEL_COLUMNS = ("region_rgb", "region_mask", "infer_rgb", "infer_mask")
REGION_COLUMNS = PLAN_COLUMNS + PIXEL_COLUMNS


def pack(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a, dtype=np.uint8).tobytes()


def unpack(b: bytes, h: int, w: int, c: int | None = 3) -> np.ndarray:
    a = np.frombuffer(b, dtype=np.uint8)
    return a.reshape((h, w, c) if c else (h, w))


def plan_from_columns(row) -> InferencePlan:
    """The plan a row's PLAN_COLUMNS describe (`inference_*` is the image's own size for engines that
    run at full resolution)."""
    crop = tuple(int(v) for v in row["crop"].split(",")) if isinstance(row["crop"], str) else None
    return InferencePlan(
        width=int(row["inference_width"]), height=int(row["inference_height"]), resolution_class=0, crop=crop,
        image_width=int(row["width"]), image_height=int(row["height"]), fg_ratio=float(row["fg_ratio"]),
    )


@dataclass
class Prepared:
    """One image ready for an engine: its plan, the region at inference size and at full size."""

    plan: InferencePlan
    region_image: np.ndarray  # uint8 h x w x 3, the planned region at the original scale
    region_mask: np.ndarray  # float32 h x w in {0, 1}
    image: np.ndarray | None = None  # uint8, region resized to the inference size
    mask: np.ndarray | None = None  # float32, idem

    def to_columns(self) -> dict:
        """REGION_COLUMNS of this item (the `infer_*` ones None when it was not resized)."""
        plan, resized = self.plan, self.image is not None
        return {
            "width": plan.image_width, "height": plan.image_height,
            "inference_width": plan.width if resized else plan.image_width,
            "inference_height": plan.height if resized else plan.image_height,
            "crop": ",".join(map(str, plan.crop)) if plan.crop else None,
            "fg_ratio": plan.fg_ratio,
            "region_rgb": pack(self.region_image),
            "region_mask": pack(self.region_mask.astype(np.uint8)),
            "infer_rgb": pack(self.image) if resized else None,
            "infer_mask": pack(self.mask.astype(np.uint8)) if resized else None,
        }

    @classmethod
    def from_columns(cls, row) -> "Prepared":
        plan = plan_from_columns(row)
        x0, y0, x1, y1 = plan.region
        rw, rh = x1 - x0, y1 - y0
        item = cls(plan=plan, region_image=unpack(row["region_rgb"], rh, rw),
                   region_mask=unpack(row["region_mask"], rh, rw, None).astype(np.float32))
        if isinstance(row["infer_rgb"], bytes):
            item.image = unpack(row["infer_rgb"], plan.height, plan.width)
            item.mask = unpack(row["infer_mask"], plan.height, plan.width, None).astype(np.float32)
        return item


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
