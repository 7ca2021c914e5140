"""Guarded image decoding and encoding.

Every way an input can be wrong raises `ImageError` with a machine-readable `kind`, so a
batch job can turn it into a row's status and reason instead of crashing.
"""

from __future__ import annotations

import io
import warnings

import cv2
import numpy as np
from PIL import Image, UnidentifiedImageError
from schemas.vocabulary import ErrorKind

DEFAULT_MAX_PIXELS = 64_000_000  # about 8000 x 8000
ENCODE_FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP"}


class ImageError(ValueError):
    def __init__(self, kind: str, message: str):
        super().__init__(message)
        self.kind = kind


def _open(data: bytes, what: str, max_pixels: int) -> Image.Image:
    if not data:
        raise ImageError(ErrorKind.EMPTY_FILE, f"{what} is an empty file")
    with warnings.catch_warnings():
        # PIL only warns between MAX_IMAGE_PIXELS and twice that; make every excess an error.
        warnings.simplefilter("error", Image.DecompressionBombWarning)
        try:
            img = Image.open(io.BytesIO(data))
            w, h = img.size
            if w * h > max_pixels:
                raise ImageError(ErrorKind.TOO_LARGE, f"{what} is {w}x{h} = {w * h} pixels, over the limit of {max_pixels}")
            img.load()
        except ImageError:
            raise
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageError(ErrorKind.TOO_LARGE, f"{what}: {exc}") from exc
        except UnidentifiedImageError as exc:
            raise ImageError(ErrorKind.UNREADABLE, f"{what} is not a recognised image") from exc
        except MemoryError as exc:  # a crafted header can ask a decoder for huge buffers
            raise ImageError(ErrorKind.TOO_LARGE, f"{what} needs more memory to decode than is available") from exc
        except Exception as exc:  # noqa: BLE001 - malformed files raise OSError, SyntaxError, TypeError, struct.error, ...
            raise ImageError(ErrorKind.CORRUPT, f"{what} is truncated or corrupt: {type(exc).__name__}: {exc}") from exc
    return img


def _guarded(what: str, fn, *args):
    """Run a conversion of a decoded image; a mode PIL cannot convert is this input's fault."""
    try:
        return fn(*args)
    except ImageError:
        raise
    except MemoryError as exc:
        raise ImageError(ErrorKind.TOO_LARGE, f"{what} needs more memory to convert than is available") from exc
    except Exception as exc:  # noqa: BLE001
        raise ImageError(ErrorKind.UNREADABLE, f"{what} has an unsupported pixel format ({type(exc).__name__}: {exc})") from exc


def _orientation(img: Image.Image) -> int:
    """The EXIF orientation, 1 (upright) for a missing, malformed or undefined value (EXIF defines 1 to 8)."""
    try:
        v = int(img.getexif().get(0x0112, 1) or 1)
    except Exception:  # noqa: BLE001 - malformed EXIF must not fail the image
        return 1
    return v if v in _TRANSPOSE else 1


def _to_8bit(img: Image.Image) -> tuple[Image.Image, list[str]]:
    """16/32-bit integer and float modes to 8-bit L, scaling by the mode's range. Float values that are not
    numbers are defined, with a note: NaN is 0 (background, for a mask), +inf the top of the range, -inf 0; the
    range (0-1 or 0-255) is judged on the finite values."""
    a = np.asarray(img)
    notes = []
    if img.mode.startswith("I;16") or (img.mode == "I" and a.max(initial=0) > 255):
        a = (a.astype(np.float64) / 65535.0 * 255.0).round()
    elif img.mode == "F":
        a = a.astype(np.float64)
        finite = np.isfinite(a)
        top = 1.0 if a[finite].max(initial=0) <= 1.0 else 255.0
        if not finite.all():
            notes.append("nonfinite_values")
            a = np.where(np.isnan(a), 0.0, np.clip(a, 0.0, top))
        a = a * (255.0 / top)
    return Image.fromarray(np.clip(a, 0, 255).astype(np.uint8), mode="L"), notes


def _normalise_mode(img: Image.Image) -> tuple[Image.Image, list[str]]:
    """High bit depths to 8-bit and palettes to RGBA: the modes both images and masks start from."""
    notes = []
    if img.mode in ("I", "I;16", "I;16B", "I;16L", "F"):
        img, notes = _to_8bit(img)
        notes.append("converted_high_bit_depth")
    if img.mode == "P":
        img = img.convert("RGBA")
    return img, notes


def to_rgb(img: Image.Image) -> tuple[Image.Image, list[str]]:
    img, notes = _normalise_mode(img)
    if img.mode in ("RGBA", "LA", "PA"):
        notes.append("dropped_alpha")
    if img.mode == "CMYK":
        notes.append("converted_cmyk")
    if img.mode != "RGB":
        img = img.convert("RGB")
    return img, notes


