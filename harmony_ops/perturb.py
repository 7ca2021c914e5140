"""Synthetic inharmony: appearance changes of a real image's foreground.

The composite keeps the real image's background bit for bit; the real image is the ground truth a
harmonizer should recover. Two families:

- `lab_shift`: the quick test/demo composites (a random Lab shift of an elliptical foreground);
- the iHarmony4 recipes used by `harmony synthesize` (below `KINDS`): colour transfer of another
  image's foreground statistics (HCOCO), retouching with tone curves, exposure, gamma, white balance
  and saturation (HAdobe5k), and day-to-night illumination (Hday2night). Random foreground shapes for
  images without masks are in `harmony_ops.masks`.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass

import numpy as np

from .color import lab_to_rgb, linear_to_srgb, rgb_to_lab, srgb_to_linear
from schemas.vocabulary import ErrorKind


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


# ---------------------------------------------------------------------------------------------
# Training-data synthesis (`harmony synthesize`): the iHarmony4 recipes on a real image's foreground.
#
# Every perturbation maps (real image, mask, strength, random draws) to a composite whose background
# is the real image's bit for bit, and returns the parameters it used. Strength scales every change
# from the identity (0) to the kind's full range (1), as each kind's docstring says; values above 1
# exaggerate (contrast stays within [-1, 1] and saturation at or above 0).
# ---------------------------------------------------------------------------------------------

KINDS = ("colour_transfer", "tone", "day_night")
DEFAULT_KIND_WEIGHTS = {"colour_transfer": 0.5, "tone": 0.3, "day_night": 0.2}
# Colour transfer: per-channel ratio of target to source Lab standard deviation is clipped to this
# range, so a flat foreground (or a flat donor) does not turn into noise (or into a single colour).
STD_RATIO_LIMITS = (0.25, 4.0)
# Rec. 709 luminance weights of linear RGB: white balance gains are normalised so that a neutral
# grey keeps its luminance (white balance changes colour, exposure changes brightness).
_LUMA = np.array([0.2126, 0.7152, 0.0722])
# The retouching operations, in the order they are applied; their neutral values.
TONE_NEUTRAL = {"temperature": 0.0, "tint": 0.0, "exposure_ev": 0.0, "contrast": 0.0, "gamma": 1.0, "saturation": 1.0}


def rng_for(seed: int, *keys) -> np.random.Generator:
    """A generator that depends only on the job seed and the keys (row id, sample, draw, purpose):
    never on batching, worker or call order. 128 bits of blake2b feed numpy's SeedSequence."""
    text = ":".join(str(k) for k in (seed, *keys))
    return np.random.default_rng(int.from_bytes(hashlib.blake2b(text.encode(), digest_size=16).digest(), "little"))


@dataclass(frozen=True)
class LabStats:
    """Per-channel mean and population standard deviation of a foreground in CIE L*a*b*."""

    mean: np.ndarray  # (3,)
    std: np.ndarray  # (3,)

    def as_dict(self) -> dict:
        return {"mean": [float(v) for v in self.mean], "std": [float(v) for v in self.std]}


def fg_lab_stats(image: np.ndarray, mask: np.ndarray) -> LabStats:
    fg = np.asarray(mask) >= 0.5
    if not fg.any():
        raise ValueError("mask has no foreground pixel")
    lab = rgb_to_lab(np.asarray(image)[fg])
    return LabStats(mean=lab.mean(axis=0), std=lab.std(axis=0))


def _to_uint8(rgb01: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(rgb01 * 255.0), 0, 255).astype(np.uint8)


def _paste_fg(real: np.ndarray, mask: np.ndarray, fg_pixels: np.ndarray) -> np.ndarray:
    """The real image with its foreground pixels replaced (the background is a plain copy)."""
    comp = np.array(real, dtype=np.uint8, copy=True)
    comp[np.asarray(mask) >= 0.5] = fg_pixels
    return comp


# --- colour transfer (HCOCO) ------------------------------------------------------------------


def colour_transfer(
    real: np.ndarray, mask: np.ndarray, donor: LabStats, strength: float = 1.0, donor_id: str | None = None
) -> tuple[np.ndarray, dict]:
    """Reinhard-style Lab statistics transfer, as iHarmony4's HCOCO subset was made: the foreground's
    Lab mean and standard deviation are replaced by those of another image's foreground (`donor`).

    With strength s the target mean is mu + s (mu_donor - mu) and the std ratio
    clip(sigma_donor / sigma, 0.25, 4) ** s per channel: s = 1 is the full transfer, s = 0 the identity.
    """
    source = fg_lab_stats(real, mask)
    ratio = np.clip(donor.std / np.maximum(source.std, 1e-6), *STD_RATIO_LIMITS) ** strength
    target_mean = source.mean + strength * (donor.mean - source.mean)
    params = {
        "donor_id": donor_id,
        "donor_mean": [float(v) for v in donor.mean],
        "donor_std": [float(v) for v in donor.std],
        "source_mean": [float(v) for v in source.mean],
        "source_std": [float(v) for v in source.std],
        "std_ratio": [float(v) for v in ratio],
    }
    if strength == 0:
        return np.array(real, dtype=np.uint8, copy=True), params
    fg = np.asarray(mask) >= 0.5
    lab = (rgb_to_lab(np.asarray(real)[fg]) - source.mean) * ratio + target_mean
    return _paste_fg(real, mask, _to_uint8(lab_to_rgb(lab))), params


