"""The one place where stages become Ray Data operators.

Each stage becomes one `map_batches` operator named after the stage (`MapBatches(decode)`,
`MapBatches(model)`, ...), so Ray's progress bars and dashboard say which step is running. The
stages' column declarations are checked twice: once when the chain is built (every column a stage
reads is in the input or written by a stage before it) and on every batch (declared columns are
there, undeclared ones are refused).
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Iterable, Sequence

import pandas as pd

from pipelines.core.crashes import CrashLedger, row_ids
from pipelines.core.stage import Stage
from pipelines.core.test_hooks import stage_hooks
from pipelines.errors import StageContractError


def plan_columns(stages: Sequence[Stage], inputs: Iterable[str], keep: Iterable[str] = (),
                 transit: Iterable[str] = ()) -> list[tuple[str, ...]]:
    """For each stage, the columns to drop after it: written by some stage (or a `transit` input), read
    by no later stage, neither kept by the job nor written by the last stage. Raises
    StageContractError if a stage reads what neither the input nor an earlier stage gives."""
    available = set(inputs)
    for stage in stages:
        missing = [c for c in stage.reads if c not in available]
        if missing:
            raise StageContractError(f"stage {stage.name!r} reads {missing}, which neither the input nor an earlier stage writes")
        available = (available if stage.keeps_rows else set()) | set(stage.writes)
    # What the last stage writes is the chain's output: always kept.
    keep, written = set(keep) | set(stages[-1].writes if stages else ()), set(transit)
    drops = []
    for k, stage in enumerate(stages):
        written |= set(stage.writes)
        later = {c for s in stages[k + 1 :] for c in s.reads}
        drops.append(tuple(sorted(c for c in written if c not in later and c not in keep)))
    return drops


class _Bound:
    """A stage with its post-stage column handling; what a Ray operator calls for each batch."""

    def __init__(self, stage: Stage, drop: tuple[str, ...], last: bool, finalize: Callable | None,
                 ledger: CrashLedger | None = None):
        self.stage, self.drop, self.last, self.finalize, self.ledger = stage, drop, last, finalize, ledger
        self.hooks = stage_hooks(stage.name)  # test-only; None unless a test sets them

    def _guarded(self, batch: pd.DataFrame) -> pd.DataFrame:
        """The stage's output, with worker deaths on this batch counted and bounded (core/crashes.py)."""
        ledger, ids = self.ledger, row_ids(batch)
        deaths = ledger.deaths(ids)
        if deaths >= ledger.max_crashes:
            if len(batch) == 1:
                return self.stage.crashed(batch, f"row killed its {self.stage.name} worker {deaths} times "
                                                 "(native crash or out-of-memory kill); not run again")
            half = len(batch) // 2
            return pd.concat([self._guarded(batch.iloc[:half]), self._guarded(batch.iloc[half:])])
        marker = ledger.begin(ids)
        if self.hooks is not None:
            self.hooks.crash(batch)
        out = self.stage.run(batch)
        ledger.end(marker)
        return out

    def run(self, batch: pd.DataFrame):
        if self.hooks is not None:
            self.hooks.slow(batch)
        out = self._guarded(batch) if self.ledger is not None else self.stage.run(batch)
        drop = [c for c in self.drop if c in out.columns]
        if self.last:
            out = out.drop(columns=drop)
        else:
            out[drop] = None  # emptied, not removed: every block keeps one schema between stages
        return self.finalize(out) if self.finalize is not None and self.last else out


def bind(stages: Sequence[Stage], inputs: Iterable[str], keep: Iterable[str] = (),
         finalize: Callable | None = None, transit: Iterable[str] = (), ledger: CrashLedger | None = None) -> list[_Bound]:
    """The stages, checked as a chain, each ready to run a batch (with or without Ray)."""
    drops = plan_columns(stages, inputs, keep, transit)
    n = len(stages)
    return [_Bound(s, d, k == n - 1, finalize, ledger) for k, (s, d) in enumerate(zip(stages, drops))]


def run_batch(stages: Sequence[Stage], batch: pd.DataFrame, keep: Iterable[str] = (), finalize: Callable | None = None,
              transit: Iterable[str] = (), start: int = 0, stop: int | None = None):
    """Stages `start:stop` of the chain on one batch in this process, exactly as the Ray operators run
    them (contracts, column drops, `finalize` after the last): for tests and single-process use."""
    # A batch entering mid-chain already holds what the earlier stages wrote: its columns pass the check.
    for bound in bind(stages, batch.columns, keep, finalize, transit)[start:stop]:
        batch = bound.run(batch)
    return batch


