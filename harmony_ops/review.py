"""The images a person needs to review one row without fetching its inputs: the composite, mask, ground truth
and the compare method's output at full resolution, a difference map and a thumbnail. Pure numpy/Pillow: the
jobs' CPU workers make them while the row's arrays are in memory (a report opened from file:// cannot compute
a difference in the browser: a canvas holding a file:// image is tainted)."""

from __future__ import annotations

import io

import cv2
import numpy as np
from PIL import Image

from .imageio import PNG_PARAMS, encode_image

HEAT_SCALE = 64.0  # mean absolute difference (0-255 levels) drawn at full colour
THUMB_SIDE = 128  # the row table shows 64 px wide: twice that for high-density screens
# Inferno-like colour map (value in [0, 1] -> RGB): black, purple, red, orange, pale yellow.
_HEAT_STOPS = np.array([0.0, 0.25, 0.5, 0.75, 1.0])
_HEAT_RGB = np.array([[0, 0, 4], [87, 16, 110], [188, 55, 84], [249, 142, 9], [252, 255, 164]], dtype=np.float64)

# A row's review files are named `<stem>.<ext>`; the report finds them by stem in the row's `review` cell.
COMPOSITE, HARMONIZED, COMPARE, REAL, MASK, DIFFERENCE, THUMB = (
    "composite", "harmonized", "compare", "real", "mask", "difference", "thumb")
# The mean absolute difference rounded to a level (0-255) -> its colour: the map is one table lookup per pixel.
_HEAT_LUT = None


def _lut() -> np.ndarray:
    global _HEAT_LUT
    if _HEAT_LUT is None:
        _HEAT_LUT = heat_colours(np.arange(256, dtype=np.float64)).reshape(256, 1, 3)
    return _HEAT_LUT


def abs_difference(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Per-pixel mean absolute difference over the channels, float32 in 0-255 levels."""
    return np.abs(a.astype(np.int16) - b.astype(np.int16)).mean(axis=2, dtype=np.float32)


def heat_colours(err: np.ndarray, scale: float = HEAT_SCALE) -> np.ndarray:
    """`err` (levels) coloured black -> purple -> orange -> yellow, saturating at `scale`: uint8 H x W x 3."""
    t = np.clip(np.asarray(err, dtype=np.float64) / scale, 0.0, 1.0)
    rgb = np.stack([np.interp(t, _HEAT_STOPS, _HEAT_RGB[:, c]) for c in range(3)], axis=-1)
    return np.round(rgb).astype(np.uint8)


def difference_map(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The full-resolution heat map of how `a` differs from `b` (same size, uint8 RGB): the mean absolute
    difference over the channels, rounded to a level, coloured by `heat_colours` (at HEAT_SCALE)."""
    if a.shape != b.shape:
        raise ValueError(f"difference of images of different sizes: {a.shape} and {b.shape}")
    level = cv2.transform(cv2.absdiff(a, b), np.full((1, 3), 1 / 3, np.float32))  # uint8, rounded
    return cv2.LUT(cv2.merge([level, level, level]), _lut())


def thumbnail(img: np.ndarray, side: int = THUMB_SIDE) -> np.ndarray:
    """At most `side` px on the long side, area-averaged (never enlarged). Pillow's thumbnail reduces by an
    integer factor first: half the time of one OpenCV INTER_AREA resize at 12 MP, same look."""
    if max(img.shape[:2]) <= side:
        return img
    im = Image.fromarray(img)
    im.thumbnail((side, side), Image.Resampling.BOX, reducing_gap=2.0)
    return np.asarray(im)


def browser_format(data: bytes | None) -> str | None:
    """The extension of an encoded image every browser shows as it is (JPEG, PNG, WebP), else None."""
    if not data:
        return None
    if data[:3] == b"\xff\xd8\xff":
        return "jpg"
    if data[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "webp"
    return None


def _jpeg(img: np.ndarray, quality: int = 95) -> bytes:
    buf = io.BytesIO()
    # 4:4:4: no chroma subsampling, so a colour edge at 400 % zoom is the image's, not the encoder's.
    Image.fromarray(img).save(buf, format="JPEG", quality=quality, subsampling=0)
    return buf.getvalue()


def _png(img: np.ndarray) -> bytes:
    """Lossless, at OpenCV's fast settings (harmony_ops.imageio.encode_image's)."""
    return encode_image(img, "png") if img.ndim == 3 else cv2.imencode(".png", img, PNG_PARAMS)[1].tobytes()


def _photo(name: str, img: np.ndarray, source: bytes | None) -> tuple[str, bytes]:
    """A photograph's file: its source bytes as they are where a browser shows them so (no re-encode, exact)."""
    ext = browser_format(source)
    return (f"{name}.{ext}", source) if ext else (f"{name}.jpg", _jpeg(img))


def review_files(composite: np.ndarray, harmonized: np.ndarray, mask: np.ndarray, real: np.ndarray | None = None,
                 compare: np.ndarray | None = None, *, with_harmonized: bool = True, composite_source: bytes | None = None,
                 real_source: bytes | None = None, harmonized_source: bytes | None = None,
                 compare_source: bytes | None = None) -> dict[str, bytes]:
    """{file name: encoded bytes} for one row. `mask`: uint8 H x W (its grey levels kept). The difference map is
    the harmonized image against the ground truth when there is one, else against the composite (what the model
    changed). `with_harmonized=False` where the harmonized image already lies beside the report (harmonize's
    images/). `*_source`: the files as read, for a caller that knows a browser shows them
    as the arrays are (no orientation or conversion applied): written as they are. `harmonized` and `compare` of
    another size than the composite are shown as they are; the difference then uses `harmonized` resized."""
    h, w = composite.shape[:2]
    same = harmonized if harmonized.shape[:2] == (h, w) else cv2.resize(harmonized, (w, h), interpolation=cv2.INTER_CUBIC)
    files = dict([_photo(COMPOSITE, composite, composite_source)])
    files[f"{MASK}.png"] = _png(mask)
    files[f"{DIFFERENCE}.png"] = _png(difference_map(same, real if real is not None else composite))
    files[f"{THUMB}.jpg"] = _jpeg(thumbnail(harmonized), quality=85)
    if with_harmonized:
        files.update([_photo(HARMONIZED, harmonized, harmonized_source)])
    if real is not None:
        files.update([_photo(REAL, real, real_source)])
    if compare is not None:
        files.update([_photo(COMPARE, compare, compare_source)])
    return files


def find(names, stem: str) -> str | None:
    """The file of `stem` among a row's review file names."""
    return next((n for n in names if n.rsplit(".", 1)[0] == stem), None)
