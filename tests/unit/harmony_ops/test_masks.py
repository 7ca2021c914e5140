"""Random foreground masks: ratio within the requested range, inside the image, deterministic."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import ndimage

from harmony_ops.masks import MASK_SOURCES, MAX_FG_RATIO, blob, box, ellipse, random_mask
from harmony_ops.perturb import rng_for

SIZES = [(48, 64), (120, 40), (17, 23), (200, 200)]
RANGES = [(0.05, 0.4), (0.01, 0.05), (0.5, MAX_FG_RATIO), (0.2, 0.2)]


def in_range(mask: np.ndarray, lo: float, hi: float) -> bool:
    n, total = int(mask.sum()), mask.size
    # The pixel count is the rounded target, within [ceil(lo N), floor(hi N)] when that holds an integer.
    return math.ceil(lo * total - 1e-9) <= n <= math.floor(hi * total + 1e-9) or abs(n / total - lo) <= 1 / total


@pytest.mark.parametrize("source", MASK_SOURCES)
@pytest.mark.parametrize("size", SIZES)
@pytest.mark.parametrize("fg_ratio", RANGES)
def test_ratio_in_range_and_inside_the_image(source, size, fg_ratio):
    h, w = size
    for seed in range(8):
        mask, params = random_mask(source, h, w, rng_for(seed, source, h, w), fg_ratio)
        assert mask.shape == (h, w) and mask.dtype == np.float32
        assert set(np.unique(mask)) <= {0.0, 1.0}
        if source == "box" and fg_ratio[0] == fg_ratio[1]:  # no box may have exactly that area: the nearest
            assert abs(mask.mean() - fg_ratio[0]) < 0.01
        else:
            assert in_range(mask, *fg_ratio), (seed, mask.mean())
        # inside: the one-pixel border is never foreground
        assert not mask[0].any() and not mask[-1].any() and not mask[:, 0].any() and not mask[:, -1].any()
        assert params["source"] == source and fg_ratio[0] <= params["target_ratio"] <= fg_ratio[1]
        assert params["fg_ratio"] == pytest.approx(float(mask.mean()))


@pytest.mark.parametrize("source", MASK_SOURCES)
def test_deterministic_given_the_generator(source):
    a, pa = random_mask(source, 60, 80, rng_for(0, "row", 1, "mask"))
    b, pb = random_mask(source, 60, 80, rng_for(0, "row", 1, "mask"))
    c, _ = random_mask(source, 60, 80, rng_for(0, "row", 2, "mask"))
    assert np.array_equal(a, b) and pa == pb
    assert not np.array_equal(a, c)


@pytest.mark.parametrize("source", MASK_SOURCES)
def test_one_connected_region(source):
    for seed in range(10):
        mask, _ = random_mask(source, 64, 96, rng_for(seed), (0.05, 0.4))
        _, n = ndimage.label(mask)
        assert n == 1


def test_shapes_differ():
    rng = lambda: rng_for(7)  # noqa: E731
    e, b, bl = ellipse(64, 64, rng()), box(64, 64, rng()), blob(64, 64, rng())
    ys, xs = np.nonzero(b)
    assert b[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].all()  # a box fills its bounding box
    ys, xs = np.nonzero(e)
    assert not e[ys.min() : ys.max() + 1, xs.min() : xs.max() + 1].all()
    assert not np.array_equal(e, bl)


def test_box_parameters_describe_the_mask():
    mask, p = random_mask("box", 50, 70, rng_for(1))
    expected = np.zeros_like(mask)
    expected[p["y0"] : p["y1"], p["x0"] : p["x1"]] = 1
    assert np.array_equal(mask, expected)


@pytest.mark.parametrize(
    "args, message",
    [
        (("ellipse", 6, 40), "too small"),
        (("cloud", 40, 40), "unknown mask source"),
    ],
)
def test_refuses_what_it_cannot_draw(args, message):
    with pytest.raises(ValueError, match=message):
        random_mask(*args, rng_for(0))


@pytest.mark.parametrize("fg_ratio", [(0.0, 0.2), (0.3, 0.2), (0.2, 0.9)])
def test_refuses_bad_ranges(fg_ratio):
    with pytest.raises(ValueError, match="foreground ratio range"):
        random_mask("blob", 40, 40, rng_for(0), fg_ratio)
