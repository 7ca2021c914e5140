"""The harmonize job's first stage (CPU tasks): fetch composite, mask and ground truth (or a cutout and
its background, composed here), decode them with the input guards, plan the inference region and cut it
out for the engine. Never imports torch."""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import pandas as pd

from harmony_ops.metrics import fg_bucket
from harmony_ops.regions import REGION_COLUMNS, prepare
from harmony_ops.worker import setup_cpu_worker
from harmony_ops.resolution import ResolutionPolicy
from pipelines.config import FetchSettings
from pipelines.jobs.harmonize.config import HarmonizeJobConfig
from pipelines.core.stage import PoolConfig, Stage, fail_with, pending, set_values
from pipelines.io.row_inputs import INPUT_COLUMNS, fetch_inputs, load_row
from schemas.vocabulary import ErrorKind

# The encoded files travel on to the finish stage, not their pixels: a 12 MP image is a few MB
# encoded but 36 MB raw in the object store; decoding again on a CPU worker is the cheaper side.
# A cutout row's foreground and background travel in comp_bytes and mask_bytes (`layout` says which).
ENCODED = ("comp_bytes", "mask_bytes", "real_bytes")
CUTOUT_COLUMNS = ("layout", "foreground", "background", "x", "y", "scale")


@dataclass
class DecodeStage(Stage):
    fetch: FetchSettings
    resolution: ResolutionPolicy
    needs_resize: bool
    pool: PoolConfig = field(default_factory=PoolConfig)

    @classmethod
    def for_job(cls, cfg: HarmonizeJobConfig, needs_resize: bool, pool: PoolConfig | None = None) -> "DecodeStage":
        return cls(cfg.fetch, cfg.resolution.policy(), needs_resize, pool or PoolConfig())

    name = "decode"
    reads = ("status",) + INPUT_COLUMNS
    writes = ENCODED + REGION_COLUMNS + ("fg_bucket", "notes", "seconds_decode")

    def setup(self) -> None:
        setup_cpu_worker(self.pool.num_cpus)  # freed memory kept for the next image, OpenCV threads = CPU share

    def process(self, batch: pd.DataFrame) -> pd.DataFrame:
        policy = self.resolution
        for i in batch.index[pending(batch)]:
            t = time.perf_counter()
            row = batch.loc[i]
            try:
                comp, mask, real = fetch_inputs(row, self.fetch)
            except Exception as exc:  # noqa: BLE001 - any storage failure is this row's failure
                fail_with(batch, i, exc, ErrorKind.STORAGE_ERROR)
                continue
            try:
                sample, _ = load_row(row, comp, mask, real, self.fetch.max_pixels)
                item = prepare(sample.composite, sample.mask, policy, resize=self.needs_resize)
            except Exception as exc:  # noqa: BLE001 - decoders raise many types; ImageError says which guard
                fail_with(batch, i, exc, ErrorKind.DECODE_ERROR, storage=False)
                continue
            set_values(batch, i, {
                "comp_bytes": comp, "mask_bytes": mask, "real_bytes": real, **item.to_columns(),
                "fg_bucket": fg_bucket(item.plan.fg_ratio), "notes": ",".join(sample.notes) or None,
                "seconds_decode": time.perf_counter() - t,
            })
        return batch
