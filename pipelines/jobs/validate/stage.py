"""`harmony validate --deep`'s one stage (CPU tasks): fetch and decode a row's inputs with the guards
harmonize's decode stage applies, and plan its inference region, without running a model. A row fails
here exactly when, and as, it would fail there."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from harmony_ops.regions import prepare
from harmony_ops.resolution import ResolutionPolicy
from harmony_ops.worker import setup_cpu_worker
from pipelines.config import FetchSettings
from pipelines.core.stage import PoolConfig, Stage, fail_with, pending, set_values
from pipelines.io.row_inputs import INPUT_COLUMNS, fetch_inputs, load_row
from schemas.vocabulary import ErrorKind, Status


@dataclass
class CheckStage(Stage):
    fetch: FetchSettings
    resolution: ResolutionPolicy = field(default_factory=ResolutionPolicy)
    pool: PoolConfig = field(default_factory=PoolConfig)

    name = "check"
    reads = ("status",) + INPUT_COLUMNS
    writes = ("width", "height", "notes")

    def setup(self) -> None:
        setup_cpu_worker(self.pool.num_cpus)

    def process(self, batch: pd.DataFrame) -> pd.DataFrame:
        for i in batch.index[pending(batch)]:
            row = batch.loc[i]
            try:
                first, second, real = fetch_inputs(row, self.fetch)
            except Exception as exc:  # noqa: BLE001 - as the decode stage classifies it
                fail_with(batch, i, exc, ErrorKind.STORAGE_ERROR)
                continue
            try:
                sample, _ = load_row(row, first, second, real, self.fetch.max_pixels)
                prepare(sample.composite, sample.mask, self.resolution, resize=False)
            except Exception as exc:  # noqa: BLE001
                fail_with(batch, i, exc, ErrorKind.DECODE_ERROR, storage=False)
                continue
            h, w = sample.mask.shape
            set_values(batch, i, {"status": Status.OK, "width": w, "height": h, "notes": ",".join(sample.notes) or None})
        return batch
