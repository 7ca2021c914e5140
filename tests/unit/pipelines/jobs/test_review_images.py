"""The jobs' review images land where the report looks for them; a storage failure is a note, not a failed row."""

from __future__ import annotations

import numpy as np

from harmony_ops import review
from pipelines.config import FetchSettings
from pipelines.jobs.review_images import review_folder, write_review


def test_written_under_report_files_and_named_in_the_review_cell(tmp_path):
    comp = np.full((12, 16, 3), 100, np.uint8)
    mask = np.zeros((12, 16), np.uint8)
    mask[3:9, 4:12] = 255
    cell, note = write_review(str(tmp_path), 7, FetchSettings(retries=0), comp, comp, mask)
    assert note is None
    folder = tmp_path / "report_files" / "rows" / "7"
    assert review_folder(str(tmp_path), 7) == str(folder)
    assert sorted(cell.split(",")) == sorted(p.name for p in folder.iterdir())
    assert review.find(cell.split(","), review.DIFFERENCE) and not review.find(cell.split(","), review.REAL)


def test_a_storage_failure_leaves_the_cell_empty_with_a_note(tmp_path):
    (tmp_path / "report_files").write_text("a file where a folder must go")
    comp = np.zeros((4, 4, 3), np.uint8)
    cell, note = write_review(str(tmp_path), 0, FetchSettings(retries=0), comp, comp, np.zeros((4, 4), np.uint8))
    assert cell is None and note.startswith("review_images_failed_")
