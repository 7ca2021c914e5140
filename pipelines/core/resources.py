"""What a Ray Train run asks of the cluster, planned before Ray Train starts.

Ray Train reserves its workers' resources first and gives Ray Data what is left of the cluster: when
the trainers take every CPU, the data stage that feeds them gets none and the run waits for ever with
no step taken. `plan_train` decides, as a pure function of the cluster's totals, what each trainer
gets; `await_resources` waits for a cluster that may still grow (an autoscaler) and says what it
waits for.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import dataclass

from pipelines.errors import ConfigError

# A trainer's default share of the CPUs when the cluster has room for it.
DEFAULT_CPUS_PER_WORKER = 1.0
# Below this a trainer is starved; Ray's fractional CPUs are only bookkeeping, but a plan that needs
# less than this per trainer is a plan for too many trainers.
MIN_CPUS_PER_WORKER = 0.1


class ResourceShortfall(ConfigError):
    """The run asks for more than the cluster has; the message names the flags to change."""


@dataclass(frozen=True)
class TrainPlan:
    workers: int
    cpus_per_worker: float
    gpus_per_worker: float
    data_cpus: float  # left to Ray Data's decode tasks

    @property
    def need(self) -> dict[str, float]:
        need = {"CPU": self.workers * self.cpus_per_worker + self.data_cpus}
        if self.gpus_per_worker:
            need["GPU"] = self.workers * self.gpus_per_worker
        return need

    def describe(self) -> str:
        gpu = f", {self.gpus_per_worker:g} GPU" if self.gpus_per_worker else ""
        return (f"{self.workers} trainer(s) x {self.cpus_per_worker:g} CPU{gpu}, "
                f"{self.data_cpus:g} CPU for the data stage")


def _fmt(resources: dict[str, float], keys) -> str:
    return ", ".join(f"{resources.get(k, 0):g} {k}" for k in keys)


def plan_train(cluster: dict[str, float], workers: int, cpus_per_worker: float | None, gpus_per_worker: float,
               data_cpus: float, fixed: bool) -> TrainPlan:
    """The trainers' share of `cluster` (Ray's resource totals) so that `data_cpus` stay free for the
    data stage. `cpus_per_worker` None means "choose": 1 CPU each when that fits, else on a `fixed`
    cluster (a local Ray, which never grows) an equal share of what the data stage leaves. Raises
    ResourceShortfall when a fixed cluster cannot hold the run; a growing one is planned as asked and
    waited for (`await_resources`)."""
    cpu, gpu = float(cluster.get("CPU", 0)), float(cluster.get("GPU", 0))
    if fixed and workers * gpus_per_worker > gpu + 1e-9:
        raise ResourceShortfall(
            f"training needs {workers * gpus_per_worker:g} GPU (--workers {workers} x --gpus-per-worker "
            f"{gpus_per_worker:g}) and this Ray instance has {gpu:g}: lower --workers or --gpus-per-worker "
            "(--gpus-per-worker 0 trains on the CPU)")
    share = cpus_per_worker
    if share is None:
        share = DEFAULT_CPUS_PER_WORKER
        if fixed and workers * share + data_cpus > cpu:
            # Round down to a hundredth so the sum never exceeds the total by a float's last bit.
            share = math.floor((cpu - data_cpus) / workers * 100) / 100
            if share < MIN_CPUS_PER_WORKER:
                raise ResourceShortfall(
                    f"{workers} trainers do not fit on {cpu:g} CPUs with {data_cpus:g} CPU left for the data stage "
                    f"(each needs at least {MIN_CPUS_PER_WORKER:g}): lower --workers, or run on a larger cluster "
                    "(--ray-address)")
    plan = TrainPlan(workers, share, gpus_per_worker, data_cpus)
    if fixed and plan.need["CPU"] > cpu + 1e-9:
        raise ResourceShortfall(
            f"training needs {plan.need['CPU']:g} CPU ({workers} trainers x --cpus-per-worker {share:g}, plus "
            f"{data_cpus:g} CPU for the data stage that feeds them) and this Ray instance has {cpu:g}: lower "
            "--cpus-per-worker or --workers (leave --cpus-per-worker unset and it is chosen to fit), or give Ray "
            "more CPUs (--num-cpus on a local instance)")
    return plan


def fits(need: dict[str, float], have: dict[str, float]) -> bool:
    return all(have.get(k, 0) + 1e-9 >= v for k, v in need.items())


def await_resources(need: dict[str, float], totals: Callable[[], dict[str, float]], deadline_s: float,
                    echo: Callable[..., None], every_s: float = 10.0, clock=time.monotonic, sleep=time.sleep) -> None:
    """Return once `totals()` holds `need`; meanwhile say what is awaited every `every_s` seconds.
    Raises ResourceShortfall after `deadline_s` seconds without it."""
    start, said = clock(), None
    while True:
        have = totals()
        if fits(need, have):
            return
        waited = clock() - start
        if waited >= deadline_s:
            raise ResourceShortfall(
                f"waited {waited:.0f} s for resources: need {_fmt(need, need)}, the cluster has {_fmt(have, need)}; lower "
                "--workers, --cpus-per-worker or --gpus-per-worker, or wait longer (--resource-wait-seconds)")
        if said is None or clock() - said >= every_s:
            echo(f"waiting for resources: need {_fmt(need, need)}, cluster has {_fmt(have, need)} "
                 f"({waited:.0f}/{deadline_s:.0f} s)")
            said = clock()
        sleep(min(1.0, every_s))


def worker_need(pool) -> dict[str, float]:
    """What one worker of a stage's pool asks Ray for."""
    need = {"CPU": float(pool.num_cpus)}
    if pool.num_gpus:
        need["GPU"] = float(pool.num_gpus)
    need.update({k: float(v) for k, v in pool.resources.items()})
    return need


