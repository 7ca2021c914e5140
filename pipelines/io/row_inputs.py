"""A manifest row's input files, fetched and decoded as every job that reads them does: a composite and
its mask, or a cutout placed on its background (schemas/manifest.py), and the optional ground truth.
Shared by harmonize's decode and finish stages and `harmony validate --deep`."""

from __future__ import annotations

import pandas as pd

from harmony_ops.inputs import Sample, load_cutout_sample, load_sample
from pipelines.config import FetchSettings
from pipelines.io.storage import is_uri, read_with_retries

# The columns a row's inputs are read from.
INPUT_COLUMNS = ("composite", "mask", "real", "layout", "foreground", "background", "x", "y", "scale")


def fetch_inputs(row, fetch: FetchSettings) -> tuple[bytes, bytes, bytes | None]:
    """The row's encoded files: (composite, mask, real) or, for a cutout row, (foreground, background, real).
    Raises what the storage raises (the caller classifies it)."""
    opts, retries, until = fetch.storage_options, fetch.retries, fetch.until()  # one deadline for the row's reads
    cutout = row["layout"] == "cutout"
    first = read_with_retries(row["foreground" if cutout else "composite"], opts, retries, until)
    second = read_with_retries(row["background" if cutout else "mask"], opts, retries, until)
    real = read_with_retries(row["real"], opts, retries, until) if is_uri(row["real"]) else None
    return first, second, real


def load_row(row, first: bytes, second: bytes, real: bytes | None, max_pixels: int) -> tuple[Sample, object]:
    """(sample, the base a soft paste-back blends onto: a cutout's background, else None); raises ImageError."""
    if row["layout"] == "cutout":
        scale = 1.0 if pd.isna(row["scale"]) else float(row["scale"])  # Arrow brings nulls back as NaN or NA
        return load_cutout_sample(first, second, int(row["x"]), int(row["y"]), scale, real, max_pixels=max_pixels)
    return load_sample(first, second, real, max_pixels=max_pixels), None
