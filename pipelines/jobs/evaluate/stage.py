"""The stage of `harmony evaluate`: fetch composite, mask, ground truth and prediction(s), decode with
the harmonize job's guards, and score them on the iHarmony4 protocol (CPU tasks)."""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from PIL import Image

from harmony_ops.compositing import resize_rgb
from harmony_ops.imageio import ImageError, apply_orientation, decode_image, exif_notes
from harmony_ops.inputs import Sample, load_sample
from harmony_ops.metrics import REFERENCE_RESOLUTION, fg_bucket
from harmony_ops.worker import setup_cpu_worker

from schemas.metrics import COMPARE_METRICS

from pipelines.jobs.evaluate.config import EvaluateJobConfig
from pipelines.config import FetchSettings
from pipelines.core.stage import PoolConfig, Stage, fail_row, fail_with, pending, set_values
from pipelines.io.storage import is_uri, read_with_retries
from pipelines.jobs.review_images import review_mask, sources, write_review
from pipelines.jobs.row_metrics import ROW_METRICS, gt_columns, protocol_columns, row_metrics
from schemas.metrics import DELTA_METRICS
from schemas.vocabulary import ErrorKind, Status

# An input column only this stage reads (the compare method's prediction URI), dropped after it.
COMPARE_INPUT = "compare_prediction"


def protocol_mask(sample: Sample) -> np.ndarray:
    """The mask as the reference evaluation reads it: 8-bit grey values, oriented like the sample.

    A soft mask keeps its grey values, which the protocol dithers (PIL mode "1") exactly as the
    reference does, instead of the 0.5 threshold; a binary one is 0/255 either way.
    """
    return sample.mask_grey if sample.mask_grey is not None else (sample.mask * 255).astype(np.uint8)


def protocol_fg_ratio(grey_mask: np.ndarray, resolution: int = REFERENCE_RESOLUTION) -> float:
    """Foreground share of the protocol's mask (mode "1", then NEAREST to resolution x resolution): the
    ratio the reference's foreground buckets are drawn from."""
    img = Image.fromarray(grey_mask).convert("1")
    if img.size != (resolution, resolution):
        img = img.resize((resolution, resolution), Image.Resampling.NEAREST)
    return float(np.asarray(img, dtype=np.float32).sum() / (resolution * resolution))


def decode_prediction(data: bytes, max_pixels: int, what: str = "prediction") -> tuple[np.ndarray, list[str]]:
    """A prediction as uint8 HxWx3 at its own size, as a viewer shows it (its own EXIF orientation applied,
    noted `prediction_exif_rotated_<n>`); raises ImageError."""
    img, orientation, notes = decode_image(data, what, max_pixels)
    img = apply_orientation(img, orientation)
    return np.asarray(img, dtype=np.uint8), [f"{what}_{n}" for n in notes + exif_notes(orientation)]


def score_prediction(sample: Sample, pred: np.ndarray, grey: np.ndarray, use_gt_bg: bool, notes: list[str]) -> dict:
    """Metric columns of one prediction.

    A prediction of another size than the ground truth (e.g. the reference script's 256 px
    outputs) is scored as the reference does: the 256 px protocol resizes it; full-resolution
    metrics are then undefined (NaN) and the no-reference ones use it resized to full size.
    """
    h, w = sample.mask.shape
    if pred.shape[:2] == (h, w):
        return row_metrics(sample, pred, eval_mask=grey, use_gt_bg=use_gt_bg)
    notes.append(f"prediction_resized_from_{pred.shape[1]}x{pred.shape[0]}")
    values = row_metrics(sample, resize_rgb(pred, (w, h)), eval_mask=grey, use_gt_bg=use_gt_bg)
    if sample.real is not None:
        values.update(protocol_columns(pred, sample.real, grey, use_gt_bg=use_gt_bg))
        values.update(mse_full=math.nan, psnr_full=math.nan)
    return values


