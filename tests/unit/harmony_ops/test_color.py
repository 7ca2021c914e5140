"""harmony_ops.color against scikit-image's reference implementation."""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from skimage.color import deltaE_cie76, lab2rgb, rgb2lab

from harmony_ops.color import delta_e76, lab_to_rgb, lab_to_rgb_uint8, rgb_to_lab


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(1234)


def _all_extremes_and_grey() -> np.ndarray:
    """Cube corners plus a grey ramp: hits both branches of every piecewise curve."""
    corners = np.array([[r, g, b] for r in (0, 255) for g in (0, 255) for b in (0, 255)])
    greys = np.repeat(np.arange(256)[:, None], 3, axis=1)
    return np.concatenate([corners, greys]).astype(np.uint8)[None]


def test_rgb_to_lab_matches_skimage_uint8(rng: np.random.Generator) -> None:
    img = rng.integers(0, 256, size=(37, 23, 3), dtype=np.uint8)
    np.testing.assert_allclose(rgb_to_lab(img), rgb2lab(img), rtol=0, atol=1e-9)
    special = _all_extremes_and_grey()
    np.testing.assert_allclose(rgb_to_lab(special), rgb2lab(special), rtol=0, atol=1e-9)


def test_rgb_to_lab_matches_skimage_float(rng: np.random.Generator) -> None:
    img = rng.random((16, 16, 3))
    # Dark values exercise the linear segments of both the sRGB and the Lab curve.
    img[:4] *= 0.01
    out = rgb_to_lab(img)
    assert out.dtype == np.float64
    np.testing.assert_allclose(out, rgb2lab(img), rtol=0, atol=1e-9)


def test_rgb_to_lab_accepts_pixel_lists(rng: np.random.Generator) -> None:
    img = rng.integers(0, 256, size=(8, 9, 3), dtype=np.uint8)
    np.testing.assert_array_equal(rgb_to_lab(img.reshape(-1, 3)), rgb_to_lab(img).reshape(-1, 3))


def test_known_values() -> None:
    lab = rgb_to_lab(np.array([[[255, 255, 255], [0, 0, 0]]], dtype=np.uint8))
    # White is only approximately neutral: the 6-digit matrix and white point round.
    np.testing.assert_allclose(lab[0, 0], [100.0, 0.0, 0.0], atol=1e-2)
    np.testing.assert_allclose(lab[0, 1], [0.0, 0.0, 0.0], atol=1e-9)


def test_lab_to_rgb_matches_skimage(rng: np.random.Generator) -> None:
    in_gamut = rgb2lab(rng.random((20, 20, 3)))
    np.testing.assert_allclose(lab_to_rgb(in_gamut), lab2rgb(in_gamut), rtol=0, atol=1e-9)

    # Arbitrary Lab values, many out of gamut (clipped) and some with negative Z.
    wild = np.stack(
        [rng.uniform(0, 100, 400), rng.uniform(-128, 127, 400), rng.uniform(-128, 127, 400)],
        axis=-1,
    ).reshape(20, 20, 3)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # skimage warns about negative Z values
        expected = lab2rgb(wild)
    out = lab_to_rgb(wild)
    assert out.min() >= 0.0 and out.max() <= 1.0
    np.testing.assert_allclose(out, expected, rtol=0, atol=1e-9)


def test_round_trip_uint8_is_exact(rng: np.random.Generator) -> None:
    img = rng.integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    np.testing.assert_array_equal(lab_to_rgb_uint8(rgb_to_lab(img)), img)
    special = _all_extremes_and_grey()
    np.testing.assert_array_equal(lab_to_rgb_uint8(rgb_to_lab(special)), special)


def test_round_trip_float(rng: np.random.Generator) -> None:
    img = rng.random((32, 32, 3))
    np.testing.assert_allclose(lab_to_rgb(rgb_to_lab(img)), img, rtol=0, atol=1e-10)


def test_delta_e76(rng: np.random.Generator) -> None:
    a = rgb_to_lab(rng.integers(0, 256, size=(10, 10, 3), dtype=np.uint8))
    b = rgb_to_lab(rng.integers(0, 256, size=(10, 10, 3), dtype=np.uint8))
    np.testing.assert_allclose(delta_e76(a, b), deltaE_cie76(a, b), rtol=1e-12)
    np.testing.assert_array_equal(delta_e76(a, a), np.zeros((10, 10)))
    assert delta_e76(np.array([50.0, 3.0, 0.0]), np.array([50.0, 0.0, 4.0])) == pytest.approx(5.0)


def test_rejects_bad_shapes() -> None:
    with pytest.raises(ValueError):
        rgb_to_lab(np.zeros((4, 4, 4), dtype=np.uint8))
    with pytest.raises(ValueError):
        lab_to_rgb(np.zeros((4, 4)))
    with pytest.raises(TypeError):
        rgb_to_lab(np.zeros((4, 4, 3), dtype=np.int64))


def test_uint8_fast_path_equals_the_formula_on_the_whole_cube() -> None:
    """uint8 input goes through OpenCV's lookup and transforms: the float path's numbers (power-law
    linearisation, numpy matrix product) on every 4th level of each channel, to float precision,
    and scikit-image's on a random sample of all colours."""
    levels = np.arange(0, 256, 4, dtype=np.uint8)
    cube = np.stack(np.meshgrid(levels, levels, levels, indexing="ij"), -1).reshape(-1, 3)
    fast = rgb_to_lab(cube)
    assert fast.dtype == np.float64 and fast.shape == cube.shape
    np.testing.assert_allclose(fast, rgb_to_lab(cube / 255.0), rtol=0, atol=1e-10)
    sample = np.random.default_rng(5).integers(0, 256, (20000, 3), dtype=np.uint8)
    np.testing.assert_allclose(rgb_to_lab(sample), rgb2lab(sample[None])[0], rtol=0, atol=1e-9)
    # any layout: non-contiguous views, a single pixel, no pixel
    img = np.random.default_rng(6).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    np.testing.assert_allclose(rgb_to_lab(img[::3, 1::2]), rgb2lab(img[::3, 1::2]), rtol=0, atol=1e-9)
    np.testing.assert_allclose(rgb_to_lab(img[0, 0]), rgb2lab(img[:1, :1])[0, 0], rtol=0, atol=1e-9)
    assert rgb_to_lab(np.zeros((0, 3), dtype=np.uint8)).shape == (0, 3)
