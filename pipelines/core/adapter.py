"""The one place where stages become Ray Data operations."""

from __future__ import annotations

import os
import tempfile

import ray
from ray.data import ActorPoolStrategy, TaskPoolStrategy

from pipelines.core.stage import Stage


class _StageWorker:
    """Ray actor body: builds the stage's worker state once, then serves batches."""

    def __init__(self, stage: Stage):
        self.stage = stage
        self.stage.setup()

    def __call__(self, batch):
        return self.stage.process(batch)


_TASK_STAGES: dict[str, Stage] = {}


def _run_stage_task(batch, stage: Stage):
    """Task body: `setup()` once per worker process (workers are reused across tasks)."""
    key = f"{stage.name}:{id(type(stage))}:{hash(repr(stage))}"
    ready = _TASK_STAGES.get(key)
    if ready is None:
        stage.setup()
        _TASK_STAGES.clear()  # one job's stages at a time per worker
        _TASK_STAGES[key] = ready = stage
    return ready.process(batch)


def apply_stage(ds: "ray.data.Dataset", stage: Stage) -> "ray.data.Dataset":
    r = stage.resources
    common = dict(batch_size=r.batch_size, batch_format="pandas", zero_copy_batch=False, num_cpus=r.num_cpus,
                  num_gpus=r.num_gpus or None)
    if not stage.stateful:
        return ds.map_batches(_run_stage_task, fn_args=(stage,), compute=TaskPoolStrategy(size=r.max_workers), **common)
    return ds.map_batches(
        _StageWorker,
        fn_constructor_args=(stage,),
        compute=ActorPoolStrategy(
            min_size=r.min_workers, max_size=r.max_workers, max_tasks_in_flight_per_actor=r.max_tasks_in_flight
        ),
        **common,
    )


def apply_stages(ds: "ray.data.Dataset", stages: list[Stage]) -> "ray.data.Dataset":
    for stage in stages:
        ds = apply_stage(ds, stage)
    return ds


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join the cluster at `address` (or RAY_ADDRESS), else start a local instance without the dashboard."""
    if ray.is_initialized():
        return
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=True)
        return
    os.environ.setdefault("RAY_TMPDIR", tempfile.gettempdir())
    ray.init(num_cpus=num_cpus, include_dashboard=False, log_to_driver=True, configure_logging=True, logging_level="WARNING")
