"""`harmony evaluate`'s prediction decoding: a prediction is scored as a viewer shows it (issue 11, item 2)."""

import numpy as np

from pipelines.jobs.evaluate.stage import decode_prediction
from tests.conftest import png_bytes
from tests.unit.harmony_ops.test_inputs import shown, tagged


def test_prediction_with_its_own_tag_is_rotated_and_noted(scene):
    pred = scene[0]
    arr, notes = decode_prediction(tagged(pred, 6), 10**8)
    assert np.array_equal(arr, shown(pred, 6)) and arr.shape[:2] == pred.shape[1::-1]
    assert notes == ["prediction_exif_rotated_6"]
    _, notes = decode_prediction(tagged(pred, 3), 10**8, what="compare")
    assert notes == ["compare_exif_rotated_3"]


def test_untagged_prediction_is_left_as_stored(scene):
    pred = scene[0]
    arr, notes = decode_prediction(png_bytes(pred), 10**8)
    assert np.array_equal(arr, pred) and notes == []
