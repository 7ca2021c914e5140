"""The synthesis perturbations: background untouched, foreground changed the way each one says,
parameters recorded, deterministic given a seed, identity at strength 0; the mix and the filter."""

from __future__ import annotations

import math

import numpy as np
import pytest

from harmony_ops import perturb as P
from harmony_ops.color import linear_to_srgb, rgb_to_lab, srgb_to_linear


def make_real(seed: int = 0, h: int = 48, w: int = 64, base=(150, 110, 80)) -> np.ndarray:
    """A textured colour image: gradients plus noise around `base`, well inside the gamut."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w]
    img = np.array(base, float) + np.stack([xx - w / 2, yy - h / 2, (xx + yy) / 4 - 14], -1) * 0.8
    return np.clip(img + rng.normal(0, 8, (h, w, 3)), 0, 255).astype(np.uint8)


def make_mask(h: int = 48, w: int = 64) -> np.ndarray:
    m = np.zeros((h, w), np.float32)
    m[10:38, 14:50] = 1.0
    return m


REAL, MASK = make_real(), make_mask()
FG, BG = MASK >= 0.5, MASK < 0.5
DONOR = P.fg_lab_stats(make_real(5, base=(60, 120, 190)), MASK)
POOL = P.DonorPool(("donor",), DONOR.mean[None], DONOR.std[None])


def fg_lab(img: np.ndarray) -> np.ndarray:
    return rgb_to_lab(img[FG])


def run(kind: str, strength: float, seed: int = 0, draw: int = 0):
    return P.perturb(kind, REAL, MASK, P.rng_for(seed, "row", 1, draw), strength, POOL, "row")


# --- every kind --------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", P.KINDS)
@pytest.mark.parametrize("strength", [0.3, 1.0, 2.0])
def test_background_is_bit_identical_and_foreground_changes(kind, strength):
    comp, params = run(kind, strength)
    assert comp.dtype == np.uint8 and comp.shape == REAL.shape
    assert np.array_equal(comp[BG], REAL[BG])
    assert np.abs(comp[FG].astype(int) - REAL[FG]).mean() > 2
    assert params  # recorded


@pytest.mark.parametrize("kind", P.KINDS)
def test_strength_zero_is_the_identity(kind):
    comp, _ = run(kind, 0.0)
    assert np.array_equal(comp, REAL)


@pytest.mark.parametrize("kind", P.KINDS)
def test_deterministic_given_the_seed_and_keys(kind):
    a, pa = run(kind, 0.8, seed=3)
    b, pb = run(kind, 0.8, seed=3)
    assert np.array_equal(a, b) and pa == pb
    if kind != "colour_transfer":  # one donor only: colour transfer differs by donor, not by draw
        c, pc = run(kind, 0.8, seed=3, draw=1)
        assert pc != pa and not np.array_equal(a, c)


def test_rng_for_depends_only_on_seed_and_keys():
    draw = lambda *k: P.rng_for(*k).integers(1 << 62, size=4).tolist()  # noqa: E731
    assert draw(0, "a", 1, 0) == draw(0, "a", 1, 0)
    assert len({tuple(draw(*k)) for k in [(0, "a", 1, 0), (1, "a", 1, 0), (0, "b", 1, 0), (0, "a", 2, 0),
                                          (0, "a", 1, 1), (0, "a", 1, "mask")]}) == 6


# --- colour transfer (HCOCO) -------------------------------------------------------------------


def test_colour_transfer_moves_the_foreground_lab_statistics_to_the_donors():
    comp, params = P.colour_transfer(REAL, MASK, DONOR, 1.0, donor_id="donor")
    lab = fg_lab(comp)
    source = P.fg_lab_stats(REAL, MASK)
    assert np.abs(lab.mean(0) - DONOR.mean).max() < 1.5  # rounding and gamut only
    assert np.abs(source.mean - DONOR.mean).max() > 20  # a real move
    ratio = np.clip(DONOR.std / source.std, *P.STD_RATIO_LIMITS)
    np.testing.assert_allclose(lab.std(0), source.std * ratio, rtol=0.15, atol=0.6)
    assert params["donor_id"] == "donor"
    np.testing.assert_allclose(params["donor_mean"], DONOR.mean)
    np.testing.assert_allclose(params["source_mean"], source.mean)
    np.testing.assert_allclose(params["std_ratio"], ratio)
    assert np.array_equal(comp[BG], REAL[BG])


def test_colour_transfer_strength_interpolates_the_mean():
    source = P.fg_lab_stats(REAL, MASK)
    half, _ = P.colour_transfer(REAL, MASK, DONOR, 0.5)
    np.testing.assert_allclose(fg_lab(half).mean(0), source.mean + 0.5 * (DONOR.mean - source.mean), atol=1.5)


def test_colour_transfer_of_a_flat_foreground_is_bounded():
    flat = np.full_like(REAL, 120)
    comp, params = P.colour_transfer(flat, MASK, DONOR, 1.0)
    assert max(params["std_ratio"]) <= P.STD_RATIO_LIMITS[1]
    assert np.abs(fg_lab(comp).mean(0) - DONOR.mean).max() < 1.5


def test_donor_pool_never_picks_the_row_itself():
    pool = P.DonorPool(("a", "b"), np.zeros((2, 3)), np.ones((2, 3)))
    picks = {pool.pick(P.rng_for(0, i), exclude="a")[0] for i in range(20)}
    assert picks == {"b"}
    assert P.DonorPool(("a",), np.zeros((1, 3)), np.ones((1, 3))).pick(P.rng_for(0), exclude="a") is None
    with pytest.raises(LookupError):
        P.perturb("colour_transfer", REAL, MASK, P.rng_for(0), 1.0, P.DonorPool(("row",), DONOR.mean[None], DONOR.std[None]), "row")
    with pytest.raises(LookupError):
        P.perturb("colour_transfer", REAL, MASK, P.rng_for(0), 1.0, None, "row")


# --- retouching (HAdobe5k) and its operations ---------------------------------------------------

X = np.random.default_rng(1).uniform(0.05, 0.95, (500, 3))  # sRGB values in [0, 1]


def luminance(rgb01: np.ndarray) -> np.ndarray:
    return srgb_to_linear(rgb01) @ np.array([0.2126, 0.7152, 0.0722])


def test_exposure_scales_linear_light_by_two_to_the_ev():
    up, down = P.exposure(X, 1.0), P.exposure(X, -1.0)
    np.testing.assert_allclose(srgb_to_linear(down), srgb_to_linear(X) / 2, atol=1e-9)
    assert (rgb_to_lab(up)[:, 0] >= rgb_to_lab(X)[:, 0] - 1e-9).all() and (up <= 1).all()
    assert rgb_to_lab(down)[:, 0].mean() < rgb_to_lab(X)[:, 0].mean() - 10


def test_gamma_darkens_or_brightens_the_midtones_and_keeps_the_ends():
    assert (P.gamma_curve(X, 1.5) < X).all() and (P.gamma_curve(X, 0.7) > X).all()
    ends = np.array([[0.0, 1.0, 0.0]])
    np.testing.assert_array_equal(P.gamma_curve(ends, 2.0), ends)


def test_contrast_curve_is_monotone_through_fixed_points_and_changes_the_spread():
    x = np.linspace(0, 1, 101)[:, None].repeat(3, 1)
    for amount in (-1.0, -0.4, 0.4, 1.0):
        y = P.contrast_curve(x, amount)
        assert (np.diff(y[:, 0]) >= -1e-12).all()
        np.testing.assert_allclose(y[[0, 50, 100], 0], [0, 0.5, 1], atol=1e-9)
    assert P.contrast_curve(X, 0.6).std() > X.std() > P.contrast_curve(X, -0.6).std()


def test_white_balance_warms_or_tints_and_keeps_grey_luminance():
    lab, warm, magenta = rgb_to_lab(X), rgb_to_lab(P.white_balance(X, 0.6)), rgb_to_lab(P.white_balance(X, 0.0, 0.4))
    assert warm[:, 2].mean() > lab[:, 2].mean() + 5  # b*: towards yellow
    cool = P.white_balance(X, -0.6)
    assert (cool[:, 2] - cool[:, 0]).mean() > (X[:, 2] - X[:, 0]).mean()  # blue over red
    assert magenta[:, 1].mean() > lab[:, 1].mean() + 3  # a*: towards magenta
    grey = np.full((1, 3), 0.4)
    np.testing.assert_allclose(luminance(P.white_balance(grey, 0.5, 0.2)), luminance(grey), rtol=1e-9)


def test_saturation_scales_chroma_and_keeps_lightness():
    lab = rgb_to_lab(X)
    chroma = lambda v: np.hypot(v[:, 1], v[:, 2]).mean()  # noqa: E731
    low, high = rgb_to_lab(P.saturation(X, 0.5)), rgb_to_lab(P.saturation(X, 1.3))
    assert chroma(low) == pytest.approx(0.5 * chroma(lab), rel=0.05)
    assert chroma(high) > chroma(lab)
    assert np.abs(low[:, 0] - lab[:, 0]).mean() < 1.0


def test_neutral_operations_return_their_input():
    for op, neutral in ((P.exposure, 0.0), (P.gamma_curve, 1.0), (P.contrast_curve, 0.0), (P.saturation, 1.0)):
        assert op(X, neutral) is X
    assert P.white_balance(X, 0.0, 0.0) is X
    assert P.apply_tone(X, {}) is X


def test_tone_records_its_parameters_and_applies_them_to_the_foreground():
    comp, params = P.tone(REAL, MASK, P.rng_for(0, "t"), 1.0)
    assert set(params) == set(P.TONE_NEUTRAL)
    assert abs(params["exposure_ev"]) <= 1 and math.exp(-0.4) <= params["gamma"] <= math.exp(0.4)
    assert np.array_equal(comp, P.retouch(REAL, MASK, params))  # the record reproduces the composite
    expected = np.clip(np.rint(P.apply_tone(REAL[FG] / 255.0, params) * 255), 0, 255).astype(np.uint8)
    assert np.array_equal(comp[FG], expected)
    assert P.draw_tone_params(P.rng_for(0, "t"), 0.0) == P.TONE_NEUTRAL


def test_tone_parameters_scale_with_strength():
    full = P.draw_tone_params(P.rng_for(0, "s"), 1.0)
    half = P.draw_tone_params(P.rng_for(0, "s"), 0.5)
    assert half["exposure_ev"] == pytest.approx(full["exposure_ev"] / 2)
    assert math.log(half["gamma"]) == pytest.approx(math.log(full["gamma"]) / 2)


# --- day to night (Hday2night) -------------------------------------------------------------------


@pytest.mark.parametrize("seed", range(6))
def test_day_night_darkens_and_shifts_colour_temperature(seed):
    comp, params = P.day_night(REAL, MASK, P.rng_for(seed, "dn"), 1.0)
    assert fg_lab(comp)[:, 0].mean() < fg_lab(REAL)[:, 0].mean() - 12
    assert -2.5 <= params["exposure_ev"] <= -1.0
    assert 0.4 <= abs(params["temperature"]) <= 1.0 and params["saturation"] < 1
    assert np.array_equal(comp[BG], REAL[BG])


def test_day_night_is_mostly_cool():
    temps = [P.draw_day_night_params(P.rng_for(s, "dn"), 1.0)["temperature"] for s in range(200)]
    assert 0.6 < np.mean(np.array(temps) < 0) < 0.9


# --- the mix and the filter ----------------------------------------------------------------------


def test_draw_kind_follows_the_weights_in_canonical_order():
    assert {P.draw_kind(P.rng_for(s), {"tone": 1.0}) for s in range(30)} == {"tone"}
    a = [P.draw_kind(P.rng_for(s), {"tone": 1, "day_night": 1}) for s in range(50)]
    b = [P.draw_kind(P.rng_for(s), {"day_night": 1, "tone": 1}) for s in range(50)]
    assert a == b and set(a) == {"tone", "day_night"}
    counts = {k: 0 for k in P.KINDS}
    for s in range(2000):
        counts[P.draw_kind(P.rng_for(s), P.DEFAULT_KIND_WEIGHTS)] += 1
    for k, w in P.DEFAULT_KIND_WEIGHTS.items():
        assert abs(counts[k] / 2000 - w) < 0.05


@pytest.mark.parametrize("weights", [{"paint": 1.0}, {"tone": 0.0}, {"tone": -1.0}])
def test_bad_weights_are_refused(weights):
    with pytest.raises(ValueError):
        P.normalise_weights(weights)


def test_filter_keeps_only_the_configured_fmse_range():
    assert P.filter_reason(100.0, (100, 5000)) is None and P.filter_reason(5000.0, (100, 5000)) is None
    assert P.filter_reason(99.9, (100, 5000)) == "fmse_below_range"
    assert P.filter_reason(0.0, (100, 5000)) == "fmse_below_range"
    assert P.filter_reason(5000.1, (100, 5000)) == "fmse_above_range"
    assert P.filter_reason(float("nan"), (100, 5000)) == "fmse_undefined"


def test_linear_helpers_round_trip():
    np.testing.assert_allclose(linear_to_srgb(srgb_to_linear(X)), X, atol=1e-12)