def pools_unplaceable(stages, nodes: list[dict[str, float]]) -> list[str]:
    """For each stage whose one worker fits on no node (`nodes`: each alive node's resources), a line naming its
    pool's settings and what the largest nodes offer."""
    out = []
    for stage in stages:
        need = worker_need(stage.pool)
        if not any(fits(need, n) for n in nodes):
            best = {k: max((n.get(k, 0.0) for n in nodes), default=0.0) for k in need}
            out.append(f"pools.{stage.name}: one worker needs {_fmt(need, need)}; no node offers that (the most any "
                       f"node has: {_fmt(best, need)})")
    return out


def await_placeable(stages, nodes: Callable[[], list[dict[str, float]]], grows: bool, deadline_s: float,
                    echo: Callable[..., None], every_s: float = 10.0, clock=time.monotonic, sleep=time.sleep,
                    request: Callable[[list[dict[str, float]]], None] | None = None) -> None:
    """Return once every stage's worker fits on some node. A Ray that cannot grow (`grows` False: a local
    instance) raises ResourceShortfall at once; a cluster that may (joined by address) is asked for such nodes
    (`request`: the autoscaler's `request_resources`, which scales on demand and sees none before a task is
    submitted) and waited for, saying so every `every_s` seconds, up to `deadline_s`."""
    start, said, asked = clock(), None, False
    try:
        while True:
            problems = pools_unplaceable(stages, nodes())
            if not problems:
                return
            if grows and request is not None and not asked:
                request([worker_need(s.pool) for s in stages])
                asked = True
            _wait_or_raise(problems, clock() - start, grows, deadline_s, echo, said, every_s, clock)
            said = said if said is not None and clock() - said < every_s else clock()
            sleep(min(1.0, every_s))
    finally:
        if asked:
            request([])  # the request stands until replaced: the job's own tasks ask from here on


def _wait_or_raise(problems, waited, grows, deadline_s, echo, said, every_s, clock) -> None:
    if not grows:
        raise ResourceShortfall("; ".join(problems) + " (this local Ray instance never grows: lower the pool's "
                                "settings, or run on a cluster that has such nodes)")
    if waited >= deadline_s:
        raise ResourceShortfall(f"waited {waited:.0f} s: " + "; ".join(problems) + " (--resource-wait-seconds)")
    if said is None or clock() - said >= every_s:
        echo(f"waiting for nodes: {'; '.join(problems)} ({waited:.0f}/{deadline_s:.0f} s)")


def alive_nodes() -> list[dict[str, float]]:
    import ray

    return [dict(n.get("Resources") or {}) for n in ray.nodes() if n.get("Alive")]


def ray_can_grow() -> bool:
    """False where this process started the Ray instance it uses (a local one: it never grows); True where it
    joined one (by address, or initialised by its caller against a cluster)."""
    try:
        import ray._private.worker as worker

        node = worker._global_node
        return not (node is not None and node.head)
    except Exception:  # noqa: BLE001 - a private attribute: assume the cautious answer (wait, do not refuse)
        return True


def request_nodes(bundles: list[dict[str, float]]) -> None:
    """Ask the autoscaler (where there is one) for nodes that hold these workers; [] withdraws the request."""
    try:
        from ray.autoscaler.sdk import request_resources

        request_resources(bundles=bundles)
    except Exception:  # noqa: BLE001 - a cluster without an autoscaler: nothing to ask
        pass
