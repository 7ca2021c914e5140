"""Decoding guards: each bad input raises ImageError with a kind, odd formats are converted."""

import io

import numpy as np
import pytest
from PIL import Image

from harmony_ops.imageio import ImageError, decode_image, encode_image
from harmony_ops.inputs import load_sample
from tests.conftest import png_bytes


def encoded(img: Image.Image, fmt="PNG", **kw) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kw)
    return buf.getvalue()


def test_good_pair(scene):
    comp, mask, real = scene
    s = load_sample(png_bytes(comp), png_bytes(mask), png_bytes(real))
    assert s.composite.shape == comp.shape and np.array_equal(s.composite, comp)
    assert s.mask.dtype == np.float32 and set(np.unique(s.mask)) == {0.0, 1.0}
    assert np.array_equal(s.real, real) and s.notes == []


@pytest.mark.parametrize("data,kind", [(b"", "empty_file"), (b"hello, not an image", "unreadable")])
def test_unreadable(data, kind):
    with pytest.raises(ImageError) as e:
        decode_image(data)
    assert e.value.kind == kind


def test_truncated_file_is_corrupt(scene):
    data = encoded(Image.fromarray(scene[0]), "JPEG")
    with pytest.raises(ImageError) as e:
        decode_image(data[: len(data) // 2])
    assert e.value.kind == "corrupt"


def test_pixel_limit(scene):
    with pytest.raises(ImageError) as e:
        decode_image(png_bytes(scene[0]), max_pixels=100)
    assert e.value.kind == "too_large"


def test_mask_checks(scene):
    comp, mask, _ = scene
    for m, kind in [(np.zeros_like(mask), "empty_mask"), (np.full_like(mask, 255), "full_mask"),
                    (mask[:-1], "size_mismatch")]:
        with pytest.raises(ImageError) as e:
            load_sample(png_bytes(comp), png_bytes(m))
        assert e.value.kind == kind


def test_non_binary_mask_is_binarised_at_half_and_recorded(scene):
    comp, mask, _ = scene
    soft = (mask.astype(np.float32) * 0.6).astype(np.uint8)  # 153 >= 128: still foreground
    soft[0, 0] = 120  # below half: background
    s = load_sample(png_bytes(comp), png_bytes(soft))
    assert "mask_binarized" in s.notes
    assert np.array_equal(s.mask, (mask > 0).astype(np.float32))


def test_palette_cmyk_16bit_alpha_are_converted(scene):
    comp, mask, _ = scene
    pal = Image.fromarray(comp).convert("P", palette=Image.ADAPTIVE)
    assert decode_image(encoded(pal))[0].mode == "RGB"
    cmyk = Image.fromarray(comp).convert("CMYK")
    img, _, notes = decode_image(encoded(cmyk, "JPEG"))
    assert img.mode == "RGB" and "converted_cmyk" in notes
    rgba = Image.fromarray(np.dstack([comp, np.full(comp.shape[:2], 200, np.uint8)]), "RGBA")
    img, _, notes = decode_image(encoded(rgba))
    assert img.mode == "RGB" and "dropped_alpha" in notes
    m16 = Image.fromarray(mask.astype(np.uint16) * 257)
    assert m16.mode.startswith("I;16")
    s = load_sample(png_bytes(comp), encoded(m16))
    assert np.array_equal(s.mask, (mask > 0).astype(np.float32))


def test_exif_orientation_applies_to_both(scene):
    comp, mask, _ = scene
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise when displayed
    data = encoded(Image.fromarray(comp), "JPEG", exif=exif.tobytes(), quality=100)
    s = load_sample(data, png_bytes(mask))
    assert s.composite.shape[:2] == comp.shape[1::-1]
    assert np.array_equal(s.mask, np.rot90(mask > 0, k=-1).astype(np.float32))
    assert "exif_orientation_both" in s.notes
    # a mask drawn on the displayed (already rotated) image is left alone
    s2 = load_sample(data, png_bytes(np.ascontiguousarray(np.rot90(mask, k=-1))))
    assert "exif_orientation_composite_only" in s2.notes
    assert np.array_equal(s2.mask, s.mask)


@pytest.mark.parametrize("fmt", ["png", "jpg", "webp"])
def test_encode_round_trip(scene, fmt):
    comp = scene[0]
    back = np.asarray(Image.open(io.BytesIO(encode_image(comp, fmt))).convert("RGB"))
    assert back.shape == comp.shape
    if fmt == "png":
        assert np.array_equal(back, comp)
    with pytest.raises(ValueError):
        encode_image(comp, "gif")


def _palette_png(index: np.ndarray, colours: list[tuple[int, int, int]]) -> bytes:
    img = Image.fromarray(index.astype(np.uint8), mode="P")
    img.putpalette([c for rgb in colours for c in rgb])
    return encoded(img)


def _masks_01(mask: np.ndarray) -> dict[str, bytes]:
    """One mask stored as 0/1 in each container segmentation tools write (issue 11, item 3)."""
    idx = (mask > 0).astype(np.uint8)
    m16 = Image.fromarray(idx.astype(np.uint16))
    assert m16.mode == "I;16"
    return {
        "8-bit": png_bytes(idx),
        "16-bit": encoded(m16),
        "palette (VOC colours)": _palette_png(idx, [(0, 0, 0), (128, 0, 0)]),
        # the index is the value, not the colour: here index 1 is drawn darker than index 0
        "palette (index 1 darker)": _palette_png(idx, [(200, 200, 200), (20, 20, 20)]),
    }


@pytest.mark.parametrize("container", ["8-bit", "16-bit", "palette (VOC colours)", "palette (index 1 darker)"])
def test_mask_stored_as_0_1_has_foreground_1(scene, container):
    comp, mask, _ = scene
    s = load_sample(png_bytes(comp), _masks_01(mask)[container])
    assert np.array_equal(s.mask, (mask > 0).astype(np.float32))
    assert "mask_01" in s.notes and "mask_binarized" not in s.notes
    assert set(np.unique(s.mask_grey)) == {0, 255}  # what evaluate's protocol reads: 0/255, not 0/1


def test_masks_that_are_not_0_1_read_as_before(scene):
    comp, mask, _ = scene
    # 16-bit 0/65535 style, scaled by the 16-bit range
    s = load_sample(png_bytes(comp), encoded(Image.fromarray(mask.astype(np.uint16) * 257)))
    assert np.array_equal(s.mask, (mask > 0).astype(np.float32)) and "mask_01" not in s.notes
    # a black-and-white palette whose index 0 is white (what an adaptive palette makes): its colours say
    # which index is foreground, as a viewer shows it
    pal = Image.fromarray(mask).convert("RGB").quantize(2)
    assert pal.getpalette()[:3] == [255, 255, 255] and np.asarray(pal).max() == 1
    s = load_sample(png_bytes(comp), encoded(pal))
    assert np.array_equal(s.mask, (mask > 0).astype(np.float32)) and "mask_01" not in s.notes


def test_mask_stored_as_0_1_with_one_value_is_empty_or_full(scene):
    comp, mask, _ = scene
    for m, kind in [(np.zeros_like(mask), "empty_mask"), (np.ones_like(mask), "full_mask")]:
        with pytest.raises(ImageError) as e:
            load_sample(png_bytes(comp), png_bytes(m))
        assert e.value.kind == kind


@pytest.mark.parametrize(("mode", "size"), [
    ("RGB", (33, 17)), ("L", (33, 17)), ("RGB", (1000, 700)), ("L", (1000, 700)),
    ("RGB", (2400, 1800)), ("L", (2400, 1800)),  # RGB in two of Pillow's 16 MiB blocks: read in strips
    ("L", (5000, 3400)),  # L in two blocks
])
def test_image_array_equals_numpy_asarray(mode, size):
    from harmony_ops.imageio import image_array

    rng = np.random.default_rng(size[0])
    channels = (size[1], size[0], 3) if mode == "RGB" else (size[1], size[0])
    img = Image.fromarray(rng.integers(0, 256, channels, dtype=np.uint8))
    cropped = img.crop((3, 2, size[0] - 1, size[1] - 4))  # a fresh image, as after a transpose
    for im in (img, cropped):
        got = image_array(im)
        expected = np.asarray(im)
        assert got.dtype == np.uint8 and got.shape == expected.shape
        np.testing.assert_array_equal(got, expected)


def test_image_array_other_modes_go_through_numpy():
    from harmony_ops.imageio import image_array

    img = Image.new("RGBA", (5, 4), (1, 2, 3, 4))
    np.testing.assert_array_equal(image_array(img), np.asarray(img))


@pytest.mark.parametrize("values", [(0, 255), (0, 1, 255), (0, 128, 255), (0, 254, 255), (3,)])
def test_mask_array_binary_flag(values):
    from harmony_ops.imageio import mask_array

    rng = np.random.default_rng(len(values))
    a = rng.choice(np.array(values, dtype=np.uint8), size=(40, 30))
    m, non_binary = mask_array(Image.fromarray(a))
    assert non_binary == (not np.isin(a, (0, 255)).all())
    np.testing.assert_array_equal(m, (a >= 128).astype(np.float32))
    assert m.dtype == np.float32


def test_a_float_mask_with_nan_and_inf_is_defined_and_noted():
    """NaN is background, +inf the top of the range, -inf 0; the range is judged on the finite values (issue 29)."""
    import io as _io

    import numpy as _np
    from PIL import Image as _Image

    from harmony_ops.imageio import decode_mask

    a = _np.zeros((4, 6), _np.float32)
    a[0, 0], a[0, 1], a[0, 2], a[1, :] = _np.nan, _np.inf, -_np.inf, 1.0
    buf = _io.BytesIO()
    _Image.fromarray(a, mode="F").save(buf, format="TIFF")
    img, _, notes = decode_mask(buf.getvalue())
    m = _np.asarray(img)
    assert m[0, 0] == 0 and m[0, 1] == 255 and m[0, 2] == 0 and (m[1] == 255).all() and (m[2:] == 0).all()
    assert "nonfinite_values" in notes


def test_an_undefined_exif_orientation_rotates_nothing_and_says_nothing():
    import io as _io

    import numpy as _np
    from PIL import Image as _Image

    from harmony_ops.imageio import decode_image
    from harmony_ops.inputs import load_sample

    img = _Image.fromarray(_np.zeros((4, 6, 3), _np.uint8))
    exif = img.getexif()
    exif[0x0112] = 9
    buf = _io.BytesIO()
    img.save(buf, format="JPEG", exif=exif.tobytes())
    _, orientation, _ = decode_image(buf.getvalue())
    assert orientation == 1
    mask = _io.BytesIO()
    _Image.fromarray(_np.pad(_np.full((2, 4), 255, _np.uint8), 1)).save(mask, format="PNG")
    sample = load_sample(buf.getvalue(), mask.getvalue())
    assert not any("exif" in n for n in sample.notes), sample.notes
