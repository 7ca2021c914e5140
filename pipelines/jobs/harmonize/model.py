"""The harmonize job's model stage (GPU actors when the cluster has GPUs): stage 1 + refinement on
the prepared regions. The engine is loaded once per actor in `setup`."""

from __future__ import annotations

import logging
import math
import sys
from dataclasses import dataclass, field

import pandas as pd

from harmony_ops.regions import PIXEL_COLUMNS, PLAN_COLUMNS, Prepared, pack
from pipelines.config import HarmonizeJobConfig, ModelConfig
from pipelines.core.stage import PoolConfig, Stage, fail_with, pending, set_values
from schemas.vocabulary import ErrorKind

log = logging.getLogger(__name__)


@dataclass
class ModelStage(Stage):
    cfg: HarmonizeJobConfig
    pool: PoolConfig = field(default_factory=PoolConfig)

    name = "model"
    stateful = True
    reads = ("status", "seed") + PLAN_COLUMNS + PIXEL_COLUMNS
    writes = ("result_rgb", "seconds_stage1", "seconds_refine", "model_peak_host_mib", "model_peak_device_mib")

    def setup(self) -> None:
        self.engine = load_actor_engine(self.cfg.model, self.pool, self.cfg.storage_options)

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
                _free_device_memory()
                half = len(idx) // 2
                self._run(batch, idx[:half])
                self._run(batch, idx[half:])
                return
            fail_with(batch, idx[0], exc, ErrorKind.MODEL_ERROR, storage=False)
            _free_device_memory()
            return
        n = len(idx)
        host_mib, device_mib = _peak_memory_mib()
        for i, region in zip(idx, result.regions):
            set_values(batch, i, {
                "model_peak_host_mib": host_mib, "model_peak_device_mib": device_mib, "result_rgb": pack(region),
                "seconds_stage1": result.seconds.get("stage1", 0.0) / n, "seconds_refine": result.seconds.get("refine", 0.0) / n,
            })


def load_actor_engine(m: ModelConfig, pool: PoolConfig, storage_options: dict | None):
    """The engine of one model actor (harmonize, inverse synthesis), loaded once in its setup."""
    from harmony_ops.loader import load_engine

    kwargs = m.engine_kwargs(storage_options)
    if not pool.num_gpus and kwargs.get("device") == "auto":
        kwargs["device"] = "cpu"  # a CPU actor must not grab a GPU it was not given
    engine = load_engine(m.engine, **kwargs)
    torch = sys.modules.get("torch")  # the baseline engine never imports it
    if torch is not None and not pool.num_gpus:
        torch.set_num_threads(max(1, math.ceil(pool.num_cpus)))  # nor more threads than its CPUs
    return engine


def _peak_memory_mib() -> tuple[float, float | None]:
    """Peak resident memory of this worker process and peak allocated device memory, in MiB."""
    import resource

    torch = sys.modules.get("torch")  # not imported by the baseline engine: no device memory then
    host = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB
    cuda = torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized()
    return host, torch.cuda.max_memory_allocated() / 2**20 if cuda else None


def _free_device_memory() -> None:
    torch = sys.modules.get("torch")
    try:  # called while recovering from a failure: must not raise another
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001
        pass
