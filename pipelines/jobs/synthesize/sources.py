"""What `harmony synthesize` reads: input rows, their real images and masks, and the iHarmony4 names
and paths of the samples made from them."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

from harmony_ops.imageio import ImageError, apply_orientation, decode_image
from harmony_ops.inputs import load_sample
from harmony_ops.masks import random_mask
from harmony_ops.perturb import rng_for
from pipelines.jobs.synthesize.config import SynthesizeJobConfig
from pipelines.io.access import policy_for
from pipelines.io.manifest import manifest_dir, resolve_uri
from pipelines.io.storage import is_uri, read_with_retries
from schemas.vocabulary import ID_RULE, ErrorKind, is_safe_name

# Columns read from the input manifest (subset is optional; mask is needed with --mask-source given).
INPUT_COLUMNS = ("id", "real", "mask", "subset")
COMPOSITES, MASKS, REALS = "composite_images", "masks", "real_images"
FOREGROUNDS = "foregrounds"  # --layout cutout
# Scalar copies of these parameters go to their own columns (the JSON column has them all).
SCALAR_PARAMS = ("exposure_ev", "gamma", "contrast", "temperature", "tint", "saturation")


def sanitise_name(row_id: str) -> str:
    """The iHarmony4 <name> of a manifest id: the id itself, with `_` replaced by `-` so that
    `<name>_<m>_<k>` still splits into name, mask number and sample number."""
    return row_id.replace("_", "-")


def layout(name: str, m: int, k: int, composite_ext: str = "jpg") -> dict[str, str]:
    """Paths relative to the output prefix, in iHarmony4 naming: real `<name>.jpg`, mask
    `<name>_<m>.png`, composite `<name>_<m>_<k>.jpg` (`.png` for inverse synthesis, whose background
    must stay bit-identical); `id` is the composite's stem."""
    sample_id = f"{name}_{m}_{k}"
    return {
        "id": sample_id,
        "composite": f"{COMPOSITES}/{sample_id}.{composite_ext}",
        "mask": f"{MASKS}/{name}_{m}.png",
        "real": f"{REALS}/{name}.jpg",
        "foreground": f"{FOREGROUNDS}/{sample_id}.png",
    }


def input_columns(cfg: SynthesizeJobConfig) -> tuple[str, ...]:
    """The input columns a row must have for this configuration."""
    return ("id", "real") + (("mask",) if cfg.mask_source == "given" else ())


def mask_index(cfg: SynthesizeJobConfig, k: int) -> int:
    """Given masks: one mask per real image (m = 1, samples k = 1..K share it); random masks: one per
    sample (m = k)."""
    return 1 if cfg.mask_source == "given" else k


# A JSON Lines manifest's cells that were not text where text belongs, per row (set by `parse_json_lines`).
CELL_PROBLEMS = "cell_problems"


def parse_json_lines(batch: pd.DataFrame) -> pd.DataFrame:
    """Lines of a JSON Lines manifest (column `text`) to the input columns: text cells as they are, any other
    value null with the row's problem in CELL_PROBLEMS naming the column and the type; a line that is not a JSON
    object is a row whose problem says so."""
    out = []
    for line in batch["text"]:
        try:
            rec = json.loads(line)
        except ValueError as exc:
            rec, problems = {}, [f"line is not JSON ({exc})"]
        else:
            problems = [] if isinstance(rec, dict) else [f"line is a JSON {type(rec).__name__}, not an object"]
            rec = rec if isinstance(rec, dict) else {}
        row = {}
        for c in INPUT_COLUMNS:
            v = rec.get(c)
            if v is None or isinstance(v, str):
                row[c] = v
            else:
                row[c] = json.dumps(v) if c == "id" else None  # an id stays recognisable in the draws table
                problems.append(f"{c}: must be a string, not {type(v).__name__}")
        row[CELL_PROBLEMS] = "; ".join(problems) or None
        out.append(row)
    return pd.DataFrame(out, columns=[*INPUT_COLUMNS, CELL_PROBLEMS])