def decode_image(data: bytes, what: str = "image", max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[Image.Image, int, list[str]]:
    """Decode to an RGB PIL image without applying EXIF orientation (the caller decides)."""
    img = _open(data, what, max_pixels)
    orientation = _orientation(img)
    rgb, notes = _guarded(what, to_rgb, img)
    return rgb, orientation, notes


def decode_mask(data: bytes, what: str = "mask", max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[Image.Image, int, list[str]]:
    """Decode to an 8-bit L image; alpha-only masks (transparent background) use their alpha, and masks
    stored as 0/1 come out as 0/255 (note "01")."""
    img = _open(data, what, max_pixels)
    orientation = _orientation(img)
    img, notes = _guarded(what, _mask_to_l, img)
    return img, orientation, notes


_INTEGER_MODES = ("I", "I;16", "I;16B", "I;16L")


def _mask_to_l(img: Image.Image) -> tuple[Image.Image, list[str]]:
    shown, notes = _shown_mask(img)
    # The values as stored: palette indices, 16/32-bit integers before scaling, else the 8-bit values.
    stored = np.asarray(img) if img.mode == "P" or img.mode in _INTEGER_MODES else np.asarray(shown)
    if stored.size == 0 or stored.max() != 1:
        return shown, notes
    if img.mode == "P" and _black_and_white(np.asarray(shown)):
        return shown, notes  # its colours already say which index is foreground (e.g. an adaptive palette)
    # A mask stored as 0/1 (class indices): foreground is the value 1.
    return Image.fromarray(np.where(stored == 1, 255, 0).astype(np.uint8), mode="L"), [*notes, "01"]


def _shown_mask(img: Image.Image) -> tuple[Image.Image, list[str]]:
    """The mask as a viewer shows it, in 8-bit L: grey levels, or alpha where the background is transparent."""
    img, notes = _normalise_mode(img)
    if img.mode in ("RGBA", "LA") and np.asarray(img.getchannel("A")).min() < 255:
        img = img.getchannel("A")
        notes.append("mask_from_alpha")
    if img.mode != "L":
        img = img.convert("L")
    return img, notes


def _black_and_white(a: np.ndarray) -> bool:
    return bool(np.isin(a, (0, 255)).all() and (a == 0).any() and (a == 255).any())


# EXIF orientation -> the transposition that displays the stored pixels upright (as ImageOps.exif_transpose).
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def apply_orientation(img: Image.Image, orientation: int) -> Image.Image:
    """Transpose by an orientation value directly: the image's own (possibly malformed) EXIF block
    is never parsed here, which matters when a mask is rotated by its composite's tag."""
    method = _TRANSPOSE.get(orientation)
    return img if method is None else img.transpose(method)


def exif_notes(orientation: int) -> list[str]:
    """The note for an orientation actually applied: ["exif_rotated_<n>"], or [] for none (1, unknown values)."""
    return [f"exif_rotated_{orientation}"] if orientation in _TRANSPOSE else []


def orient_companion(comp_raw_size: tuple[int, int], comp_orientation: int, img: Image.Image,
                     orientation: int) -> tuple[Image.Image, int, str]:
    """Orient a file that belongs to a composite (its mask, its ground truth) as a viewer shows the pair.

    A file with its own orientation tag is oriented by it ("own"). An untagged file stored at the
    composite's raw (unrotated) size was made from the stored pixels: it gets the composite's
    orientation ("both"). An untagged file of another size was saved upright, as segmentation tools and
    editors save it, and already matches the oriented composite: left alone ("composite_only"). "none":
    neither is tagged. Returns the image, the orientation applied to it (1: none) and how.
    """
    if orientation not in (None, 1):
        return apply_orientation(img, orientation), orientation, "own"
    if comp_orientation in (None, 1):
        return img, 1, "none"
    if img.size == comp_raw_size:
        return apply_orientation(img, comp_orientation), comp_orientation, "both"
    return img, 1, "composite_only"


def mask_array(mask: Image.Image) -> tuple[np.ndarray, bool]:
    """Binary float32 mask (>= 0.5 of full scale is foreground) and whether the input was not binary."""
    a = image_array(mask)
    # Binary = no value strictly between 0 and 255 (OpenCV's range test: ~30x numpy's isin).
    binary = cv2.countNonZero(cv2.inRange(a, 1, 254)) == 0
    return (a >= 128).astype(np.float32), not binary


def _arrow_pixels(img: Image.Image) -> np.ndarray | None:
    """A zero-copy uint8 view (H x W x 4 for RGB, stored as RGBX; H x W for L) of an image held in
    one memory block; None when Pillow holds it in several, or pyarrow is missing."""
    try:
        import pyarrow as pa

        arr = pa.array(img)
    except (ImportError, ValueError):  # "Image rows are not contiguous in memory"
        return None
    w, h = img.size
    child = arr.values if img.mode == "RGB" else arr
    data = np.frombuffer(child.buffers()[1], dtype=np.uint8, count=child.offset + len(child))[child.offset:]
    return data.reshape((h, w, 4) if img.mode == "RGB" else (h, w))


def image_array(img: Image.Image) -> np.ndarray:
    """The uint8 pixels of an "RGB" (H x W x 3) or "L" (H x W) image: `np.asarray(img)`'s values.

    Read through Pillow's Arrow export (zero-copy; RGB is stored as RGBX and repacked by OpenCV),
    4-8x faster than `np.asarray`'s tobytes. Arrow needs rows in one memory block; Pillow's
    default 16 MiB blocks hold an RGB image of up to ~4 MP, larger ones are read in strips of one
    block each (a crop, then Arrow). Raising the block size instead makes every larger
    allocation a fresh mmap, whose page faults cost more than the copy saves (BENCHMARKS.md).
    Other modes go through `np.asarray`. The array must not be written to (an "L" image's may
    be a view of the image's memory).
    """
    if img.mode not in ("RGB", "L"):
        return np.asarray(img, dtype=np.uint8)
    whole = _arrow_pixels(img)
    if whole is not None:
        return cv2.cvtColor(whole, cv2.COLOR_RGBA2RGB) if img.mode == "RGB" else whole
    w, h = img.size
    rows = Image.core.get_block_size() // (w * (4 if img.mode == "RGB" else 1))
    if rows < 1:
        return np.asarray(img, dtype=np.uint8)
    out = np.empty((h, w, 3) if img.mode == "RGB" else (h, w), dtype=np.uint8)
    for y in range(0, h, rows):
        strip = _arrow_pixels(img.crop((0, y, w, min(h, y + rows))))
        if strip is None:
            return np.asarray(img, dtype=np.uint8)
        if img.mode == "RGB":
            cv2.cvtColor(strip, cv2.COLOR_RGBA2RGB, dst=out[y : y + len(strip)])
        else:
            out[y : y + len(strip)] = strip
    return out


# Encoder settings, chosen for CPU time per image (BENCHMARKS.md, `harmony bench --sections cpu`):
# JPEG: libjpeg-turbo through Pillow, quality 95, no Huffman optimisation (2x the time for ~20%
# smaller files). WebP: quality 95 at method 0, 3x faster than Pillow's default method 4 for
# ~1 dB less PSNR at a similar size. PNG: zlib level 1 with the "up" row filter through OpenCV's
# libpng, half the time of Pillow's adaptive filtering at level 1 and no larger, pixel-identical.
WEBP_METHOD = 0
PNG_PARAMS = [cv2.IMWRITE_PNG_COMPRESSION, 1, cv2.IMWRITE_PNG_FILTER, cv2.IMWRITE_PNG_FILTER_UP]


def encode_image(img: np.ndarray, fmt: str = "png", quality: int = 95) -> bytes:
    """Encode uint8 H x W x 3; PNG is lossless (fast settings, see above)."""
    try:
        pil_fmt = ENCODE_FORMATS[fmt.lower()]
    except KeyError:
        raise ValueError(f"image format must be one of {sorted(ENCODE_FORMATS)}, got {fmt!r}") from None
    arr = np.asarray(img)
    if pil_fmt == "PNG" and arr.ndim == 3 and arr.shape[2] == 3 and arr.dtype == np.uint8:
        ok, buf = cv2.imencode(".png", cv2.cvtColor(arr, cv2.COLOR_RGB2BGR), PNG_PARAMS)
        if not ok:
            raise ValueError("PNG encoding failed")
        return buf.tobytes()
    buf = io.BytesIO()
    kwargs = {"PNG": {"compress_level": 1}, "WEBP": {"quality": quality, "method": WEBP_METHOD}}.get(pil_fmt, {"quality": quality})
    Image.fromarray(img).save(buf, format=pil_fmt, **kwargs)
    return buf.getvalue()


def decode_cutout(data: bytes, what: str = "foreground", max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """An RGBA cutout as (RGB uint8 H x W x 3, alpha uint8 H x W), oriented by its EXIF tag; an image
    without an alpha channel is opaque (note "opaque_cutout")."""
    raw = _open(data, what, max_pixels)
    img = apply_orientation(raw, _orientation(raw))

    def split(im: Image.Image) -> tuple[np.ndarray, np.ndarray, list[str]]:
        im, notes = _normalise_mode(im)
        if im.mode in ("RGBA", "LA", "PA") or "transparency" in im.info:
            rgba = im.convert("RGBA")
            return np.asarray(rgba)[..., :3].copy(), np.asarray(rgba)[..., 3].copy(), notes
        rgb = im.convert("RGB")
        return np.asarray(rgb).copy(), np.full(rgb.size[::-1], 255, np.uint8), [*notes, "opaque_cutout"]

    return _guarded(what, split, img)