@dataclass
class EvaluateStage(Stage):
    """One row: fetch (with retries), decode with guards, score prediction, composite and the compare
    method's prediction against the ground truth; writes the metrics schema's columns."""

    fetch: FetchSettings
    compare: bool = False  # a second method's predictions are scored beside (compare_* columns)
    use_gt_bg: bool = False
    job_columns: dict = field(default_factory=dict)
    pool: PoolConfig = field(default_factory=PoolConfig)
    review_output: str | None = None  # the output prefix the report's per-row images go under (None: not written)

    @classmethod
    def for_job(cls, cfg: EvaluateJobConfig, job_columns: dict | None = None,
                pool: PoolConfig | None = None) -> "EvaluateStage":
        return cls(cfg.fetch, bool(cfg.compare), cfg.use_gt_bg, dict(job_columns or {}), pool or PoolConfig(),
                   cfg.output if cfg.review_images else None)

    name = "evaluate"

    def setup(self) -> None:
        setup_cpu_worker(self.pool.num_cpus)  # freed memory kept for the next image, OpenCV threads = CPU share

    @property
    def reads(self) -> tuple[str, ...]:
        return ("row", "status", "composite", "mask", "real", "output") + ((COMPARE_INPUT,) if self.compare else ())

    @property
    def writes(self) -> tuple[str, ...]:
        compare = COMPARE_METRICS + DELTA_METRICS if self.compare else ()
        return ("width", "height", "fg_ratio", "fg_bucket", "notes", "review", "seconds_decode", "seconds_finish") \
            + ROW_METRICS + compare + tuple(self.job_columns)

    def process(self, batch: pd.DataFrame):
        for i in batch.index[pending(batch)]:
            values = self._row(batch, i)
            if values is not None:
                set_values(batch, i, values)
        for k, v in self.job_columns.items():
            batch[k] = v
        return batch

    def _row(self, batch: pd.DataFrame, i) -> dict | None:
        cfg, opts = self.fetch, self.fetch.storage_options
        t = time.perf_counter()
        row = batch.loc[i]
        until = cfg.until()  # one deadline for the row's reads
        try:
            comp = read_with_retries(row["composite"], opts, cfg.retries, until)
            mask = read_with_retries(row["mask"], opts, cfg.retries, until)
            # A row without ground truth is scored with the no-reference (and fidelity) metrics only.
            real = read_with_retries(row["real"], opts, cfg.retries, until) if is_uri(row["real"]) else None
        except Exception as exc:  # noqa: BLE001 - any storage failure is this row's failure
            fail_with(batch, i, exc, ErrorKind.STORAGE_ERROR)
            return None
        try:
            pred_bytes = read_with_retries(row["output"], opts, cfg.retries, until)
        except FileNotFoundError:
            fail_row(batch, i, ErrorKind.MISSING_PREDICTION, f"prediction {row['output']} disappeared after it was listed")
            return None
        except Exception as exc:  # noqa: BLE001
            fail_with(batch, i, exc, ErrorKind.STORAGE_ERROR)
            return None
        try:
            sample = load_sample(comp, mask, real, max_pixels=cfg.max_pixels)
            pred, pred_notes = decode_prediction(pred_bytes, cfg.max_pixels)
            grey = protocol_mask(sample)
        except Exception as exc:  # noqa: BLE001 - decoders raise many types; ImageError says which guard
            fail_with(batch, i, exc, ErrorKind.DECODE_ERROR, storage=False)
            return None
        notes = sample.notes + pred_notes
        t_metrics = time.perf_counter()
        try:
            values = score_prediction(sample, pred, grey, self.use_gt_bg, notes)
            ratio = protocol_fg_ratio(grey)
            values.update(fg_ratio=ratio, fg_bucket=fg_bucket(ratio))
            other = other_bytes = None
            if self.compare:
                cols, other, other_bytes = self._compare(row, sample, grey, values, notes)
                values.update(cols)
        except Exception as exc:  # noqa: BLE001
            fail_with(batch, i, exc, ErrorKind.METRICS_ERROR, storage=False)
            return None
        if self.review_output is not None:
            values["review"], note = write_review(self.review_output, row["row"], self.fetch, sample.composite, pred,
                                                  review_mask(sample), sample.real, other, **sources(sample, comp, real),
                                                  harmonized_source=None if pred_notes else pred_bytes,
                                                  compare_source=other_bytes)
            notes += [note] if note else []
        h, w = sample.mask.shape
        return {**values, "status": Status.OK, "width": w, "height": h, "notes": ",".join(notes) or None,
                "seconds_decode": t_metrics - t, "seconds_finish": time.perf_counter() - t_metrics}

    def _compare(self, row, sample: Sample, grey: np.ndarray, main: dict,
                 notes: list[str]) -> tuple[dict, np.ndarray | None, bytes | None]:
        """(The compare method's 256 px metrics and per-image deltas (compare minus main), its decoded image, its
        file where a browser shows it as decoded);
        a missing or unreadable compare prediction leaves them null with a note, never fails the row. Without
        ground truth there is nothing to score, but its image is still shown beside the prediction."""
        uri = row.get(COMPARE_INPUT)
        if not is_uri(uri):
            notes.append("compare_missing_prediction")
            return {}, None, None
        try:
            data = read_with_retries(uri, self.fetch.storage_options, self.fetch.retries, self.fetch.until())
            other, other_notes = decode_prediction(data, self.fetch.max_pixels, what="compare")
        except FileNotFoundError:
            notes.append("compare_missing_prediction")
            return {}, None, None
        except ImageError as exc:
            notes.append(f"compare_{exc.kind}")
            return {}, None, None
        except Exception:  # noqa: BLE001
            notes.append("compare_storage_error")
            return {}, None, None
        if sample.real is None:  # the compare columns are ground-truth metrics
            notes.append("compare_no_ground_truth")
            return {}, other, None if other_notes else data
        if other.shape[:2] == sample.mask.shape:
            cols = gt_columns(other, sample.real, grey, prefix="compare_", use_gt_bg=self.use_gt_bg)
        else:
            cols = protocol_columns(other, sample.real, grey, prefix="compare_", use_gt_bg=self.use_gt_bg)
        out = {k: cols[k] for k in COMPARE_METRICS}
        out["delta_psnr"] = _delta(out["compare_psnr"], main["psnr"])
        out["delta_fmse"] = _delta(out["compare_fmse"], main["fmse"])
        return out, other, None if other_notes else data


def _delta(a: float, b: float) -> float:
    d = a - b
    return d if math.isfinite(d) else math.nan
