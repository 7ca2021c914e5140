"""Real images for a recipe's training and held-out sets: random square crops of scikit-image's
bundled photographs. A photograph is either a training one or a held-out one, never both; near
duplicates (`cat` is `chelsea`, the two `stereo_motorcycle` views) must sit on the same side."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image

# Photographs that are views of the same scene: holding one out means holding out all of them.
SAME_SCENE = ({"chelsea", "cat"}, {"stereo_motorcycle", "stereo_motorcycle_right"})


def load_photo(name: str) -> np.ndarray:
    """uint8 RGB of a scikit-image photograph; `stereo_motorcycle[_right]` is one view of the pair."""
    try:
        import skimage.data as data
    except ImportError:
        raise SystemExit("this needs scikit-image for its sample photographs: pip install 'harmony[demo]'") from None
    if name.startswith("stereo_motorcycle"):
        img = data.stereo_motorcycle()[1 if name.endswith("_right") else 0]
    else:
        img = getattr(data, name)()
    img = np.asarray(img)
    if img.ndim == 2:
        img = np.repeat(img[..., None], 3, axis=2)
    return np.ascontiguousarray(img[..., :3]).astype(np.uint8)


# Photographs no recipe may train on: scikit-learn's and matplotlib's are kept for evaluation outside the
# project, and the quality benchmark's (pipelines/devtools/bench/quality_set.py) must stay unseen.
RESERVED = {"china": "scikit-learn's (evaluation outside the project)",
            "flower": "scikit-learn's (evaluation outside the project)",
            "grace_hopper": "matplotlib's (evaluation outside the project)",
            "kiwi": "the quality benchmark's", "abbey_wall": "the quality benchmark's",
            "cat_mug": "the quality benchmark's", "city": "the quality benchmark's"}


def check_split(train: list[str], holdout: list[str]) -> None:
    """Refuse a split where a photograph, or a view of the same scene, is on both sides, or where a reserved
    photograph (RESERVED) is trained on."""
    reserved = [f"{n} ({RESERVED[n]})" for n in train if n in RESERVED]
    if reserved:
        raise ValueError(f"photographs reserved for evaluation cannot be trained on: {', '.join(reserved)}")
    both = set(train) & set(holdout)
    for group in SAME_SCENE:
        if group & set(train) and group & set(holdout):
            both |= group
    if both:
        raise ValueError(f"photographs on both sides of the train / held-out split: {sorted(both)}")


def random_crops(img: np.ndarray, n: int, side: int, rng: np.random.Generator,
                 scale: tuple[float, float] = (0.35, 1.0)) -> list[np.ndarray]:
    """n square crops whose side is a random `scale` share of the image's shorter side, resized to
    `side` px, each flipped left-right with probability 0.5."""
    h, w = img.shape[:2]
    out = []
    for _ in range(n):
        s = max(8, int(round(min(h, w) * rng.uniform(*scale))))
        y, x = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
        crop = Image.fromarray(img[y:y + s, x:x + s]).resize((side, side), Image.BICUBIC)
        arr = np.asarray(crop)
        out.append(arr[:, ::-1] if rng.random() < 0.5 else arr)
    return out


def write_photo_set(folder: str | Path, photos: list[str], crops: int, side: int, seed: int) -> Path:
    """`crops` crops of each photograph as PNGs under folder/real/, plus folder/manifest.csv (id,
    real, subset: the photograph's name); returns the manifest's path."""
    folder = Path(folder)
    (folder / "real").mkdir(parents=True, exist_ok=True)
    rows = []
    for k, name in enumerate(photos):
        rng = np.random.default_rng([seed, k])
        for j, arr in enumerate(random_crops(load_photo(name), crops, side, rng)):
            rid = f"{name.replace('_', '-')}-{j:04d}"
            Image.fromarray(np.ascontiguousarray(arr)).save(folder / "real" / f"{rid}.png")
            rows.append({"id": rid, "real": f"real/{rid}.png", "subset": name})
    manifest = folder / "manifest.csv"
    pd.DataFrame(rows).to_csv(manifest, index=False)
    return manifest


def write_photo_sets(output: str | Path, train: list[str], holdout: list[str], crops: int, holdout_crops: int,
                     side: int, holdout_side: int, seed: int = 0) -> dict[str, str]:
    """The recipe's `photos` step: output/train and output/holdout, from disjoint photographs."""
    check_split(train, holdout)
    out = Path(output)
    return {"train": str(write_photo_set(out / "train", train, crops, side, seed)),
            "holdout": str(write_photo_set(out / "holdout", holdout, holdout_crops, holdout_side, seed + 1))}
