"""`harmony demo --catalog`: product cutouts on scenes, harmonized with `--fidelity free` and `lighting`,
and a before/after picture (README, "Product catalogs").

The products are cut from scikit-image's bundled photographs with a soft (feathered) alpha: the blue
canton of the flag in `astronaut` and the blue-grey rocket of `rocket`; the scenes are the warm
photographs `coffee` and `chelsea`. The manifest is a cutout manifest (foreground, background, x, y).
"""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

SCENE_SIZE = (256, 192)  # width, height of the scenes (small: the demo runs on a laptop's CPUs)


def _feathered(h: int, w: int, edge: int) -> np.ndarray:
    yy, xx = np.mgrid[0:h, 0:w]
    inset = np.minimum.reduce([yy, xx, h - 1 - yy, w - 1 - xx]).astype(np.float64)
    return (np.clip(inset / edge, 0, 1) * 255).round().astype(np.uint8)


def products() -> dict[str, np.ndarray]:
    """RGBA cutouts from scikit-image's photographs, with a 4-pixel soft edge."""
    from skimage import data

    canton = data.astronaut()[8:92, 0:112]  # the flag's blue canton with its stars
    rocket = data.rocket()[60:400, 255:330]
    out = {}
    for name, rgb, size in (("flag", canton, (84, 63)), ("rocket", rocket, (30, 136))):
        small = np.asarray(Image.fromarray(rgb).resize(size, Image.Resampling.LANCZOS))
        out[name] = np.dstack([small, _feathered(small.shape[0], small.shape[1], 4)])
    return out


def scenes() -> dict[str, np.ndarray]:
    from skimage import data

    return {name: np.asarray(Image.fromarray(getattr(data, name)()).resize(SCENE_SIZE, Image.Resampling.LANCZOS))
            for name in ("coffee", "chelsea")}


def build_catalog(folder: Path, images: int = 4) -> Path:
    """Write the cutouts, the scenes and `manifest.csv` (`images` rows: every product on every scene,
    round robin) under `folder`; returns the manifest."""
    folder.mkdir(parents=True, exist_ok=True)
    rows = []
    prods, bgs = products(), scenes()
    for name, rgba in prods.items():
        _png(rgba, folder / f"{name}.png")
    for name, rgb in bgs.items():
        _png(rgb, folder / f"{name}.png")
    pairs = [(p, s) for s in bgs for p in prods]
    for k in range(images):
        p, s = pairs[k % len(pairs)]
        h, w = prods[p].shape[:2]
        x, y = (SCENE_SIZE[0] - w) // 2 + 30 * (k // len(pairs)), SCENE_SIZE[1] - h - 12
        rows.append({"id": f"{p}-on-{s}-{k}", "foreground": f"{p}.png", "background": f"{s}.png", "x": x, "y": y})
    manifest = folder / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest


def _png(arr: np.ndarray, path: Path) -> None:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    path.write_bytes(buf.getvalue())


def montage(rows: list[tuple[Path, Path, Path]], path: Path, labels=("before", "free", "lighting")) -> Path:
    """One row per product: the placed cutout (the composite), then each mode's output, side by side."""
    from PIL import ImageDraw

    tiles = [[Image.open(p).convert("RGB") for p in row] for row in rows]
    w, h = tiles[0][0].size
    top = 16
    sheet = Image.new("RGB", (w * len(labels), top + h * len(tiles)), "white")
    draw = ImageDraw.Draw(sheet)
    for c, label in enumerate(labels):
        draw.text((c * w + 4, 2), label, fill="black")
    for r, row in enumerate(tiles):
        for c, tile in enumerate(row):
            sheet.paste(tile.resize((w, h)), (c * w, top + r * h))
    sheet.save(path, quality=88)
    return path


def run_catalog(out: Path, images: int, common: dict, echo=print) -> int:
    """The catalog manifest through harmonize twice (free, lighting); the montage under `out`."""
    from harmony_ops.compositing import place_cutout
    from pipelines.config import FidelityConfig
    from pipelines.jobs.harmonize.config import HarmonizeJobConfig
    from pipelines.jobs.harmonize.job import run_harmonize

    manifest = build_catalog(out / "catalog", images)
    echo(f"demo: wrote {images} product cutouts on scenes (scikit-image photographs, soft alpha) and {manifest}")
    code = 0
    for mode in ("free", "lighting"):
        echo(f"demo: --fidelity {mode}")
        cfg = HarmonizeJobConfig(manifest=str(manifest), output=str(out / f"catalog-{mode}"),
                                 fidelity=FidelityConfig(mode=mode), **common)
        code = max(code, run_harmonize(cfg, echo).exit_code)
    table = pd.read_csv(manifest)
    rows = []
    for r in table.itertuples():
        before = out / "catalog" / f"before-{r.id}.png"
        fg = np.asarray(Image.open(out / "catalog" / r.foreground))
        bg = np.asarray(Image.open(out / "catalog" / r.background).convert("RGB"))
        _png(place_cutout(bg, fg[..., :3], fg[..., 3], r.x, r.y)[0], before)
        rows.append((before, out / "catalog-free" / "images" / f"{r.id}.png",
                     out / "catalog-lighting" / "images" / f"{r.id}.png"))
    if all(p.exists() for row in rows for p in row):
        echo(f"demo: before / free / lighting: {montage(rows, out / 'catalog-before-after.jpg')}")
    return code