# --- retouching operations (HAdobe5k spirit) ---------------------------------------------------
# Each takes sRGB values in [0, 1] (any leading shape, trailing axis 3) and is the identity at its
# neutral value (returned unchanged, so strength 0 is bit-exact).


def white_balance(rgb01: np.ndarray, temperature: float, tint: float = 0.0) -> np.ndarray:
    """Gains on linear RGB: temperature > 0 warms (red up, blue down by 2**(t/2) each), tint > 0 turns
    magenta (green down by 2**(tint/2)); normalised so a neutral grey keeps its luminance."""
    if temperature == 0 and tint == 0:
        return rgb01
    gains = np.exp2(np.array([temperature / 2, -tint / 2, -temperature / 2]))
    gains = gains / float(_LUMA @ gains)
    return np.clip(linear_to_srgb(srgb_to_linear(rgb01) * gains), 0.0, 1.0)


def exposure(rgb01: np.ndarray, ev: float) -> np.ndarray:
    """Multiply linear light by 2**ev (stops); highlights clip."""
    if ev == 0:
        return rgb01
    return np.clip(linear_to_srgb(srgb_to_linear(rgb01) * 2.0**ev), 0.0, 1.0)


def contrast_curve(rgb01: np.ndarray, amount: float) -> np.ndarray:
    """A monotone tone curve through 0, 1/2 and 1 on the encoded values: amount > 0 blends towards
    smoothstep (an S-curve, more contrast), amount < 0 towards its inverse (flatter); |amount| <= 1."""
    if amount == 0:
        return rgb01
    x = np.clip(rgb01, 0.0, 1.0)
    a = min(abs(amount), 1.0)
    if amount > 0:
        curve = x * x * (3 - 2 * x)
    else:
        curve = 0.5 - np.sin(np.arcsin(np.clip(1 - 2 * x, -1, 1)) / 3)
    return (1 - a) * x + a * curve


def gamma_curve(rgb01: np.ndarray, gamma: float) -> np.ndarray:
    """x ** gamma on the encoded values: gamma > 1 darkens the mid-tones, < 1 brightens; 0 and 1 stay."""
    if gamma == 1:
        return rgb01
    return np.power(np.clip(rgb01, 0.0, 1.0), gamma)


def saturation(rgb01: np.ndarray, factor: float) -> np.ndarray:
    """Scale Lab chroma (a*, b*) by `factor`; lightness is kept (up to gamut clipping)."""
    if factor == 1:
        return rgb01
    lab = rgb_to_lab(rgb01)
    lab[..., 1:] *= factor
    return lab_to_rgb(lab)


def apply_tone(rgb01: np.ndarray, params: dict) -> np.ndarray:
    """The retouching operations in a fixed order: white balance and exposure in linear light, then
    the contrast curve, gamma and saturation. Missing keys are neutral."""
    p = {**TONE_NEUTRAL, **{k: v for k, v in params.items() if k in TONE_NEUTRAL}}
    x = white_balance(rgb01, p["temperature"], p["tint"])
    x = exposure(x, p["exposure_ev"])
    x = contrast_curve(x, p["contrast"])
    x = gamma_curve(x, p["gamma"])
    return saturation(x, p["saturation"])


def retouch(real: np.ndarray, mask: np.ndarray, params: dict) -> np.ndarray:
    """The real image with `apply_tone(params)` applied to its foreground only."""
    if all(params.get(k, v) == v for k, v in TONE_NEUTRAL.items()):
        return np.array(real, dtype=np.uint8, copy=True)
    fg = np.asarray(mask) >= 0.5
    return _paste_fg(real, mask, _to_uint8(apply_tone(np.asarray(real)[fg].astype(np.float64) / 255.0, params)))


def draw_tone_params(rng: np.random.Generator, strength: float) -> dict:
    """A different retouch of the foreground: exposure +-1 EV, gamma x/÷ e**0.4, contrast +-0.6,
    temperature +-0.8, tint +-0.4, saturation x/÷ e**0.5, each scaled by strength."""
    return {
        "exposure_ev": float(rng.uniform(-1.0, 1.0) * strength),
        "gamma": float(math.exp(rng.uniform(-0.4, 0.4) * strength)),
        "contrast": float(np.clip(rng.uniform(-0.6, 0.6) * strength, -1.0, 1.0)),
        "temperature": float(rng.uniform(-0.8, 0.8) * strength),
        "tint": float(rng.uniform(-0.4, 0.4) * strength),
        "saturation": float(math.exp(rng.uniform(-0.5, 0.5) * strength)),
    }


