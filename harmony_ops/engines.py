"""Harmonization engines behind one small interface.

An engine turns prepared regions (`regions.prepare`) into harmonized regions at the
region's own size; `regions.finish` pastes a region back into the full-size composite. The split lets a
batch job do `prepare` and `finish` on CPU workers and only `run` on accelerator actors.

- `DiffHarmonyEngine`: stage 1 (the diffusion sampler at the planned inference size,
  batched per bucket shape), then stage 2 (the refinement U-Net) on the foreground region
  at output scale, not on a 256 px thumbnail.
- `BaselineEngine`: training-free Lab colour-statistics transfer; a CPU fallback and a
  yardstick for audits.
"""

from __future__ import annotations

import time

import numpy as np
import torch
import torch.nn.functional as F

from .baseline import BaselineEngine
from .defaults import DEFAULT_REFINE_MAX_PIXELS
from .engine_api import Engine, RunResult
from .regions import Prepared

__all__ = ["BaselineEngine", "DiffHarmonyEngine", "Engine", "RunResult", "refine_region", "to_tensor", "to_uint8"]


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """C x H x W float in [0, 1] -> H x W x 3 uint8, rounded."""
    return (x.clamp(0, 1) * 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()


def to_tensor(img: np.ndarray) -> torch.Tensor:
    """H x W x 3 uint8 -> 3 x H x W float32 in [-1, 1]."""
    return torch.from_numpy(np.array(img, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1.0


class DiffHarmonyEngine:
    name = "diffharmony"
    needs_resize = True

    def __init__(
        self,
        sampler,
        refiner=None,
        model_id: str = "unknown",
        steps: int = 5,
        refine_max_pixels: int = DEFAULT_REFINE_MAX_PIXELS,
        class_sizes: tuple[int, int] | None = None,
    ):
        self.sampler = sampler
        self.refiner = refiner
        self.model_id = model_id
        self.steps = steps
        self.refine_max_pixels = refine_max_pixels
        # The inference class sizes the checkpoint declares it was trained for (None: SD's 512 / 1024).
        self.class_sizes = class_sizes

    @property
    def device(self) -> torch.device:
        return self.sampler.device

    def run(self, items: list[Prepared], seeds: list[int]) -> RunResult:
        if len(items) != len(seeds):
            raise ValueError("need one seed per item")
        seconds = {"stage1": 0.0, "refine": 0.0}
        outputs: list[np.ndarray | None] = [None] * len(items)
        buckets: dict[tuple[int, int], list[int]] = {}
        for i, it in enumerate(items):
            buckets.setdefault((it.plan.width, it.plan.height), []).append(i)
        for idx in buckets.values():
            t = time.perf_counter()
            images = torch.stack([to_tensor(items[i].image) for i in idx])
            masks = torch.stack([torch.from_numpy(np.array(items[i].mask, dtype=np.float32))[None] for i in idx])
            stage1 = self.sampler(images, masks, seeds=[seeds[i] for i in idx], num_inference_steps=self.steps)
            seconds["stage1"] += time.perf_counter() - t
            t = time.perf_counter()
            for j, i in enumerate(idx):
                outputs[i] = self._to_region(stage1[j], items[i])
            seconds["refine"] += time.perf_counter() - t
        return RunResult(regions=outputs, seconds=seconds)  # type: ignore[arg-type]

    @torch.no_grad()
    def _to_region(self, harmonized: torch.Tensor, item: Prepared) -> np.ndarray:
        """Bring one stage-1 result (3 x h x w in [0, 1]) to the region's size, refining it there."""
        rh, rw = item.region_mask.shape
        if self.refiner is None:
            up = F.interpolate(harmonized[None], size=(rh, rw), mode="bilinear", antialias=True, align_corners=False)
            return to_uint8(up[0])
        return refine_region(self.refiner, harmonized, item.region_image, item.region_mask, self.refine_max_pixels)


@torch.no_grad()
def refine_region(refiner, harmonized: torch.Tensor, region_image: np.ndarray, region_mask: np.ndarray, max_pixels: int) -> np.ndarray:
    """Run the refiner at the region's own scale (capped at `max_pixels`), return uint8 at region size.

    harmonized: 3 x h x w in [0, 1] at any size; region_image uint8 H x W x 3; region_mask H x W.
    """
    from .refiner import make_refiner_input

    device, dtype = refiner.device, refiner.dtype
    rh, rw = region_mask.shape
    scale = min(1.0, (max_pixels / float(rh * rw)) ** 0.5)
    th, tw = max(1, int(round(rh * scale))), max(1, int(round(rw * scale)))
    harm = F.interpolate(harmonized[None].to(device, torch.float32), size=(th, tw), mode="bilinear", antialias=True, align_corners=False)
    comp = to_tensor(region_image)[None].to(device)
    mask = torch.from_numpy(np.array(region_mask, dtype=np.float32))[None, None].to(device)
    if (th, tw) != (rh, rw):
        comp = F.interpolate(comp, size=(th, tw), mode="bilinear", antialias=True, align_corners=False)
        mask = (F.interpolate(mask, size=(th, tw), mode="nearest") >= 0.5).float()
    x = make_refiner_input(harm * 2 - 1, mask, comp, refiner.config.in_channels)
    f = refiner.downsample_factor
    ph, pw = (-th) % f, (-tw) % f
    if ph or pw:  # the U-Net needs sides divisible by its downsampling factor
        x = F.pad(x, (0, pw, 0, ph), mode="replicate")
    y = refiner(x.to(dtype)).sample[:, :, :th, :tw].float().clamp(-1, 1)
    y = (y + 1) / 2
    if (th, tw) != (rh, rw):
        y = F.interpolate(y, size=(rh, rw), mode="bilinear", align_corners=False)
    return to_uint8(y[0])
