"""Colour fidelity of a harmonized foreground: a merchant's blue product must stay blue.

Harmonization as iHarmony4 rewards it moves the foreground's colour statistics toward the
background's: on a warm wooden table a blue box turns teal or olive. A catalog wants the light
adapted (brightness, contrast, the cast of the scene's light), not the product's own colour.

- `free`: the engine's output as it is (the iHarmony4 protocol; every parity figure).
- `lighting`: inside the mask, each pixel keeps the composite's chroma (a*, b*) and takes its
  lightness (L*) from the engine's output; the foreground's mean a*b* may move toward the
  engine's by at most `max_chroma_shift` (ΔE76 units): a faint cast of the scene's light.

A saturated colour does not exist at every lightness (no sRGB blue is as light as a pale yellow):
where the engine's lightness would put a pixel's own chroma outside the sRGB gamut, its lightness
moves toward the engine's only as far as the colour stays inside; the product's colour wins over the
scene's light. What is left out of gamut (the small mean shift itself, at an extreme lightness) is
clipped. `fidelity_metrics` measures what was delivered, clipping included, and `fidelity_ok` says
whether it stayed within the bound.
"""

from __future__ import annotations

from typing import Literal

import numpy as np

from harmony_ops.color import lab_to_linear, lab_to_rgb_uint8, rgb_to_lab
from harmony_ops.compositing import binarize_mask

Fidelity = Literal["free", "lighting"]
FIDELITY_MODES: tuple[str, ...] = ("free", "lighting")
# lighting's bound when none is given: a cast the eye reads as the scene's light, not as another colour
DEFAULT_MAX_CHROMA_SHIFT = 3.0
# Pixels with less chroma (C*ab) than this have no hue worth measuring (greys, whites, blacks).
CHROMATIC = 8.0
# fidelity_ok allows this much over the bound: 8-bit rounding of the delivered pixels.
ROUNDING_DE = 0.5


def within_bound(chroma_shift: float | None, bound: float | None) -> bool | None:
    """fidelity_ok: the shift within the bound (None without a bound or a measurement)."""
    if bound is None or chroma_shift is None or chroma_shift != chroma_shift:
        return None
    return bool(chroma_shift <= bound + ROUNDING_DE)


# Bisection steps for the lightness a pixel's chroma allows: 1/1024 of the way, far below 8-bit steps.
_GAMUT_STEPS = 10
_GAMUT_EPS = 1e-6
# Enough foreground pixels for means to well under 0.1 ΔE; more cost time and say nothing new.
_SAMPLE = 1 << 18


def keep_chroma(composite: np.ndarray, harmonized: np.ndarray, mask: np.ndarray,
                max_chroma_shift: float = DEFAULT_MAX_CHROMA_SHIFT) -> np.ndarray:
    """`lighting` fidelity: the harmonized image with its foreground's chroma put back (see the module)."""
    comp, harm = np.asarray(composite), np.asarray(harmonized)
    if comp.shape != harm.shape or comp.dtype != np.uint8 or harm.dtype != np.uint8:
        raise ValueError(f"composite {comp.shape} {comp.dtype} and harmonized {harm.shape} {harm.dtype}: same-shape uint8")
    if max_chroma_shift < 0:
        raise ValueError(f"max_chroma_shift must be >= 0, got {max_chroma_shift}")
    fg = binarize_mask(mask)
    out = harm.copy()
    if not fg.any():
        return out
    lab_c, lab_h = rgb_to_lab(comp[fg]), rgb_to_lab(harm[fg])
    shift = lab_h[:, 1:].mean(axis=0) - lab_c[:, 1:].mean(axis=0)
    norm = float(np.hypot(*shift))
    if norm > max_chroma_shift:
        shift *= max_chroma_shift / norm
    lab = np.empty_like(lab_h)
    lab[:, 0] = lab_h[:, 0]
    lab[:, 1:] = lab_c[:, 1:] + shift
    _fit_lightness(lab, lab_c[:, 0])
    out[fg] = lab_to_rgb_uint8(lab)
    return out


def _in_gamut(lab: np.ndarray) -> np.ndarray:
    linear = lab_to_linear(lab)
    return ((linear >= -_GAMUT_EPS) & (linear <= 1 + _GAMUT_EPS)).all(axis=-1)


