"""harmony_ops.compositing: masks, feathering, pasting and resizing."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from harmony_ops.compositing import (
    binarize_mask,
    dilate,
    erode,
    feather_alpha,
    paste,
    paste_region,
    resize_mask,
    resize_rgb,
)


def _naive_dilate(binary: np.ndarray, r: int) -> np.ndarray:
    out = np.zeros_like(binary)
    for y, x in zip(*np.nonzero(binary)):
        out[max(y - r, 0) : y + r + 1, max(x - r, 0) : x + r + 1] = True
    return out


def _naive_erode(binary: np.ndarray, r: int) -> np.ndarray:
    # Outside the image counts as foreground.
    padded = np.pad(binary, r, constant_values=True)
    h, w = binary.shape
    out = np.zeros_like(binary)
    for y in range(h):
        for x in range(w):
            out[y, x] = padded[y : y + 2 * r + 1, x : x + 2 * r + 1].all()
    return out


def test_binarize_mask() -> None:
    np.testing.assert_array_equal(binarize_mask(np.array([[0.0, 0.49, 0.5, 1.0]])), [[0, 0, 1, 1]])
    np.testing.assert_array_equal(binarize_mask(np.array([[0, 127, 128, 255]], dtype=np.uint8)), [[0, 0, 1, 1]])
    np.testing.assert_array_equal(binarize_mask(np.array([[True, False]])), [[True, False]])
    assert binarize_mask(np.ones((3, 4, 1))).shape == (3, 4)
    with pytest.raises(ValueError):
        binarize_mask(np.ones((3, 4, 3)))


@settings(max_examples=30, deadline=None)
@given(
    st.integers(1, 12).flatmap(
        lambda h: st.integers(1, 12).flatmap(
            lambda w: st.tuples(
                st.lists(st.booleans(), min_size=h * w, max_size=h * w).map(
                    lambda v: np.array(v, dtype=bool).reshape(h, w)
                ),
                st.integers(0, 4),
            )
        )
    )
)
def test_morphology_matches_naive(case: tuple[np.ndarray, int]) -> None:
    binary, r = case
    np.testing.assert_array_equal(dilate(binary, r), _naive_dilate(binary, r))
    np.testing.assert_array_equal(erode(binary, r), _naive_erode(binary, r))


def test_feather_alpha_profile() -> None:
    mask = np.zeros((40, 60), dtype=bool)
    mask[10:30, 10:50] = True
    assert feather_alpha(mask, 0).dtype == np.float32
    np.testing.assert_array_equal(feather_alpha(mask, 0), mask.astype(np.float32))

    alpha = feather_alpha(mask, 3)
    assert alpha.dtype == np.float32
    assert np.all(alpha[~mask] == 0.0)
    assert alpha[20, 30] == 1.0  # deep inside
    assert 0 < alpha[20, 10] < alpha[20, 12] < alpha[20, 14] < 1.0  # ramp towards the edge
    assert alpha[20, 16] == 1.0  # 2 * radius from the edge
    assert alpha.min() >= 0.0 and alpha.max() <= 1.0


def test_feather_alpha_does_not_fade_at_the_frame() -> None:
    mask = np.zeros((30, 30), dtype=bool)
    mask[:, :15] = True  # touches the top, bottom and left border
    alpha = feather_alpha(mask, 4)
    assert alpha[0, 0] == 1.0 and alpha[15, 0] == 1.0
    assert alpha[15, 14] < 1.0


def test_feather_alpha_soft_and_empty_masks() -> None:
    soft = np.zeros((20, 20))
    soft[5:15, 5:15] = 0.7
    np.testing.assert_array_equal(feather_alpha(soft, 0), (soft >= 0.5).astype(np.float32))
    np.testing.assert_array_equal(feather_alpha(np.zeros((8, 8)), 3), np.zeros((8, 8), np.float32))
    np.testing.assert_array_equal(feather_alpha(np.ones((8, 8)), 3), np.ones((8, 8), np.float32))
    with pytest.raises(ValueError):
        feather_alpha(soft, -1)


def test_paste_without_feather_is_a_masked_copy() -> None:
    rng = np.random.default_rng(0)
    comp = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    harm = rng.integers(0, 256, (20, 30, 3), dtype=np.uint8)
    mask = rng.random((20, 30))
    out = paste(comp, harm, mask)
    fg = mask >= 0.5
    np.testing.assert_array_equal(out[fg], harm[fg])
    np.testing.assert_array_equal(out[~fg], comp[~fg])


def test_paste_feather_blends_with_rounding() -> None:
    comp = np.zeros((30, 30, 3), dtype=np.uint8)
    harm = np.full((30, 30, 3), 255, dtype=np.uint8)
    mask = np.zeros((30, 30), dtype=bool)
    mask[5:25, 5:25] = True
    out = paste(comp, harm, mask, feather=2)
    alpha = feather_alpha(mask, 2)
    np.testing.assert_array_equal(out[..., 0], np.rint(alpha.astype(np.float64) * 255).astype(np.uint8))
    np.testing.assert_array_equal(out[~mask], comp[~mask])


@pytest.mark.parametrize("feather", [0, 1, 3])
def test_paste_region_equals_the_blend_formula(feather: int) -> None:
    """Where alpha is 1 the harmonized pixel is copied, on the ramp blended: both are
    round(base + alpha * (src - base)) in float64, bit for bit, also in a box of a larger image."""
    rng = np.random.default_rng(feather)
    comp = rng.integers(0, 256, (60, 80, 3), dtype=np.uint8)
    mask = np.zeros((60, 80), dtype=bool)
    mask[12:50, 15:70] = rng.random((38, 55)) < 0.9
    box = (10, 8, 74, 55)
    region = rng.integers(0, 256, (box[3] - box[1], box[2] - box[0], 3), dtype=np.uint8)
    out = paste_region(comp, region, box, mask, feather=feather)
    grown = np.zeros((60, 80), dtype=bool)
    grown[box[1] : box[3], box[0] : box[2]] = mask[box[1] : box[3], box[0] : box[2]]
    alpha = feather_alpha(grown, feather).astype(np.float64)[..., None]
    src = np.zeros_like(comp)
    src[box[1] : box[3], box[0] : box[2]] = region
    base = comp.astype(np.float64)
    expected = np.where(grown[..., None], np.clip(np.rint(base + alpha * (src - base)), 0, 255), base).astype(np.uint8)
    np.testing.assert_array_equal(out, expected)
    assert out.flags.writeable and not np.shares_memory(out, comp)


def test_paste_validates_shapes() -> None:
    img = np.zeros((10, 10, 3), dtype=np.uint8)
    with pytest.raises(ValueError):
        paste(img, np.zeros((10, 11, 3), dtype=np.uint8), np.ones((10, 10)))
    with pytest.raises(ValueError):
        paste(img, img, np.ones((9, 10)))
    with pytest.raises(ValueError):
        paste(img, img.astype(np.float32), np.ones((10, 10)))


def test_paste_region_matches_full_paste() -> None:
    rng = np.random.default_rng(1)
    comp = rng.integers(0, 256, (40, 50, 3), dtype=np.uint8)
    region = rng.integers(0, 256, (20, 25, 3), dtype=np.uint8)
    mask = np.zeros((40, 50), dtype=bool)
    mask[8:35, 10:45] = True  # extends beyond the box on three sides
    box = (5, 10, 30, 30)
    out = paste_region(comp, region, box, mask, feather=2)

    full = comp.copy()
    full[10:30, 5:30] = region
    in_box = np.zeros_like(mask)
    in_box[10:30, 5:30] = True
    np.testing.assert_array_equal(out, paste(comp, full, mask & in_box, feather=2))
    np.testing.assert_array_equal(out[~mask], comp[~mask])
    np.testing.assert_array_equal(out[~in_box], comp[~in_box])


def test_paste_region_validates_box() -> None:
    comp = np.zeros((10, 10, 3), dtype=np.uint8)
    mask = np.ones((10, 10))
    with pytest.raises(ValueError):
        paste_region(comp, np.zeros((5, 5, 3), np.uint8), (0, 0, 5, 6), mask)
    with pytest.raises(ValueError):
        paste_region(comp, np.zeros((5, 5, 3), np.uint8), (6, 0, 11, 5), mask)
    with pytest.raises(ValueError):
        paste_region(comp, np.zeros((0, 5, 3), np.uint8), (0, 3, 5, 3), mask)


@st.composite
def _paste_cases(draw: st.DrawFn) -> tuple:
    h = draw(st.integers(1, 16))
    w = draw(st.integers(1, 16))
    seed = draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    comp = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    harm = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = draw(st.sampled_from(["float", "bool", "uint8"]))
    m = {
        "float": rng.random((h, w)),
        "bool": rng.random((h, w)) < draw(st.floats(0, 1)),
        "uint8": rng.integers(0, 256, (h, w), dtype=np.uint8),
    }[mask]
    feather = draw(st.integers(0, 5))
    x0 = draw(st.integers(0, w - 1))
    x1 = draw(st.integers(x0 + 1, w))
    y0 = draw(st.integers(0, h - 1))
    y1 = draw(st.integers(y0 + 1, h))
    return comp, harm, m, feather, (x0, y0, x1, y1)


@settings(max_examples=50, deadline=None)
@given(_paste_cases())
def test_background_bit_identical_property(case: tuple) -> None:
    comp, harm, mask, feather, box = case
    fg = binarize_mask(mask)

    alpha = feather_alpha(mask, feather)
    assert alpha.dtype == np.float32 and alpha.shape == fg.shape
    assert np.all(alpha[~fg] == 0.0)
    assert alpha.min() >= 0.0 and alpha.max() <= 1.0

    out = paste(comp, harm, mask, feather=feather)
    assert out.dtype == np.uint8 and out.shape == comp.shape
    assert np.array_equal(out[~fg], comp[~fg])
    lo = np.minimum(comp, harm)[fg]
    hi = np.maximum(comp, harm)[fg]
    assert np.all((out[fg] >= lo) & (out[fg] <= hi))

    x0, y0, x1, y1 = box
    region = harm[y0:y1, x0:x1].copy()
    out_r = paste_region(comp, region, box, mask, feather=feather)
    assert np.array_equal(out_r[~fg], comp[~fg])
    outside_box = np.ones(fg.shape, dtype=bool)
    outside_box[y0:y1, x0:x1] = False
    assert np.array_equal(out_r[outside_box], comp[outside_box])


def test_resize_rgb_matches_pil_bilinear() -> None:
    rng = np.random.default_rng(2)
    img = rng.integers(0, 256, (200, 300, 3), dtype=np.uint8)
    out = resize_rgb(img, (256, 256))
    expected = np.array(Image.fromarray(img).resize((256, 256), Image.BILINEAR))
    assert out.shape == (256, 256, 3) and out.dtype == np.uint8
    np.testing.assert_array_equal(out, expected)
    same = resize_rgb(img, (300, 200))
    np.testing.assert_array_equal(same, img)
    assert same is not img
    with pytest.raises(ValueError):
        resize_rgb(img, (0, 10))


def test_resize_mask_is_binary_nearest() -> None:
    mask = np.zeros((20, 30))
    mask[5:15, 10:20] = 0.8
    mask[0, 0] = 0.3
    out = resize_mask(mask, (60, 40))
    assert out.dtype == np.float32 and out.shape == (40, 60)
    assert set(np.unique(out)) <= {0.0, 1.0}
    expected = np.array(
        Image.fromarray(((mask >= 0.5) * 255).astype(np.uint8)).resize((60, 40), Image.NEAREST)
    ) > 0
    np.testing.assert_array_equal(out, expected.astype(np.float32))
    np.testing.assert_array_equal(out[10:30, 20:40], np.ones((20, 20), np.float32))


# --- cost, without a clock (speed itself is for `harmony bench`) -----------------------------


@pytest.fixture
def window_sums(monkeypatch):
    """The (shape, radius) of every box-sum pass (the module's expensive primitive)."""
    import harmony_ops.compositing as comp_mod

    calls: list[tuple[tuple[int, ...], int]] = []
    real = comp_mod._window_sum

    def spy(values, radius, axis, pad):
        calls.append((np.shape(values), radius))
        return real(values, radius, axis, pad)

    monkeypatch.setattr(comp_mod, "_window_sum", spy)
    return calls


def _lines_run(fn) -> int:
    """Python lines executed inside harmony_ops/compositing.py while fn runs: any Python loop
    over the radius, the rows or the pixels makes this grow with them."""
    import sys

    import harmony_ops.compositing as comp_mod

    count = 0

    def tracer(frame, event, arg):
        nonlocal count
        if frame.f_code.co_filename != comp_mod.__file__:
            return None
        if event == "line":
            count += 1
        return tracer

    previous = sys.gettrace()
    sys.settrace(tracer)
    try:
        fn()
    finally:
        sys.settrace(previous)
    return count


def test_large_mask_morphology_cost_does_not_grow_with_the_radius(window_sums) -> None:
    """dilate/erode/feather are a fixed number of box-sum passes over the image (O(H*W)),
    whatever the radius, with no Python-level loop over radius or pixels."""
    mask = np.zeros((2000, 2000), dtype=bool)
    mask[400:1600, 300:1500] = True
    for op, passes in ((dilate, 2), (erode, 2), (feather_alpha, 4)):
        lines = {}
        for r in (1, 100):
            window_sums.clear()
            lines[r] = _lines_run(lambda op=op, r=r: op(mask, r))
            assert [shape for shape, _ in window_sums] == [(2000, 2000)] * passes, (op.__name__, r)
            assert {radius for _, radius in window_sums} == {r}
        assert lines[1] == lines[100], (op.__name__, lines)
    expected = np.zeros_like(mask)
    expected[300:1700, 200:1600] = True
    np.testing.assert_array_equal(dilate(mask, 100), expected)  # still right at this size


def test_large_paste_cost(window_sums) -> None:
    mask = np.zeros((2000, 2000), dtype=bool)
    mask[400:1600, 300:1500] = True
    comp = np.zeros((2000, 2000, 3), dtype=np.uint8)
    harm = np.full((2000, 2000, 3), 200, dtype=np.uint8)
    out = paste(comp, harm, mask, feather=16)
    assert [shape for shape, _ in window_sums] == [(2000, 2000)] * 4  # one feather: erode + box blur
    assert (out[~mask] == 0).all() and (out[500:1500, 400:1400] == 200).all()


def test_paste_region_works_on_the_box_not_the_image(window_sums) -> None:
    """A small object in a large image: the feather is computed on the box grown by its reach."""
    h = w = 2000
    mask = np.zeros((h, w), dtype=bool)
    mask[910:990, 905:995] = True
    comp = np.zeros((h, w, 3), dtype=np.uint8)
    x0, y0, x1, y1 = 900, 900, 1000, 1000
    region = np.full((y1 - y0, x1 - x0, 3), 200, dtype=np.uint8)
    feather = 8
    out = paste_region(comp, region, (x0, y0, x1, y1), mask, feather=feather)
    reach = 2 * feather + 1
    grown = (y1 - y0 + 2 * reach, x1 - x0 + 2 * reach)
    assert len(window_sums) == 4 and all(shape == grown for shape, _ in window_sums), window_sums
    assert (out[~mask] == 0).all() and (out[930:970, 925:975] == 200).all()