class _Worker:
    """Actor body: sets the stage up once, then serves batches."""

    def __init__(self, bound: _Bound):
        self.bound = bound
        bound.stage.setup()

    def __call__(self, batch):
        return self.bound.run(batch)


_READY: dict[str, _Bound] = {}


class _Task:
    """Task body: `setup()` once per worker process (Ray reuses task workers)."""

    def __init__(self, bound: _Bound):
        self.bound = bound

    def __call__(self, batch):
        b = self.bound
        key = f"{b.stage.name}:{id(type(b.stage))}:{hash(repr(b.stage))}"
        ready = _READY.get(key)
        if ready is None:
            b.stage.setup()
            _READY.clear()  # one job's stages at a time per worker
            _READY[key] = ready = b
        return ready.run(batch)


def _named(base: type, name: str) -> type:
    # Ray Data names an operator after its callable's class: a subclass per stage gives MapBatches(decode).
    return type(name, (base,), {"__module__": base.__module__})


def apply_stages(ds, stages: Sequence[Stage], inputs: Iterable[str], keep: Iterable[str] = (),
                 finalize: Callable | None = None, transit: Iterable[str] = (), ledger: CrashLedger | None = None,
                 wait_s: float = 600.0, echo: Callable = print):
    """The dataset with every stage applied in order, one named operator each; `finalize` (e.g. a
    schema's `to_arrow`) runs on the last stage's output. `inputs`: the columns of `ds`; `keep`:
    columns the output keeps; `transit`: input columns only the stages use (dropped at the end);
    `ledger`: bounds the retries of batches that kill their worker. Every stage's worker must fit on some node
    (a pool that asks for GPUs or a resource no node has would wait for ever): on a local Ray, ResourceShortfall
    at once; on a cluster joined by address, up to `wait_s` seconds of waiting, said on `echo`."""
    from ray.data import ActorPoolStrategy, TaskPoolStrategy

    import ray

    from pipelines.core.resources import alive_nodes, await_placeable, ray_can_grow, request_nodes

    if ray.is_initialized():  # (a dataset stand-in in a unit test has no cluster to place on)
        await_placeable(stages, alive_nodes, ray_can_grow(), wait_s, echo, request=request_nodes)

    for bound in bind(stages, inputs, keep, finalize, transit, ledger):
        stage, p = bound.stage, bound.stage.pool
        common = dict(batch_size=p.batch_size, batch_format="pandas", zero_copy_batch=False, num_cpus=p.num_cpus,
                      num_gpus=p.num_gpus or None, resources=dict(p.resources) or None)
        if stage.stateful:
            ds = ds.map_batches(
                _named(_Worker, stage.name), fn_constructor_args=(bound,),
                compute=ActorPoolStrategy(min_size=p.min_workers, max_size=p.max_workers,
                                          max_tasks_in_flight_per_actor=p.max_tasks_in_flight),
                **common,
            )
        else:
            # A task whose worker died is retried without limit (Ray Data's own default for its tasks, as
            # for actors' tasks): the ledger is the bound.
            ds = ds.map_batches(_named(_Task, stage.name)(bound), compute=TaskPoolStrategy(size=p.max_workers),
                                **common)
    return ds


def ensure_ray(address: str | None = None, num_cpus: int | None = None) -> None:
    """Join the cluster at `address` (or RAY_ADDRESS), else start a local instance without the dashboard.
    Under the CLI (`pipelines.core.logs.ray_logs_to_file`) Ray's output goes to its log file: workers'
    output is not forwarded and Ray Data draws no progress."""
    import ray

    from pipelines.core import logs

    if ray.is_initialized():
        return
    quiet = logs.quiet()
    address = address or os.environ.get("RAY_ADDRESS")
    if address:
        ray.init(address=address, log_to_driver=not quiet, configure_logging=not quiet)
    else:
        os.environ.setdefault("RAY_TMPDIR", tempfile.gettempdir())
        # address="local": always a new instance. Without it Ray joins whatever /tmp/ray/ray_current_cluster
        # names, and a cluster that died without removing that file makes the job wait on it for ever.
        ray.init(address="local", num_cpus=num_cpus, include_dashboard=False, log_to_driver=not quiet,
                 configure_logging=not quiet, logging_level="WARNING")
    if quiet:
        logs.silence_ray_data()
