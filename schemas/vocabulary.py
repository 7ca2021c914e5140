"""The values the tables' status, reason and label columns may hold: defined once, imported everywhere.

Plain Python (no pandera) so that model code in `harmony_ops` can raise with these kinds too.
`StrEnum` members are `str`s: they compare equal to their values, go into pandas and Arrow as
plain strings, and format as their values.
"""

from __future__ import annotations

import re
from enum import StrEnum


class Status(StrEnum):
    """A metrics row's status. Rows start `pending`; every stage works on pending rows only."""

    PENDING = "pending"
    OK = "ok"
    SKIPPED = "skipped"  # done by an earlier run with the same configuration key (resume)
    FAILED = "failed"  # the row was valid but could not be processed: see error_type
    INVALID = "invalid"  # the manifest row breaks the schema: never fetched


FINAL_STATUSES = (Status.OK, Status.FAILED, Status.INVALID, Status.SKIPPED)
DONE = (Status.OK, Status.SKIPPED)
BAD = (Status.FAILED, Status.INVALID)


class DrawStatus(StrEnum):
    """A row of `harmony synthesize`'s parameter table (one draw, or one unusable input row)."""

    KEPT = "kept"
    REJECTED = "rejected"
    FAILED = "failed"
    INVALID = "invalid"


class ErrorKind(StrEnum):
    """Machine-readable reasons (`error_type` in metrics, `reason` in synthesis parameters)."""

    # manifest rows
    INVALID_ROW = "invalid_row"
    DUPLICATE_ID = "duplicate_id"
    DUPLICATE_NAME = "duplicate_name"
    URI_NOT_ALLOWED = "uri_not_allowed"  # outside the manifest's storage and --allow-uri (or a redirect)
    # storage
    MISSING_OBJECT = "missing_object"
    STORAGE_ERROR = "storage_error"
    # decoding and input guards (raised by harmony_ops.imageio / inputs)
    EMPTY_FILE = "empty_file"
    CORRUPT = "corrupt"
    UNREADABLE = "unreadable"
    TOO_LARGE = "too_large"
    TOO_SMALL = "too_small"
    EMPTY_MASK = "empty_mask"
    FULL_MASK = "full_mask"
    SIZE_MISMATCH = "size_mismatch"
    DECODE_ERROR = "decode_error"
    # model and output
    MODEL_ERROR = "model_error"
    OUT_OF_MEMORY = "out_of_memory"
    WORKER_CRASHED = "worker_crashed"  # the row kept killing its worker process (bounded retries)
    FINISH_ERROR = "finish_error"
    UNSAFE_OUTPUT = "unsafe_output"
    ENCODE_ERROR = "encode_error"
    WRITE_ERROR = "write_error"
    # evaluation
    MISSING_REAL = "missing_real"
    MISSING_PREDICTION = "missing_prediction"
    METRICS_ERROR = "metrics_error"
    # synthesis draws
    NO_DONOR = "no_donor"
    FMSE_UNDEFINED = "fmse_undefined"
    FMSE_BELOW_RANGE = "fmse_below_range"
    FMSE_ABOVE_RANGE = "fmse_above_range"
    NOT_SELECTED = "not_selected"  # inverse synthesis: another candidate in range had a larger fMSE


# Foreground-ratio buckets of the iHarmony4 protocol: [0, 5%), [5%, 15%), [15%, 100%].
FG_BUCKETS: tuple[str, ...] = ("0-5%", "5-15%", "15-100%")
# iHarmony4's subsets, in the paper's table order.
IHARMONY4_SUBSETS: tuple[str, ...] = ("HCOCO", "HAdobe5k", "HFlickr", "Hday2night")

# An id names an output file: one path segment that cannot climb out of its folder on any file
# system or object store. \Z, not $: "$" also matches before a trailing newline.
SEGMENT = re.compile(r"[A-Za-z0-9._-]+")
ID_MAX_LENGTH = 200
ID_PATTERN = rf"^{SEGMENT.pattern}\Z"
ID_RULE = f"id: must be one file name of [A-Za-z0-9._-], at most {ID_MAX_LENGTH} characters, without '..'"


def is_safe_name(name: object) -> bool:
    """An id (or a name derived from one): a SEGMENT of at most ID_MAX_LENGTH characters without '..'."""
    return isinstance(name, str) and len(name) <= ID_MAX_LENGTH and bool(SEGMENT.fullmatch(name)) and ".." not in name
