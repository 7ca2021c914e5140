"""Cutouts with a soft alpha (harmony_ops/compositing.py place_cutout / soft_paste, harmony_ops/inputs.py
load_cutout_sample) and their manifest rows (schemas/manifest.py): alpha 0 is the background bit for bit,
alpha 255 the harmonized foreground, the blend in between; clipping, empty cutouts and bad placements."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from harmony_ops.compositing import place_cutout, soft_paste
from harmony_ops.imageio import ImageError
from harmony_ops.inputs import load_cutout_sample
from schemas.manifest import row_problems
from schemas.vocabulary import ErrorKind


def png(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


images = st.tuples(st.integers(1, 24), st.integers(1, 24), st.integers(0, 2**31 - 1))


@settings(max_examples=60, deadline=None)
@given(images)
def test_soft_paste_is_the_background_at_0_the_foreground_at_255_and_the_blend_between(spec):
    h, w, seed = spec
    rng = np.random.default_rng(seed)
    base, top = (rng.integers(0, 256, (h, w, 3), dtype=np.uint8) for _ in range(2))
    alpha = rng.choice(np.array([0, 255, *rng.integers(1, 255, 3)], np.uint8), (h, w))
    out = soft_paste(base, top, alpha)
    assert np.array_equal(out[alpha == 0], base[alpha == 0])
    assert np.array_equal(out[alpha == 255], top[alpha == 255])
    a = alpha[..., None] / 255.0
    expected = a * top + (1 - a) * base
    assert np.abs(out.astype(float) - expected).max() <= 0.5 + 1e-9


@settings(max_examples=60, deadline=None)
@given(images, st.integers(-30, 30), st.integers(-30, 30))
def test_placing_a_cutout_keeps_the_background_where_it_is_transparent_and_clips_at_the_edges(spec, x, y):
    h, w, seed = spec
    rng = np.random.default_rng(seed)
    bg = rng.integers(0, 256, (20, 26, 3), dtype=np.uint8)
    fg = rng.integers(0, 256, (h, w, 3), dtype=np.uint8)
    alpha = rng.integers(0, 256, (h, w), dtype=np.uint8)
    comp, full, clipped = place_cutout(bg, fg, alpha, x, y)
    assert comp.shape == bg.shape and full.shape == bg.shape[:2]
    assert np.array_equal(comp[full == 0], bg[full == 0])
    inside = (x >= 0 and y >= 0 and x + w <= 26 and y + h <= 20)
    assert clipped == (not inside)
    ys, xs = np.nonzero(full)
    if len(ys):
        assert ys.min() >= max(y, 0) and xs.min() >= max(x, 0) and ys.max() < y + h and xs.max() < x + w
        sy, sx = ys[0] - y, xs[0] - x
        assert full[ys[0], xs[0]] == alpha[sy, sx]


def test_a_scaled_cutout_covers_its_scaled_size():
    bg = np.zeros((40, 40, 3), np.uint8)
    fg = np.full((10, 8, 3), 200, np.uint8)
    comp, full, clipped = place_cutout(bg, fg, np.full((10, 8), 255, np.uint8), 5, 6, scale=2.0)
    assert not clipped and (full == 255).sum() == 20 * 16 and full[6, 5] == 255 and full[26, 21] == 0


def rgba_cutout(h=20, w=16, soft=True) -> bytes:
    rgba = np.zeros((h, w, 4), np.uint8)
    rgba[..., :3] = [30, 60, 200]
    rgba[3:-3, 3:-3, 3] = 255
    if soft:
        rgba[2, 3:-3, 3] = 128
        rgba[1, 3:-3, 3] = 40
    return png(rgba, "RGBA")


def test_load_cutout_sample_composes_at_the_backgrounds_size_with_a_binarised_mask_and_the_soft_alpha():
    bg = np.full((50, 60, 3), [160, 110, 60], np.uint8)
    sample, background = load_cutout_sample(rgba_cutout(), png(bg), 10, 5)
    assert sample.composite.shape == (50, 60, 3) and np.array_equal(background, bg)
    assert sample.mask_grey[5 + 2, 10 + 5] == 128 and sample.mask[5 + 2, 10 + 5] == 1.0
    assert sample.mask_grey[5 + 1, 10 + 5] == 40 and sample.mask[5 + 1, 10 + 5] == 0.0
    assert np.array_equal(sample.composite[sample.mask_grey == 0], bg[sample.mask_grey == 0])
    clipped, _ = load_cutout_sample(rgba_cutout(), png(bg), 50, 40)
    assert "cutout_clipped" in clipped.notes
    with pytest.raises(ImageError) as e:
        load_cutout_sample(rgba_cutout(), png(bg), 59, 49)  # only its transparent corner lands on the background
    assert e.value.kind == ErrorKind.EMPTY_MASK
    transparent = np.zeros((8, 8, 4), np.uint8)
    with pytest.raises(ImageError) as e:
        load_cutout_sample(png(transparent, "RGBA"), png(bg), 0, 0)
    assert e.value.kind == ErrorKind.EMPTY_MASK
    opaque, _ = load_cutout_sample(png(np.full((8, 8, 3), 9, np.uint8)), png(bg), 0, 0)
    assert "foreground_opaque_cutout" in opaque.notes and opaque.mask[:8, :8].all()


def test_placement_cells_that_are_missing_negative_or_not_numbers_make_invalid_rows():
    rows = pd.DataFrame([
        {"id": "ok", "foreground": "f.png", "background": "b.jpg", "x": 3, "y": 0, "scale": None},
        {"id": "nox", "foreground": "f.png", "background": "b.jpg", "x": None, "y": 0, "scale": None},
        {"id": "neg", "foreground": "f.png", "background": "b.jpg", "x": -4, "y": 0, "scale": None},
        {"id": "text", "foreground": "f.png", "background": "b.jpg", "x": "left", "y": 0, "scale": None},
        {"id": "frac", "foreground": "f.png", "background": "b.jpg", "x": 2.5, "y": 0, "scale": None},
        {"id": "zero", "foreground": "f.png", "background": "b.jpg", "x": 1, "y": 1, "scale": 0},
        {"id": "nofg", "foreground": None, "background": "b.jpg", "x": 1, "y": 1, "scale": None},
        {"id": "none", "foreground": None, "background": None, "x": 1, "y": 1, "scale": None},
    ], dtype=object)
    reasons = dict(zip(rows["id"], row_problems(rows)))
    assert reasons["ok"] == ""
    assert "x: missing" in reasons["nox"] and "x: -4 is negative" in reasons["neg"]
    assert "x: 'left' is not a number" in reasons["text"] and "not a whole number" in reasons["frac"]
    assert "scale: 0 must be more than 0" in reasons["zero"]
    assert "foreground: must be a string, not null (required)" in reasons["nofg"]
    assert "needs composite and mask, or foreground, background, x and y" in reasons["none"]


def test_a_manifest_may_mix_composite_rows_and_cutout_rows():
    rows = pd.DataFrame([{"id": "c", "composite": "c.png", "mask": "m.png", "foreground": None, "background": None,
                          "x": None, "y": None},
                         {"id": "k", "composite": None, "mask": None, "foreground": "f.png", "background": "b.png",
                          "x": 0, "y": 0}])
    assert list(row_problems(rows)) == ["", ""]


def test_the_harmonized_foreground_is_the_engines_where_opaque_and_the_nearest_opaque_colour_on_the_edge():
    from harmony_ops.compositing import harmonized_foreground

    engine = np.zeros((12, 12, 3), np.uint8)
    engine[:, :6] = [200, 10, 10]   # opaque left half, harmonized red
    engine[:, 6:] = [0, 0, 255]     # the engine's output on the soft edge mixes in the background: not used
    alpha = np.zeros((12, 12), np.uint8)
    alpha[:, :6] = 255
    alpha[:, 6:8] = 100
    fg = harmonized_foreground(engine, alpha)
    assert np.array_equal(fg[:, :6], engine[:, :6])
    assert (fg[:, 6:8] == [200, 10, 10]).all()
    assert np.array_equal(fg[:, 8:], engine[:, 8:])  # alpha 0: left as it was (soft_paste ignores it)
    out = soft_paste(np.zeros_like(engine), fg, alpha)
    assert (out[:, 6] == np.rint(np.array([200, 10, 10]) * 100 / 255)).all()


def test_the_catalog_demo_builds_a_valid_cutout_manifest_from_bundled_photographs(tmp_path):
    from pipelines.devtools.demo.catalog import build_catalog

    manifest = pd.read_csv(build_catalog(tmp_path, images=5))
    assert len(manifest) == 5 and list(row_problems(manifest)) == [""] * 5
    for r in manifest.itertuples():
        alpha = np.asarray(Image.open(tmp_path / r.foreground))[..., 3]
        assert alpha.max() == 255 and ((alpha > 0) & (alpha < 255)).any()
        sample, _ = load_cutout_sample((tmp_path / r.foreground).read_bytes(), (tmp_path / r.background).read_bytes(),
                                       r.x, r.y)
        assert "cutout_clipped" not in sample.notes


def test_soft_paste_of_a_composite_row_with_a_16_bit_grey_mask():
    """--soft-paste: the model saw the mask binarised; the paste-back blends with its grey levels."""
    from harmony_ops.inputs import load_sample
    from pipelines.config import FetchSettings
    from pipelines.jobs.harmonize.finish import FinishStage

    rng = np.random.default_rng(3)
    comp = rng.integers(0, 256, (20, 24, 3), dtype=np.uint8)
    grey16 = np.zeros((20, 24), np.uint16)
    grey16[5:15, 6:18] = 65535
    grey16[4, 6:18] = 65535 // 3  # a soft edge below 0.5: not foreground for the model
    grey16[15, 6:18] = 2 * 65535 // 3
    buf = io.BytesIO()
    Image.fromarray(grey16).save(buf, format="PNG")  # a 16-bit greyscale PNG
    sample = load_sample(png(comp), buf.getvalue())
    alpha = sample.mask_grey
    assert alpha[4, 10] == 85 and alpha[15, 10] == 170 and sample.mask[4, 10] == 0 and sample.mask[15, 10] == 1
    box = (4, 2, 20, 18)
    region = np.full((16, 16, 3), 200, np.uint8)  # the engine's output over the box
    stage = FinishStage(FetchSettings(), "out", "png", 0, {}, soft_paste=True)
    out = stage.deliver(sample, None, box, region)
    assert np.array_equal(out[alpha == 0], comp[alpha == 0])
    assert (out[alpha == 255] == 200).all()
    edge = np.rint((200 * 85 + comp[4, 6:18].astype(int) * 170) / 255)
    assert np.array_equal(out[4, 6:18], edge.astype(np.uint8))
    hard = FinishStage(FetchSettings(), "out", "png", 0, {}).deliver(sample, None, box, region)
    assert np.array_equal(hard[4], comp[4])  # without it, below 0.5 is the composite


def test_a_scale_that_would_make_the_cutout_too_large_is_refused_like_a_decompression_bomb():
    bg = np.full((50, 60, 3), 90, np.uint8)
    with pytest.raises(ImageError) as e:
        load_cutout_sample(rgba_cutout(), png(bg), 0, 0, scale=16.0, max_pixels=20 * 16 * 100)
    assert e.value.kind == ErrorKind.TOO_LARGE


def test_a_csv_manifest_mixing_both_kinds_of_row_with_blank_cells(tmp_path):
    from pipelines.io.manifest import prepare_rows, read_manifest

    (tmp_path / "m.csv").write_text("id,composite,mask,foreground,background,x,y,scale\n"
                                    "c,c.png,m.png,,,,,\n"
                                    "k,,,f.png,b.png,3,4,\n")
    rows = prepare_rows(read_manifest(str(tmp_path / "m.csv")), str(tmp_path / "m.csv"), "/out", "png", 0)
    assert list(rows["status"]) == ["pending", "pending"], list(rows["error_message"])
    assert list(rows["layout"]) == ["composite", "cutout"] and rows.loc[1, "x"] == 3 and np.isnan(rows.loc[1, "scale"])
