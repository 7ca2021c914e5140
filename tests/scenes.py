"""Small synthetic scenes (composite, mask, ground truth) shared by unit and pipeline tests."""

from __future__ import annotations

import io

import numpy as np
from PIL import Image

from pipelines.devtools.demo.scenes import composite_of


def enc(arr: np.ndarray, fmt: str = "PNG", **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **kw)
    return buf.getvalue()


def make_scene(seed: int, h: int = 72, w: int = 96, ratio: float = 0.2):
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    real = np.stack([xx * 255 / w, yy * 255 / h, np.full((h, w), 120.0)], -1)
    real = np.clip(real + rng.normal(0, 6, real.shape), 0, 255).astype(np.uint8)
    comp, mask = composite_of(real, rng, ratio)
    return comp, mask, real
