"""Synthetic inharmony: random foreground shapes and appearance changes of the foreground.

The composite keeps the real image's background bit for bit; the real image is the
ground truth a harmonizer should recover.
"""

from __future__ import annotations

import numpy as np

from .color import lab_to_rgb, rgb_to_lab


def ellipse_mask(height: int, width: int, rng: np.random.Generator, fg_ratio: float) -> np.ndarray:
    """A random axis-aligned ellipse covering about `fg_ratio` of the image, fully inside it."""
    area = fg_ratio * height * width
    aspect = rng.uniform(0.6, 1.6)
    ry = min(np.sqrt(area / (np.pi * aspect)), height / 2 - 1)
    rx = min(area / (np.pi * ry), width / 2 - 1)
    cy = rng.uniform(ry, height - ry)
    cx = rng.uniform(rx, width - rx)
    yy, xx = np.mgrid[0:height, 0:width]
    return (((yy - cy) / ry) ** 2 + ((xx - cx) / rx) ** 2 <= 1.0).astype(np.float32)


def lab_shift(real: np.ndarray, mask: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> tuple[np.ndarray, dict]:
    """Shift and scale the foreground's Lab statistics (lightness, colour cast, contrast)."""
    params = {
        "dL": float(rng.uniform(-18, 18) * strength),
        "da": float(rng.uniform(-14, 14) * strength),
        "db": float(rng.uniform(-14, 14) * strength),
        "contrast": float(1 + rng.uniform(-0.3, 0.3) * strength),
    }
    lab = rgb_to_lab(real)
    fg = mask >= 0.5
    mean = lab[fg].mean(axis=0)
    shifted = (lab[fg] - mean) * np.array([params["contrast"], 1.0, 1.0]) + mean + np.array([params["dL"], params["da"], params["db"]])
    out = lab.copy()
    out[fg] = shifted
    comp = real.copy()
    comp[fg] = np.clip(np.round(lab_to_rgb(out)[fg] * 255), 0, 255).astype(np.uint8)
    return comp, params
