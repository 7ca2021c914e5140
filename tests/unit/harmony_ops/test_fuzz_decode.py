"""Fuzzing the guarded decoders: random bytes and mutated PNG/JPEG/WebP/GIF/TIFF files.

Whatever the input, `decode_image`, `decode_mask` and `load_sample` either succeed or raise
`ImageError` with a known `kind`; nothing else escapes (a batch job turns that error into a
row's status). Budget: a few hundred examples over small images with a small pixel limit.
"""

from __future__ import annotations

import io
import struct
import zlib

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from harmony_ops.imageio import ImageError, decode_image, decode_mask
from harmony_ops.inputs import load_sample

# PIL warns about the corrupt EXIF blocks it skips; that is expected here.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")

KINDS = {"empty_file", "unreadable", "corrupt", "too_large", "size_mismatch", "empty_mask", "full_mask"}
MAX_PIXELS = 200_000  # keeps every decoded candidate small, so the fuzz budget stays bounded
FUZZ = settings(max_examples=150, deadline=None, derandomize=True, database=None,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])


def _encode(arr: np.ndarray, fmt: str, **kw) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format=fmt, **kw)
    return buf.getvalue()


def _seeds() -> dict[str, bytes]:
    rng = np.random.default_rng(0)
    rgb = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
    mask = np.zeros((24, 32), np.uint8)
    mask[6:18, 8:24] = 255
    exif = Image.Exif()
    exif[0x0112] = 6
    return {
        "png": _encode(rgb, "PNG"),
        "png_mask": _encode(mask, "PNG"),
        "png_rgba": _encode(np.dstack([rgb, mask]), "PNG"),
        "png16": _encode(mask.astype(np.uint16) * 257, "PNG"),
        "jpeg": _encode(rgb, "JPEG", quality=90),
        "jpeg_exif": _encode(rgb, "JPEG", exif=exif.tobytes()),
        "webp": _encode(rgb, "WEBP"),
        "gif": _encode(mask, "GIF"),
        "tiff": _encode(rgb, "TIFF"),
        "bmp": _encode(rgb, "BMP"),
    }


SEEDS = _seeds()


def _png_declaring(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height but whose data is one tiny zlib stream."""

    def chunk(tag: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + tag + data + struct.pack(">I", zlib.crc32(tag + data) & 0xFFFFFFFF)

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b"")


def _check(fn, *args):
    try:
        fn(*args)
    except ImageError as exc:
        assert exc.kind in KINDS, exc.kind
        assert str(exc)


@st.composite
def mutated(draw):
    data = bytearray(SEEDS[draw(st.sampled_from(sorted(SEEDS)))])
    how = draw(st.sampled_from(["flip", "truncate", "header", "splice", "zero_run"]))
    if how == "flip":
        for _ in range(draw(st.integers(1, 8))):
            i = draw(st.integers(0, len(data) - 1))
            data[i] ^= 1 << draw(st.integers(0, 7))
    elif how == "truncate":
        data = data[: draw(st.integers(0, len(data) - 1))]
    elif how == "header":  # the first 64 bytes hold signatures, sizes, bit depths, colour types
        for _ in range(draw(st.integers(1, 4))):
            i = draw(st.integers(0, min(63, len(data) - 1)))
            data[i] = draw(st.integers(0, 255))
    elif how == "splice":
        i = draw(st.integers(0, len(data)))
        data = data[:i] + draw(st.binary(min_size=1, max_size=32)) + data[i:]
    else:
        i = draw(st.integers(0, len(data) - 1))
        n = draw(st.integers(1, 64))
        data[i : i + n] = b"\0" * len(data[i : i + n])
    return bytes(data)


@FUZZ
@given(st.binary(max_size=512))
def test_random_bytes_only_raise_image_errors(data):
    _check(decode_image, data, "image", MAX_PIXELS)
    _check(decode_mask, data, "mask", MAX_PIXELS)


@FUZZ
@given(mutated())
def test_mutated_images_only_raise_image_errors(data):
    _check(decode_image, data, "image", MAX_PIXELS)
    _check(decode_mask, data, "mask", MAX_PIXELS)


@FUZZ
@given(mutated(), mutated(), st.booleans())
def test_load_sample_on_mutated_inputs(comp, mask, with_real):
    _check(load_sample, comp, mask, comp if with_real else None, MAX_PIXELS)


@pytest.mark.parametrize("w,h", [(100_000, 100_000), (2**31 - 1, 1), (20_000, 20_000), (500, 401)])
def test_declared_size_over_the_limit_is_refused_before_decoding(w, h):
    with pytest.raises(ImageError) as e:
        decode_image(_png_declaring(w, h), "composite", MAX_PIXELS)
    assert e.value.kind == "too_large"


def test_pixel_limit_applies_to_masks_and_ground_truth():
    big = _encode(np.zeros((500, 500), np.uint8), "PNG")
    small = SEEDS["png"]
    for comp, mask, real in [(big, SEEDS["png_mask"], None), (small, big, None), (small, SEEDS["png_mask"], big)]:
        with pytest.raises(ImageError) as e:
            load_sample(comp, mask, real, MAX_PIXELS)
        assert e.value.kind == "too_large"


def test_mask_with_malformed_exif_rotated_by_the_composite_tag():
    """Found by this fuzzer: rotating a mask by its composite's EXIF tag used to parse the mask's own
    (broken) EXIF block and escape as SyntaxError."""
    rng = np.random.default_rng(1)
    rgb = rng.integers(0, 255, (24, 32, 3), dtype=np.uint8)
    exif = Image.Exif()
    exif[0x0112] = 6
    comp = _encode(rgb, "JPEG", exif=exif.tobytes())
    mask = np.zeros((24, 32), np.uint8)
    mask[6:18, 8:24] = 255
    # An RGB JPEG mask (converted to L on decode) whose EXIF block has a corrupt TIFF header.
    broken = _encode(np.dstack([mask] * 3), "JPEG", quality=100, exif=b"Exif\x00\x006M\x00\xfb\x00\x00\x00\x08")
    sample = load_sample(comp, broken, None, MAX_PIXELS)
    assert sample.composite.shape == (32, 24, 3) and sample.mask.shape == (32, 24)
    assert "exif_orientation_both" in sample.notes