def _fit_lightness(lab: np.ndarray, own_l: np.ndarray) -> None:
    """In place: move the lightness of out-of-gamut pixels back toward their own (`own_l`) only as far as
    needed for their chroma to fit; each keeps the largest step toward the engine's lightness that fits."""
    out = ~_in_gamut(lab)
    if not out.any():
        return
    target, own, ab = lab[out, 0].copy(), own_l[out], lab[out, 1:]
    lo, hi = np.zeros(len(target)), np.ones(len(target))  # fraction of the way from own to target
    for _ in range(_GAMUT_STEPS):
        mid = (lo + hi) / 2
        fits = _in_gamut(np.column_stack([own + mid * (target - own), ab]))
        lo, hi = np.where(fits, mid, lo), np.where(fits, hi, mid)
    lab[out, 0] = own + lo * (target - own)


def apply_fidelity(composite: np.ndarray, harmonized: np.ndarray, mask: np.ndarray, mode: Fidelity = "free",
                   max_chroma_shift: float | None = None) -> np.ndarray:
    """The delivered image under a fidelity mode; `free` returns `harmonized` itself, untouched."""
    if mode == "free":
        return harmonized
    if mode != "lighting":
        raise ValueError(f"fidelity {mode!r}: choose from {FIDELITY_MODES}")
    return keep_chroma(composite, harmonized, mask,
                       DEFAULT_MAX_CHROMA_SHIFT if max_chroma_shift is None else max_chroma_shift)


def _fg_lab(img: np.ndarray, fg: np.ndarray, stride: int) -> np.ndarray:
    return rgb_to_lab(np.ascontiguousarray(img[::stride, ::stride][fg[::stride, ::stride]]))


def _mean_hue(lab: np.ndarray) -> float | None:
    """Circular mean hue (degrees) of the chromatic pixels, or None when there are none."""
    a, b = lab[:, 1], lab[:, 2]
    chromatic = np.hypot(a, b) >= CHROMATIC
    if not chromatic.any():
        return None
    return float(np.degrees(np.arctan2(b[chromatic].sum(), a[chromatic].sum())))


def fidelity_metrics(composite: np.ndarray, output: np.ndarray, mask: np.ndarray,
                     max_chroma_shift: float | None = None) -> dict[str, float | bool | None]:
    """How far the delivered foreground moved from the product's colour.

    fg_chroma_shift: ΔE76 between the foreground's mean a*b* before and after; fg_hue_shift: the
    angle (degrees, 0-180) between the mean hues of its chromatic pixels (C*ab >= 8) before and
    after, None without such pixels; fg_lightness_shift: mean L* after minus before; fidelity_ok:
    fg_chroma_shift <= max_chroma_shift (with 0.5 ΔE for 8-bit rounding), None without a bound.
    All None for an empty foreground. Large foregrounds are measured on a regular grid of pixels.
    """
    comp, out = np.asarray(composite), np.asarray(output)
    fg = binarize_mask(mask)
    n = int(fg.sum())
    if n == 0:
        return {"fg_chroma_shift": None, "fg_hue_shift": None, "fg_lightness_shift": None, "fidelity_ok": None}
    stride = max(1, int(np.ceil(np.sqrt(n / _SAMPLE))))
    before, after = _fg_lab(comp, fg, stride), _fg_lab(out, fg, stride)
    if not len(before):  # a thin foreground the grid missed: measure every pixel
        before, after = _fg_lab(comp, fg, 1), _fg_lab(out, fg, 1)
    chroma = float(np.hypot(*(after[:, 1:].mean(axis=0) - before[:, 1:].mean(axis=0))))
    h0, h1 = _mean_hue(before), _mean_hue(after)
    hue = None if h0 is None or h1 is None else float(abs((h1 - h0 + 180.0) % 360.0 - 180.0))
    return {
        "fg_chroma_shift": chroma,
        "fg_hue_shift": hue,
        "fg_lightness_shift": float(after[:, 0].mean() - before[:, 0].mean()),
        "fidelity_ok": within_bound(chroma, max_chroma_shift),
    }
