"""A row's review images (harmony_ops/review.py) written under the output prefix, where the report finds them:
`report_files/rows/<row>/`. Shared by the jobs that write a report (harmonize, evaluate); runs in their CPU
workers, beside the row's own output."""

from __future__ import annotations

import numpy as np

from harmony_ops.review import review_files
from pipelines.config import FetchSettings
from pipelines.io.storage import join, write_with_retries
from pipelines.io.tables import REVIEW_DIR


def review_folder(output: str, row: int) -> str:
    return join(output, REVIEW_DIR, str(int(row)))


def review_mask(sample) -> np.ndarray:
    """The mask as a person should see it: its grey levels where it has them, else 0/255."""
    return sample.mask_grey if sample.mask_grey is not None else (sample.mask * 255).astype(np.uint8)


def shown_as_decoded(sample, what: str) -> bool:
    """Whether a browser shows `what`'s file ("composite", "real") as the sample holds it: decoded with no
    conversion and no orientation applied (its notes say so), so the file itself can be the review image."""
    return not any(n.startswith((f"{what}_", "exif_orientation_")) for n in sample.notes)


def sources(sample, composite: bytes | None, real: bytes | None) -> dict:
    """The `write_review` keywords that hand over the files as read, where a browser shows them as decoded."""
    return {"composite_source": composite if shown_as_decoded(sample, "composite") else None,
            "real_source": real if shown_as_decoded(sample, "real") else None}


def write_review(output: str, row: int, fetch: FetchSettings, composite: np.ndarray, harmonized: np.ndarray,
                 mask_grey: np.ndarray, real: np.ndarray | None = None, compare: np.ndarray | None = None, *,
                 with_harmonized: bool = True, **given: bytes | None) -> tuple[str | None, str | None]:
    """(the `review` cell: the written file names, comma-separated; a note when writing failed). A failure here
    never fails the row: its result is already written, the review images are a view of it. `given`: the
    `*_source` files of `review_files`."""
    try:
        files = review_files(composite, harmonized, mask_grey, real, compare, with_harmonized=with_harmonized, **given)
        folder = review_folder(output, row)
        for name, data in files.items():
            write_with_retries(join(folder, name), data, fetch.storage_options, fetch.retries)
    except Exception as exc:  # noqa: BLE001
        return None, f"review_images_failed_{type(exc).__name__}"
    return ",".join(files), None