def draw_day_night_params(rng: np.random.Generator, strength: float) -> dict:
    """Day-to-night illumination (Hday2night spirit): a strong exposure drop (1 to 2.5 EV), a
    colour-temperature shift of 0.4 to 1.0 (cool moonlight/blue hour with probability 3/4, else
    warm artificial light), desaturation (x 0.5 to 0.85) and flatter contrast; scaled by strength."""
    sign = -1.0 if rng.uniform() < 0.75 else 1.0
    return {
        "exposure_ev": float(-rng.uniform(1.0, 2.5) * strength),
        "temperature": float(sign * rng.uniform(0.4, 1.0) * strength),
        "tint": 0.0,
        "saturation": float(max(0.0, 1.0 - rng.uniform(0.15, 0.5) * strength)),
        "contrast": float(max(-1.0, -rng.uniform(0.0, 0.3) * strength)),
        "gamma": 1.0,
    }


def tone(real: np.ndarray, mask: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> tuple[np.ndarray, dict]:
    params = draw_tone_params(rng, strength)
    return retouch(real, mask, params), params


def day_night(real: np.ndarray, mask: np.ndarray, rng: np.random.Generator, strength: float = 1.0) -> tuple[np.ndarray, dict]:
    params = draw_day_night_params(rng, strength)
    return retouch(real, mask, params), params


# --- donors, the mix, the filter ---------------------------------------------------------------


@dataclass(frozen=True)
class DonorPool:
    """Lab statistics of other images' foregrounds, for colour transfer. Fixed for a whole job, so a
    donor choice depends only on the draw's random generator, never on what a worker saw before."""

    ids: tuple[str, ...]
    mean: np.ndarray  # (n, 3)
    std: np.ndarray  # (n, 3)

    def __len__(self) -> int:
        return len(self.ids)

    def pick(self, rng: np.random.Generator, exclude: str | None = None) -> tuple[str, LabStats] | None:
        """A uniformly drawn donor other than `exclude` (the row itself); None when there is none."""
        candidates = [i for i, d in enumerate(self.ids) if d != exclude]
        if not candidates:
            return None
        i = candidates[int(rng.integers(len(candidates)))]
        return self.ids[i], LabStats(mean=np.asarray(self.mean[i]), std=np.asarray(self.std[i]))


def normalise_weights(weights: dict[str, float]) -> dict[str, float]:
    unknown = sorted(set(weights) - set(KINDS))
    if unknown:
        raise ValueError(f"unknown perturbation kind(s) {unknown}; choose from {list(KINDS)}")
    if any(not (w >= 0) for w in weights.values()):
        raise ValueError("perturbation weights must be >= 0")
    total = float(sum(weights.values()))
    if total <= 0:
        raise ValueError("at least one perturbation kind needs a positive weight")
    return {k: float(weights.get(k, 0.0)) / total for k in KINDS}


def draw_kind(rng: np.random.Generator, weights: dict[str, float]) -> str:
    """One of KINDS with the given probabilities (canonical order, so dict order never matters)."""
    p = normalise_weights(weights)
    return KINDS[int(rng.choice(len(KINDS), p=[p[k] for k in KINDS]))]


def perturb(
    kind: str,
    real: np.ndarray,
    mask: np.ndarray,
    rng: np.random.Generator,
    strength: float,
    donors: DonorPool | None = None,
    self_id: str | None = None,
) -> tuple[np.ndarray, dict]:
    """Apply one kind; raises LookupError for colour transfer without a donor other than the row itself."""
    if kind == "colour_transfer":
        picked = donors.pick(rng, exclude=self_id) if donors is not None else None
        if picked is None:
            raise LookupError("no donor foreground other than this image's own")
        donor_id, stats = picked
        return colour_transfer(real, mask, stats, strength, donor_id)
    if kind == "tone":
        return tone(real, mask, rng, strength)
    if kind == "day_night":
        return day_night(real, mask, rng, strength)
    raise ValueError(f"unknown perturbation kind {kind!r}; choose from {list(KINDS)}")


def filter_reason(fmse: float, fmse_range: tuple[float, float]) -> str | None:
    """None when the composite is inharmonious enough to keep: lo <= fMSE <= hi; else the reason."""
    lo, hi = fmse_range
    if fmse is None or not math.isfinite(fmse):
        return ErrorKind.FMSE_UNDEFINED
    if fmse < lo:
        return ErrorKind.FMSE_BELOW_RANGE
    if fmse > hi:
        return ErrorKind.FMSE_ABOVE_RANGE
    return None
