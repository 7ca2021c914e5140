"""The harmonize job's last stage (CPU tasks): paste the result back at full resolution, encode,
write atomically, score. Never imports torch."""

from __future__ import annotations

import posixpath
import time
from dataclasses import dataclass, field

import pandas as pd

from harmony_ops.imageio import encode_image
from harmony_ops.inputs import load_sample
from harmony_ops.regions import PLAN_COLUMNS, finish, plan_from_columns, unpack
from harmony_ops.worker import setup_cpu_worker
from pipelines.config import FetchSettings
from pipelines.jobs.harmonize.config import HarmonizeJobConfig
from pipelines.core.stage import PoolConfig, Stage, cell, fail_row, fail_with, pending, set_values
from pipelines.io.storage import join, write_with_retries
from pipelines.jobs.harmonize.decode import ENCODED
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

    @classmethod
    def for_job(cls, cfg: HarmonizeJobConfig, columns: dict, pool: PoolConfig | None = None) -> "FinishStage":
        return cls(cfg.fetch, cfg.output, cfg.image_format, cfg.resolution.feather, columns, pool or PoolConfig())

    name = "finish"
    reads = ("status", "output", "result_rgb") + ENCODED + PLAN_COLUMNS
    writes = ("seconds_finish",) + ROW_METRICS + JOB_COLUMNS

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
                sample = load_sample(row["comp_bytes"], row["mask_bytes"], cell(row, "real_bytes"),
                                     max_pixels=self.fetch.max_pixels)
                box = plan_from_columns(row).region
                region = unpack(row["result_rgb"], box[3] - box[1], box[2] - box[0])
                out = finish(sample.composite, sample.mask, box, region, self.feather)
                write_with_retries(row["output"], encode_image(out, self.image_format), self.fetch.storage_options,
                                   self.fetch.retries)
                values = row_metrics(sample, out)
            except Exception as exc:  # noqa: BLE001
                fail_with(batch, i, exc, ErrorKind.FINISH_ERROR)
                continue
            set_values(batch, i, {**values, "status": Status.OK, "seconds_finish": time.perf_counter() - t})
        for k, v in self.job_columns.items():
            batch[k] = v
        batch.loc[batch["status"].isin(BAD), "output"] = None
        return batch


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
