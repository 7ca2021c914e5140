"""The harmonize job's model stage (GPU actors when the cluster has GPUs): stage 1 + refinement on
the prepared regions. The engine is loaded once per actor in `setup`."""

from __future__ import annotations

import logging
from dataclasses import dataclass, field

import pandas as pd

from harmony_ops.regions import PIXEL_COLUMNS, PLAN_COLUMNS, Prepared, pack
from pipelines.jobs.harmonize.config import HarmonizeJobConfig
from pipelines.config import ModelConfig
from pipelines.core.engine import free_device_memory, load_actor_engine, peak_memory_mib
from pipelines.core.stage import PoolConfig, Stage, fail_with, pending, set_values
from schemas.vocabulary import ErrorKind

log = logging.getLogger(__name__)


@dataclass
class ModelStage(Stage):
    model: ModelConfig
    storage_options: dict = field(default_factory=dict)
    pool: PoolConfig = field(default_factory=PoolConfig)

    @classmethod
    def for_job(cls, cfg: HarmonizeJobConfig, pool: PoolConfig | None = None) -> "ModelStage":
        return cls(cfg.model, cfg.storage_options, pool or PoolConfig())

    name = "model"
    stateful = True
    reads = ("status", "seed") + PLAN_COLUMNS + PIXEL_COLUMNS
    writes = ("result_rgb", "seconds_stage1", "seconds_refine", "model_peak_host_mib", "model_peak_device_mib")

    def setup(self) -> None:
        self.engine = load_actor_engine(self.model, self.pool, self.storage_options)

    def process(self, batch: pd.DataFrame) -> pd.DataFrame:
        idx = list(batch.index[pending(batch)])
        if idx:
            self._run(batch, idx)
        return batch

    def _run(self, batch: pd.DataFrame, idx: list) -> None:
        """Run rows; on failure split the batch (out-of-memory is usually batch-size bound) down to
        single rows before failing any row."""
        try:
            items = [Prepared.from_columns(batch.loc[i]) for i in idx]
            result = self.engine.run(items, [int(batch.at[i, "seed"]) for i in idx])
        except Exception as exc:  # noqa: BLE001
            if len(idx) > 1:
                log.warning("batch of %d failed (%s: %s); retrying in halves", len(idx), type(exc).__name__, exc)
                free_device_memory()
                half = len(idx) // 2
                self._run(batch, idx[:half])
                self._run(batch, idx[half:])
                return
            fail_with(batch, idx[0], exc, ErrorKind.MODEL_ERROR, storage=False)
            free_device_memory()
            return
        n = len(idx)
        host_mib, device_mib = peak_memory_mib()
        for i, region in zip(idx, result.regions):
            set_values(batch, i, {
                "model_peak_host_mib": host_mib, "model_peak_device_mib": device_mib, "result_rgb": pack(region),
                "seconds_stage1": result.seconds.get("stage1", 0.0) / n, "seconds_refine": result.seconds.get("refine", 0.0) / n,
            })