def input_problem(rec: dict, cfg: SynthesizeJobConfig) -> tuple[ErrorKind, str] | None:
    """Why an input row cannot be used, as (reason, message); None when it can. Rows are checked here,
    on the workers (the driver never holds the input manifest), with the jobs' access policy."""
    if rec.get(CELL_PROBLEMS):
        return ErrorKind.INVALID_ROW, rec[CELL_PROBLEMS]
    rid = rec.get("id")
    if not isinstance(rid, str) or not rid:
        return ErrorKind.INVALID_ROW, "id: must be a non-empty string"
    if not is_safe_name(rid):
        return ErrorKind.INVALID_ROW, ID_RULE
    longest = layout(sanitise_name(rid), mask_index(cfg, cfg.per_image), cfg.per_image)["id"]
    if not is_safe_name(longest):
        return ErrorKind.INVALID_ROW, f"id: too long for the sample ids it names (e.g. {len(longest)} characters > 200)"
    problems = []
    if not is_uri(rec.get("real")):
        problems.append("real: must be a non-empty string (required)")
    if cfg.mask_source == "given" and not is_uri(rec.get("mask")):
        problems.append("mask: must be a non-empty string (required with --mask-source given)")
    if problems:
        return ErrorKind.INVALID_ROW, "; ".join(problems)
    policy, base = policy_for(cfg.manifest, tuple(cfg.allow_uri)), manifest_dir(cfg.manifest)
    for column in ("real",) + (("mask",) if cfg.mask_source == "given" else ()):
        uri = resolve_uri(base, rec[column])
        why = policy.refusal(uri)
        if why:
            problems.append(f"{column}: {uri!r} is not allowed: {why}")
    return (ErrorKind.URI_NOT_ALLOWED, "; ".join(problems)) if problems else None


def text_cell(v) -> str | None:
    """A cell as text; missing cells (null, NaN, or empty as CSV has them) as None."""
    if v is None or (isinstance(v, float) and math.isnan(v)) or (isinstance(v, str) and not v.strip()):
        return None
    return v if isinstance(v, str) else str(v)


@dataclass
class Source:
    """A decoded input row: the real image (EXIF orientation applied) and its given mask, if any."""

    real: np.ndarray
    mask: np.ndarray | None
    notes: list[str]


def load_source(rec: dict, cfg: SynthesizeJobConfig) -> Source:
    """Fetch (with retries) and decode with the harmonize job's guards. Raises the storage client's
    exceptions or ImageError(kind, message)."""
    base = manifest_dir(cfg.manifest)
    until = cfg.fetch.until()  # one deadline for the row's reads
    real_bytes = read_with_retries(resolve_uri(base, rec["real"]), cfg.storage_options, cfg.retries, until)
    if cfg.mask_source == "given":
        mask_bytes = read_with_retries(resolve_uri(base, rec["mask"]), cfg.storage_options, cfg.retries, until)
        try:
            # The real image plays the composite: same decoding, orientation and mask checks.
            sample = load_sample(real_bytes, mask_bytes, max_pixels=cfg.max_pixels)
        except ImageError as exc:
            raise ImageError(exc.kind, str(exc).replace("composite", "real image")) from exc
        notes = [("real_" + n.removeprefix("composite_")) if n.startswith("composite_") else n for n in sample.notes]
        return Source(real=sample.composite, mask=sample.mask, notes=notes)
    img, orientation, notes = decode_image(real_bytes, "real image", cfg.max_pixels)
    notes = [f"real_{n}" for n in notes] + (["exif_orientation"] if orientation not in (None, 1) else [])
    return Source(real=np.asarray(apply_orientation(img, orientation), dtype=np.uint8), mask=None, notes=notes)


# A photograph with a side shorter than this holds no foreground shape with a background around it.
MIN_SIDE = 8


def sample_mask(cfg: SynthesizeJobConfig, source_id: str, source: Source, k: int) -> tuple[np.ndarray, dict | None]:
    """The foreground of sample k: the given mask, or a random shape drawn from (seed, id, k)."""
    h, w = source.real.shape[:2]
    if min(h, w) < MIN_SIDE:
        raise ImageError(ErrorKind.TOO_SMALL, f"real image is {w}x{h}, too small: a side under {MIN_SIDE} px holds no foreground "
                         "with a background around it")
    if cfg.mask_source == "given":
        return source.mask, None
    try:
        return random_mask(cfg.mask_source, h, w, rng_for(cfg.seed, source_id, k, "mask"), cfg.fg_ratio)
    except ValueError as exc:  # too small for a shape inside the border
        raise ImageError(ErrorKind.TOO_SMALL, str(exc)) from exc
