"""A row's review images: full resolution, the mask's grey levels kept, the difference against the ground truth
when there is one and against the composite otherwise."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from harmony_ops import review


def scene(h=30, w=40, seed=0):
    rng = np.random.default_rng(seed)
    comp = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    mask = np.zeros((h, w), np.uint8)
    mask[5:20, 8:30] = 255
    mask[4, 8:30] = 128  # a soft edge
    return comp, mask


def decode(data: bytes) -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)))


def test_heat_colours_run_from_black_to_pale_yellow_and_saturate():
    c = review.heat_colours(np.array([[0.0, 32.0, 64.0, 500.0]]))
    assert c[0, 0].tolist() == [0, 0, 4] and c[0, 2].tolist() == [252, 255, 164] and c[0, 3].tolist() == [252, 255, 164]
    assert 0 < c[0, 1].sum() < c[0, 2].sum()


def test_the_difference_map_colours_the_mean_level_as_heat_colours_does():
    rng = np.random.default_rng(1)
    a, b = (rng.integers(0, 256, (16, 16, 3), dtype=np.uint8) for _ in range(2))
    level = np.abs(a.astype(int) - b).mean(axis=2)
    expect = review.heat_colours(np.round(level))
    assert np.abs(review.difference_map(a, b).astype(int) - expect).max() <= 6  # a level's rounding at most


def test_the_difference_map_is_zero_where_the_images_agree_and_full_resolution():
    comp, mask = scene()
    out = comp.copy()
    out[mask == 255] = 255 - out[mask == 255]
    d = review.difference_map(out, comp)
    assert d.shape == comp.shape
    assert (d[mask == 0] == [0, 0, 4]).all()  # background untouched: black
    assert d[mask == 255].astype(int).sum() > 0
    with pytest.raises(ValueError, match="different sizes"):
        review.difference_map(out[:10], comp)


def test_review_files_with_ground_truth_and_a_compare_method():
    comp, mask = scene()
    real = np.clip(comp.astype(int) + 10, 0, 255).astype(np.uint8)
    out = real.copy()  # a perfect prediction: its difference to the ground truth is black
    other = comp[::2, ::2].copy()  # another method's 256-px-style output, of another size
    files = review.review_files(comp, out, mask, real, other)
    assert set(files) == {"composite.jpg", "harmonized.jpg", "compare.jpg", "real.jpg", "mask.png", "difference.png",
                          "thumb.jpg"}
    assert decode(files["composite.jpg"]).shape == comp.shape and decode(files["compare.jpg"]).shape == other.shape
    assert np.array_equal(decode(files["mask.png"]), mask)  # the soft edge's grey level kept
    assert (decode(files["difference.png"]) == [0, 0, 4]).all()
    # 4:4:4 at quality 95: the full-resolution copy is close to the pixels it shows
    assert np.abs(decode(files["real.jpg"]).astype(int) - real).mean() < 4
    assert review.find(files, review.REAL) == "real.jpg" and review.find(files, "nothing") is None


def test_a_source_a_browser_shows_as_it_is_is_kept_byte_for_byte():
    comp, mask = scene()
    png = io.BytesIO()
    Image.fromarray(comp).save(png, format="PNG")
    files = review.review_files(comp, comp, mask, comp, composite_source=png.getvalue(), real_source=b"II*\x00tiff")
    assert files["composite.png"] == png.getvalue()  # exact, and no encoding spent
    assert "real.jpg" in files  # a TIFF is not shown by browsers: encoded
    assert review.browser_format(b"RIFF\x00\x00\x00\x00WEBPVP8 ") == "webp" and review.browser_format(None) is None


def test_without_ground_truth_the_difference_shows_what_the_model_changed():
    comp, mask = scene()
    out = comp.copy()
    out[mask == 255] = 0
    files = review.review_files(comp, out, mask, with_harmonized=False)
    assert set(files) == {"composite.jpg", "mask.png", "difference.png", "thumb.jpg"}
    d = decode(files["difference.png"])
    assert (d[mask == 0] == [0, 0, 4]).all() and (d[mask == 255] != [0, 0, 4]).any(axis=-1).all()


def test_the_thumbnail_is_at_most_its_side_and_never_enlarged():
    big = np.zeros((300, 600, 3), np.uint8)
    assert review.thumbnail(big).shape == (64, 128, 3)
    small = np.zeros((20, 30, 3), np.uint8)
    assert review.thumbnail(small) is small
