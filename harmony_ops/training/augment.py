"""Training augmentation of one composite/mask/real triple (numpy, CPU), as the reference's dataset
(src/dataset/ihd_dataset.py) offers it: horizontal flip with p=0.5, a random resized crop (scale
0.5-1, aspect 3/4-4/3, retried up to 5 times while the crop holds under 1% foreground), then a
bilinear resize to the training side and the mask binarised at 0.5."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

CROP_SCALE = (0.5, 1.0)
CROP_RATIO = (3 / 4, 4 / 3)
MIN_CROP_FG = 0.01


def crop_box(h: int, w: int, rng: np.random.Generator) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop.get_params: (top, left, height, width)."""
    area = h * w
    log_ratio = (math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1]))
    for _ in range(10):
        target = area * rng.uniform(*CROP_SCALE)
        ratio = math.exp(rng.uniform(*log_ratio))
        cw, ch = int(round(math.sqrt(target * ratio))), int(round(math.sqrt(target / ratio)))
        if 0 < cw <= w and 0 < ch <= h:
            return int(rng.integers(0, h - ch + 1)), int(rng.integers(0, w - cw + 1)), ch, cw
    # Fallback of torchvision: a centre crop at the nearest allowed ratio.
    in_ratio = w / h
    if in_ratio < CROP_RATIO[0]:
        cw, ch = w, int(round(w / CROP_RATIO[0]))
    elif in_ratio > CROP_RATIO[1]:
        ch, cw = h, int(round(h * CROP_RATIO[1]))
    else:
        cw, ch = w, h
    return (h - ch) // 2, (w - cw) // 2, ch, cw


def _resize(a: np.ndarray, side: int) -> np.ndarray:
    return np.asarray(Image.fromarray(a).resize((side, side), Image.BILINEAR))


def augment(comp: np.ndarray, mask: np.ndarray, real: np.ndarray, side: int, rng: np.random.Generator,
            flip: bool = True, crop: bool = True) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """uint8 HxWx3 composite and real, a HxW mask in {0, 1} -> the same at side x side (mask uint8 {0, 1})."""
    (comp, real), m = augment_many([comp, real], mask, side, rng, flip=flip, crop=crop)
    return comp, m, real


def augment_many(images: list[np.ndarray], mask: np.ndarray, side: int, rng: np.random.Generator,
                 flip: bool = True, crop: bool = True) -> tuple[list[np.ndarray], np.ndarray]:
    """`augment` of any number of uint8 HxWx3 images sharing one mask: one flip and one crop drawn,
    applied identically to every image and the mask (e.g. composite, real and a cached stage-1 output)."""
    m = (mask >= 0.5).astype(np.uint8) * 255
    if flip and rng.random() > 0.5:
        images, m = [a[:, ::-1] for a in images], m[:, ::-1]
    if crop:
        h, w = m.shape
        for _ in range(5):
            top, left, ch, cw = crop_box(h, w, rng)
            if (m[top : top + ch, left : left + cw] > 0).mean() >= MIN_CROP_FG:
                break
        sl = (slice(top, top + ch), slice(left, left + cw))
        images, m = [a[sl] for a in images], m[sl]
    images = [_resize(np.ascontiguousarray(a), side) for a in images]
    m = (_resize(np.ascontiguousarray(m), side) >= 128).astype(np.uint8)
    return images, m
