"""harmony_ops.baseline: Lab statistics transfer from a background ring."""

from __future__ import annotations

import numpy as np
import pytest

from harmony_ops.baseline import default_ring_width, harmonize_baseline, ring_mask


def _scene(seed: int, h: int = 120, w: int = 160) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(truth, composite, mask): a uniform noisy scene whose foreground got a colour cast."""
    rng = np.random.default_rng(seed)
    truth = np.clip(np.array([110, 150, 90]) + rng.normal(0, 10, (h, w, 3)), 0, 255).astype(np.uint8)
    mask = np.zeros((h, w), dtype=bool)
    mask[30:85, 40:100] = True
    comp = truth.copy()
    comp[mask] = np.clip(truth[mask] * np.array([1.35, 0.8, 1.2]) + 10, 0, 255).astype(np.uint8)
    return truth, comp, mask


def _fmse(a: np.ndarray, b: np.ndarray, mask: np.ndarray) -> float:
    return float(np.mean((a[mask].astype(np.float64) - b[mask]) ** 2))


def test_ring_mask_band() -> None:
    mask = np.zeros((50, 60), dtype=bool)
    mask[20:30, 25:35] = True
    ring = ring_mask(mask, width=3)
    assert not (ring & mask).any()
    expected = np.zeros_like(mask)
    expected[17:33, 22:38] = True
    expected &= ~mask
    np.testing.assert_array_equal(ring, expected)


def test_ring_mask_default_width_and_fallback() -> None:
    assert default_ring_width(0) == 8
    assert default_ring_width(100) == 8
    assert default_ring_width(400 * 400) == 40
    mask = np.zeros((200, 200), dtype=bool)
    mask[50:150, 50:150] = True  # 10000 px -> width max(8, 10) = 10
    np.testing.assert_array_equal(ring_mask(mask), ring_mask(mask, width=10))

    # The ring would be empty with width 0: fall back to the whole background.
    np.testing.assert_array_equal(ring_mask(mask, width=0), ~mask)
    # No foreground: nothing to surround, so again the whole background.
    empty = np.zeros((10, 10), dtype=bool)
    np.testing.assert_array_equal(ring_mask(empty), ~empty)


def test_ring_mask_accepts_float_masks() -> None:
    mask = np.zeros((40, 40))
    mask[10:20, 10:20] = 0.6
    mask[20:30, 20:30] = 0.4  # below 0.5: background
    ring = ring_mask(mask, width=2)
    assert ring[9, 9] and ring[21, 21] and not ring[15, 15]


def test_background_is_bit_identical() -> None:
    _, comp, mask = _scene(0)
    soft = mask.astype(np.float32) * 0.9  # still foreground after binarising at 0.5
    for m in (mask, soft):
        out = harmonize_baseline(comp, m)
        assert out.dtype == np.uint8 and out.shape == comp.shape
        np.testing.assert_array_equal(out[~mask], comp[~mask])
        assert not np.array_equal(out[mask], comp[mask])


def test_baseline_moves_foreground_towards_truth() -> None:
    truth, comp, mask = _scene(1)
    before = _fmse(comp, truth, mask)
    out = harmonize_baseline(comp, mask)
    after = _fmse(out, truth, mask)
    assert after < 0.1 * before
    half = _fmse(harmonize_baseline(comp, mask, strength=0.5), truth, mask)
    assert after < half < before


def test_strength_zero_and_degenerate_masks_return_composite() -> None:
    _, comp, mask = _scene(2)
    h, w = mask.shape
    for m, strength in (
        (mask, 0.0),
        (np.zeros((h, w), dtype=bool), 1.0),
        (np.ones((h, w), dtype=bool), 1.0),
        (np.full((h, w), 0.3), 1.0),  # all below 0.5: empty
    ):
        out = harmonize_baseline(comp, m, strength=strength)
        np.testing.assert_array_equal(out, comp)
        assert out is not comp


def test_deterministic_and_input_untouched() -> None:
    _, comp, mask = _scene(3)
    original = comp.copy()
    a = harmonize_baseline(comp, mask, ring_width=12)
    b = harmonize_baseline(comp, mask, ring_width=12)
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(comp, original)


def test_std_ratio_is_bounded() -> None:
    """A flat ring must not flatten a textured object completely."""
    rng = np.random.default_rng(4)
    comp = np.full((80, 80, 3), 128, dtype=np.uint8)
    mask = np.zeros((80, 80), dtype=bool)
    mask[20:60, 20:60] = True
    comp[mask] = rng.integers(60, 200, size=(int(mask.sum()), 3), dtype=np.uint8)
    out = harmonize_baseline(comp, mask)
    assert out[mask].astype(np.float64).std(axis=0).min() > 0.3 * comp[mask].std(axis=0).min()


def test_rejects_bad_input() -> None:
    _, comp, mask = _scene(5)
    with pytest.raises(ValueError):
        harmonize_baseline(comp, mask, strength=1.5)
    with pytest.raises(ValueError):
        harmonize_baseline(comp, mask[:-1])
    with pytest.raises(ValueError):
        harmonize_baseline(comp.astype(np.float32), mask)


def test_large_image_converts_only_the_object_and_its_ring(monkeypatch) -> None:
    """The colour conversions (the costly part) see the foreground and the ring, not the frame;
    the ring is one dilation (whose cost does not depend on its width: test_compositing)."""
    from harmony_ops import baseline

    rng = np.random.default_rng(6)
    comp = rng.integers(0, 256, size=(2000, 2000, 3), dtype=np.uint8)
    mask = np.zeros((2000, 2000), dtype=bool)
    mask[600:1100, 700:1300] = True
    ring = ring_mask(mask)
    converted = {"to_lab": [], "to_rgb": [], "dilate": []}

    def spy(name, real):
        def wrapped(arr, *a, **k):
            converted[name].append(np.asarray(arr).size // (1 if name == "dilate" else 3))
            return real(arr, *a, **k)

        return wrapped

    monkeypatch.setattr(baseline, "rgb_to_lab", spy("to_lab", baseline.rgb_to_lab))
    monkeypatch.setattr(baseline, "lab_to_rgb_uint8", spy("to_rgb", baseline.lab_to_rgb_uint8))
    monkeypatch.setattr(baseline, "dilate", spy("dilate", baseline.dilate))
    out = harmonize_baseline(comp, mask)
    assert sorted(converted["to_lab"]) == sorted([int(mask.sum()), int(ring.sum())])
    assert converted["to_rgb"] == [int(mask.sum())]
    assert converted["dilate"] == [mask.size]  # one dilation for the ring
    assert sum(converted["to_lab"]) + sum(converted["to_rgb"]) < 0.25 * mask.size  # a fraction of the frame
    assert np.array_equal(out[~mask], comp[~mask]) and not np.array_equal(out[mask], comp[mask])
