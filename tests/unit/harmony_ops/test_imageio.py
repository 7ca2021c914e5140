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
