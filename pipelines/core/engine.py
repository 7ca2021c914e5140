"""The engine of a model actor, shared by every job with a model stage (harmonize, inverse synthesis):
loading it once per actor within the actor's CPUs and GPUs, and its memory figures."""

from __future__ import annotations

import math
import sys

from pipelines.config import ModelConfig
from pipelines.core.stage import PoolConfig


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


def peak_memory_mib() -> tuple[float, float | None]:
    """Peak resident memory of this worker process and peak allocated device memory, in MiB."""
    import resource

    torch = sys.modules.get("torch")  # not imported by the baseline engine: no device memory then
    host = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB
    cuda = torch is not None and torch.cuda.is_available() and torch.cuda.is_initialized()
    return host, torch.cuda.max_memory_allocated() / 2**20 if cuda else None


def free_device_memory() -> None:
    torch = sys.modules.get("torch")
    try:  # called while recovering from a failure: must not raise another
        if torch is not None and torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001
        pass
