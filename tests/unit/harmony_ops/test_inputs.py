"""`load_sample` orients every file as a viewer shows it, then compares sizes (issue 11, item 2)."""

import io

import numpy as np
import pytest
from PIL import Image, ImageOps

from harmony_ops.imageio import ImageError
from harmony_ops.inputs import load_sample
from tests.conftest import png_bytes


def tagged(arr: np.ndarray, orientation: int) -> bytes:
    """Lossless PNG carrying an EXIF orientation tag."""
    exif = Image.Exif()
    exif[0x0112] = orientation
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG", exif=exif.tobytes())
    return buf.getvalue()


def shown(arr: np.ndarray, orientation: int) -> np.ndarray:
    """What a viewer shows for raw pixels tagged `orientation`: PIL's own exif_transpose as the oracle."""
    return np.asarray(ImageOps.exif_transpose(Image.open(io.BytesIO(tagged(arr, orientation)))))


@pytest.mark.parametrize("orientation", [5, 6, 7, 8])
def test_mask_and_ground_truth_saved_upright_match_a_tagged_composite(scene, orientation):
    """The phone-photo case: the composite carries its tag, mask and ground truth were saved upright
    without one (as segmentation tools and editors save them): only the composite is rotated."""
    comp, mask, real = scene
    s = load_sample(tagged(comp, orientation), png_bytes(shown(mask, orientation)), png_bytes(shown(real, orientation)))
    assert np.array_equal(s.composite, shown(comp, orientation))
    assert np.array_equal(s.mask, (shown(mask, orientation) > 0).astype(np.float32))
    assert np.array_equal(s.real, shown(real, orientation))
    assert f"composite_exif_rotated_{orientation}" in s.notes and "exif_orientation_composite_only" in s.notes
    assert not any(n.startswith(("mask_exif_rotated", "real_exif_rotated")) for n in s.notes), s.notes


@pytest.mark.parametrize("orientation", [2, 3, 4, 5, 6, 7, 8])
def test_untagged_files_at_the_raw_size_are_rotated_with_the_composite(scene, orientation):
    """The documented mask rule, and ground truth the same way: drawn on the stored pixels, so both turn."""
    comp, mask, real = scene
    s = load_sample(tagged(comp, orientation), png_bytes(mask), png_bytes(real))
    assert np.array_equal(s.composite, shown(comp, orientation))
    assert np.array_equal(s.mask, (shown(mask, orientation) > 0).astype(np.float32))
    assert np.array_equal(s.real, shown(real, orientation))
    for note in (f"composite_exif_rotated_{orientation}", f"mask_exif_rotated_{orientation}",
                 f"real_exif_rotated_{orientation}", "exif_orientation_both"):
        assert note in s.notes, (note, s.notes)


def test_each_file_with_its_own_tag_uses_it(scene):
    comp, mask, real = scene
    # composite upright without a tag; mask and ground truth raw with their own tags
    s = load_sample(png_bytes(shown(comp, 6)), tagged(mask, 6), tagged(real, 6))
    assert np.array_equal(s.composite, shown(comp, 6)) and np.array_equal(s.real, shown(real, 6))
    assert np.array_equal(s.mask, (shown(mask, 6) > 0).astype(np.float32))
    assert {"mask_exif_rotated_6", "real_exif_rotated_6", "exif_orientation_own"} <= set(s.notes)
    assert not any(n.startswith("composite_exif") for n in s.notes)
    # a tagged composite and a ground truth at the raw size with another tag of its own: the own tag wins
    # (stored upside down and tagged 8, it shows as the composite does under 6)
    s = load_sample(tagged(comp, 6), png_bytes(mask), tagged(np.ascontiguousarray(real[::-1, ::-1]), 8))
    assert np.array_equal(s.real, shown(real, 6)) and "real_exif_rotated_8" in s.notes


def test_mask_at_raw_size_and_ground_truth_upright_in_one_row(scene):
    comp, mask, real = scene
    s = load_sample(tagged(comp, 6), png_bytes(mask), png_bytes(shown(real, 6)))
    assert np.array_equal(s.real, shown(real, 6))
    assert {"mask_exif_rotated_6", "exif_orientation_both"} <= set(s.notes)
    assert not any(n.startswith("real_exif") for n in s.notes)


def test_ground_truth_of_neither_size_is_a_size_mismatch(scene):
    comp, mask, real = scene
    with pytest.raises(ImageError) as e:
        load_sample(tagged(comp, 6), png_bytes(mask), png_bytes(real[:-2]))
    assert e.value.kind == "size_mismatch"
    assert str(e.value) == "ground truth is 120x94 but composite is 96x120"


def test_untagged_files_get_no_orientation_notes(scene):
    comp, mask, real = scene
    s = load_sample(png_bytes(comp), png_bytes(mask), png_bytes(real))
    assert s.notes == []
