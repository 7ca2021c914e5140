"""The harmonize job's last stage (CPU tasks): paste the result back at full resolution, encode,
write atomically, score. Never imports torch."""

from __future__ import annotations

import posixpath
import time
from dataclasses import dataclass, field

import pandas as pd

from harmony_ops.fidelity import apply_fidelity
from harmony_ops.imageio import encode_image
from harmony_ops.compositing import harmonized_foreground, soft_paste
from harmony_ops.regions import PLAN_COLUMNS, finish, plan_from_columns, unpack
from harmony_ops.worker import setup_cpu_worker
from pipelines.config import FetchSettings, FidelityConfig
from pipelines.jobs.harmonize.config import HarmonizeJobConfig
from pipelines.core.stage import PoolConfig, Stage, cell, fail_row, fail_with, pending, set_values
from pipelines.io.storage import join, write_with_retries
from pipelines.io.row_inputs import load_row
from pipelines.jobs.harmonize.decode import CUTOUT_COLUMNS, ENCODED
from pipelines.jobs.review_images import review_mask, sources, write_review
from pipelines.jobs.row_metrics import ROW_METRICS, row_metrics
from schemas.vocabulary import BAD, SEGMENT, ErrorKind, Status

JOB_COLUMNS = ("engine", "model", "config_key", "steps", "scheduler", "resolution_mode")


def job_columns(cfg: HarmonizeJobConfig, model_id: str, config_key: str) -> dict:
    """Columns every row of one run shares, whatever its status."""
    diffusion = cfg.model.engine == "diffharmony"
    return {
        "engine": cfg.model.engine,
        "model": model_id,
        "config_key": config_key,
        "steps": cfg.model.steps if diffusion else None,
        "scheduler": cfg.model.scheduler if diffusion else "none",
        "resolution_mode": cfg.resolution.mode,
    }


@dataclass
class FinishStage(Stage):
    fetch: FetchSettings
    output: str
    image_format: str
    feather: int
    job_columns: dict  # what every row of the run shares (`job_columns`)
    pool: PoolConfig = field(default_factory=PoolConfig)
    fidelity: FidelityConfig = field(default_factory=FidelityConfig)
    soft_paste: bool = False  # composite rows: the mask's grey levels are the paste-back alpha (cutouts: always)
    review_images: bool = False  # the report's per-row images (pipelines/jobs/review_images.py)

    @classmethod
    def for_job(cls, cfg: HarmonizeJobConfig, columns: dict, pool: PoolConfig | None = None) -> "FinishStage":
        return cls(cfg.fetch, cfg.output, cfg.image_format, cfg.resolution.feather, columns, pool or PoolConfig(),
                   cfg.fidelity, cfg.soft_paste, cfg.review_images)

    name = "finish"
    reads = ("row", "status", "output", "result_rgb") + ENCODED + PLAN_COLUMNS + CUTOUT_COLUMNS
    writes = ("seconds_finish", "review", "notes") + ROW_METRICS + JOB_COLUMNS

    def setup(self) -> None:
        setup_cpu_worker(self.pool.num_cpus)  # freed memory kept for the next image, OpenCV threads = CPU share

    def process(self, batch: pd.DataFrame) -> pd.DataFrame:
        for i in batch.index[pending(batch)]:
            t = time.perf_counter()
            row = batch.loc[i]
            if not output_allowed(row["output"], self.output):
                fail_row(batch, i, ErrorKind.UNSAFE_OUTPUT, f"refusing to write {row['output']!r}: not one file "
                         f"name directly under {join(self.output, 'images')}")
                continue
            try:
                # A row without ground truth: no `real_bytes` (a null cell), no-reference metrics only.
                sample, background = load_row(row, row["comp_bytes"], row["mask_bytes"], cell(row, "real_bytes"),
                                              self.fetch.max_pixels)
                box = plan_from_columns(row).region
                region = unpack(row["result_rgb"], box[3] - box[1], box[2] - box[0])
                out = self.deliver(sample, background, box, region)
                write_with_retries(row["output"], encode_image(out, self.image_format), self.fetch.storage_options,
                                   self.fetch.retries)
                values = row_metrics(sample, out, max_chroma_shift=self.fidelity.audit_bound())
            except Exception as exc:  # noqa: BLE001
                fail_with(batch, i, exc, ErrorKind.FINISH_ERROR)
                continue
            if self.review_images:  # the harmonized image itself lies beside the report, in images/
                # A composite row's own files are shown as they are where they can be: no encoding spent.
                given = {} if background is not None else sources(sample, row["comp_bytes"], cell(row, "real_bytes"))
                values["review"], note = write_review(
                    self.output, row["row"], self.fetch, sample.composite, out, review_mask(sample), sample.real,
                    with_harmonized=False, **given)
                if note:
                    values["notes"] = ",".join(n for n in (cell(row, "notes"), note) if n)
            set_values(batch, i, {**values, "status": Status.OK, "seconds_finish": time.perf_counter() - t})
        for k, v in self.job_columns.items():
            batch[k] = v
        batch.loc[batch["status"].isin(BAD), "output"] = None
        return batch


    def deliver(self, sample, background, box, region):
        """The image written for a row: the engine's region pasted back (through the binarised mask, or
        blended with the soft alpha), with the colour-fidelity policy applied inside the mask."""
        f = self.fidelity
        if background is None and not self.soft_paste:
            out = finish(sample.composite, sample.mask, box, region, self.feather)
            return apply_fidelity(sample.composite, out, sample.mask, f.mode, f.max_chroma_shift)
        # Soft: the harmonized foreground (the engine's region, fidelity inside the mask, carried into the
        # partly transparent edge) alpha-blended onto the background; a composite row blends onto its
        # composite, which is its background where the alpha is 0.
        whole = sample.composite.copy()
        whole[box[1]:box[3], box[0]:box[2]] = region
        whole = apply_fidelity(sample.composite, whole, sample.mask, f.mode, f.max_chroma_shift)
        base = sample.composite if background is None else background
        return soft_paste(base, harmonized_foreground(whole, sample.mask_grey), sample.mask_grey)


def output_allowed(uri, output: str) -> bool:
    """True only for `<output>/images/<one plain file name>`: whatever reached this row, the finish
    stage never writes elsewhere (defence in depth behind the manifest's id rules)."""
    if not isinstance(uri, str):
        return False
    images = join(output, "images").rstrip("/")
    if not uri.startswith(images + "/"):
        return False
    name = uri[len(images) + 1 :]
    if name in (".", "..") or not SEGMENT.fullmatch(name):
        return False
    return posixpath.dirname(posixpath.normpath(uri.split("://", 1)[-1])) == posixpath.normpath(images.split("://", 1)[-1])
