"""Decode and check one composite/mask(/ground truth) triple; shared by every job and the single-image command."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .compositing import place_cutout
from .imageio import (DEFAULT_MAX_PIXELS, ImageError, apply_orientation, decode_cutout, decode_image, decode_mask, exif_notes,
                      image_array, mask_array, orient_companion)
from schemas.vocabulary import ErrorKind


@dataclass
class Sample:
    composite: np.ndarray  # uint8 H x W x 3
    mask: np.ndarray  # float32 H x W in {0, 1}
    real: np.ndarray | None = None  # uint8 H x W x 3, ground truth when given
    mask_grey: np.ndarray | None = None  # uint8 H x W, the mask's 8-bit values as decoded and oriented
    notes: list[str] = field(default_factory=list)  # conversions applied, e.g. "mask_binarized"

    @property
    def fg_ratio(self) -> float:
        return float(self.mask.mean())


def load_sample(
    composite: bytes,
    mask: bytes,
    real: bytes | None = None,
    max_pixels: int = DEFAULT_MAX_PIXELS,
) -> Sample:
    """Raises ImageError(kind, message) for anything a harmonizer cannot run on.

    Each file is oriented as a viewer shows it (`orient_companion`): the composite by its EXIF tag, the
    mask and the ground truth by their own tags, else like the composite when stored at its raw size;
    sizes are compared after that. Notes say what was rotated (`composite_exif_rotated_6`, ...).
    """
    comp_img, comp_or, comp_notes = decode_image(composite, "composite", max_pixels)
    mask_img, mask_or, mask_notes = decode_mask(mask, "mask", max_pixels)
    raw_size = comp_img.size
    comp_img = apply_orientation(comp_img, comp_or)
    mask_img, mask_applied, how = orient_companion(raw_size, comp_or, mask_img, mask_or)
    notes = [f"composite_{n}" for n in comp_notes + exif_notes(comp_or)] \
        + [f"mask_{n}" for n in mask_notes + exif_notes(mask_applied)]
    if how != "none":
        notes.append(f"exif_orientation_{how}")
    if mask_img.size != comp_img.size:
        raise ImageError(ErrorKind.SIZE_MISMATCH,
            f"mask is {mask_img.size[0]}x{mask_img.size[1]} but composite is {comp_img.size[0]}x{comp_img.size[1]}",
        )
    m, non_binary = mask_array(mask_img)
    if non_binary:
        notes.append("mask_binarized")
    if not m.any():
        raise ImageError(ErrorKind.EMPTY_MASK, "mask has no foreground pixel (after binarising at 0.5)")
    if m.all():
        raise ImageError(ErrorKind.FULL_MASK, "mask covers the whole image: there is no background to harmonize against")
    gt = None
    if real is not None:
        real_img, real_or, _ = decode_image(real, "real", max_pixels)
        # Ground truth follows the mask's rule: its own tag, else the composite's when stored at its raw size.
        real_img, real_applied, _ = orient_companion(raw_size, comp_or, real_img, real_or)
        notes += [f"real_{n}" for n in exif_notes(real_applied)]
        if real_img.size != comp_img.size:
            raise ImageError(ErrorKind.SIZE_MISMATCH,
                f"ground truth is {real_img.size[0]}x{real_img.size[1]} but composite is {comp_img.size[0]}x{comp_img.size[1]}",
            )
        gt = image_array(real_img)
    return Sample(composite=image_array(comp_img), mask=m, real=gt, notes=notes, mask_grey=image_array(mask_img))


def load_cutout_sample(foreground: bytes, background: bytes, x: int, y: int, scale: float = 1.0,
                       real: bytes | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> tuple[Sample, np.ndarray]:
    """A cutout row: the RGBA `foreground` placed on `background` at (x, y) (its top-left corner, in
    background pixels; scaled by `scale` first). Returns the sample (the alpha-over composite at the
    background's size, the alpha binarised at 0.5 as its mask and kept whole as `mask_grey`) and the
    background, which the soft paste-back blends onto. A cutout with no opaque pixel on the background is
    `empty_mask`; one placed partly outside it is clipped (note "cutout_clipped")."""
    fg, alpha, fg_notes = decode_cutout(foreground, "foreground", max_pixels)
    scaled = round(alpha.shape[0] * scale) * round(alpha.shape[1] * scale)
    if scaled > max_pixels:  # the decode guard holds for what the scale makes of the cutout, too
        raise ImageError(ErrorKind.TOO_LARGE, f"the cutout scaled by {scale:g} would have {scaled} pixels, over the "
                         f"limit of {max_pixels}")
    bg_img, bg_or, bg_notes = decode_image(background, "background", max_pixels)
    bg_img = apply_orientation(bg_img, bg_or)
    bg = image_array(bg_img)
    composite, full_alpha, clipped = place_cutout(bg, fg, alpha, x, y, scale)
    notes = [f"foreground_{n}" for n in fg_notes] + [f"background_{n}" for n in bg_notes + exif_notes(bg_or)]
    if clipped:
        notes.append("cutout_clipped")
    m = (full_alpha >= 128).astype(np.float32)
    if not m.any():
        raise ImageError(ErrorKind.EMPTY_MASK, "the cutout has no opaque pixel (alpha >= 0.5) on the background"
                         + (" (it lies outside it)" if clipped else ""))
    if m.all():
        raise ImageError(ErrorKind.FULL_MASK, "the cutout covers the whole background: there is nothing to harmonize against")
    gt = None
    if real is not None:
        real_img, real_or, _ = decode_image(real, "real", max_pixels)
        real_img = apply_orientation(real_img, real_or)
        if real_img.size != bg_img.size:
            raise ImageError(ErrorKind.SIZE_MISMATCH, f"ground truth is {real_img.size[0]}x{real_img.size[1]} but "
                             f"background is {bg_img.size[0]}x{bg_img.size[1]}")
        gt = image_array(real_img)
    return Sample(composite=composite, mask=m, real=gt, mask_grey=full_alpha, notes=notes), bg
