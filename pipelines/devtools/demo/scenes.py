"""Sample composites for the demo, the benchmarks and the tests: one recipe, defined once.

A scene is a real photograph (or any RGB array), a random elliptical foreground covering a given
share of it, and a composite whose foreground got a random Lab colour shift.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

from harmony_ops.masks import ellipse
from harmony_ops.perturb import lab_shift

PHOTOS = ("astronaut", "coffee", "chelsea", "rocket", "immunohistochemistry", "retina", "hubble_deep_field", "cat")


def sample_photos(size: int | None = None):
    """(name, uint8 RGB) of scikit-image's bundled photographs, optionally resized to size x size."""
    from pipelines.devtools.recipe.photos import load_photo

    for name in PHOTOS:
        img = load_photo(name)
        if size is not None:
            img = np.asarray(Image.fromarray(img).resize((size, size), Image.BILINEAR))
        yield name, img


def composite_of(real: np.ndarray, rng: np.random.Generator, fg_ratio: float) -> tuple[np.ndarray, np.ndarray]:
    """(composite, 8-bit 0/255 mask): an ellipse covering `fg_ratio` of `real`, its colours shifted."""
    h, w = real.shape[:2]
    mask = ellipse(h, w, rng, (fg_ratio, fg_ratio))
    comp, _ = lab_shift(real, mask, rng)
    return comp, (mask * 255).astype(np.uint8)


def write_scenes(folder: Path, scenes: Iterable[tuple[str, str, np.ndarray, np.ndarray, np.ndarray]],
                 with_real: bool = True, subset: str | None = None) -> Path:
    """Scenes (id, real image's name, composite, mask, real) in the iHarmony4 layout under `folder`,
    plus manifest.csv with paths relative to it; returns the manifest's path. A real image shared
    by several scenes is written once."""
    for sub in ("composite_images", "masks", "real_images"):
        (folder / sub).mkdir(parents=True, exist_ok=True)
    rows = []
    for rid, real_name, comp, mask, real in scenes:
        Image.fromarray(comp).save(folder / "composite_images" / f"{rid}.png")
        Image.fromarray(mask).save(folder / "masks" / f"{rid}.png")
        if not (folder / "real_images" / f"{real_name}.png").exists():
            Image.fromarray(real).save(folder / "real_images" / f"{real_name}.png")
        row = {"id": rid, "composite": f"composite_images/{rid}.png", "mask": f"masks/{rid}.png"}
        if with_real:
            row["real"] = f"real_images/{real_name}.png"
        if subset:
            row["subset"] = subset
        rows.append(row)
    manifest = folder / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest
