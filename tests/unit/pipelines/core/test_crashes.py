"""A batch that kills its worker is retried a bounded number of times, then split down to the row
that still kills it, which fails with `worker_crashed`; the others complete. Without Ray: a worker
death is simulated by an exception that skips the attempt's end, as a dead process would."""

from __future__ import annotations

from dataclasses import dataclass, field

import pandas as pd

from pipelines.core.adapter import bind
from pipelines.core.crashes import CrashLedger
from pipelines.core.stage import PoolConfig, Stage, pending, set_values
from schemas.vocabulary import Status


class WorkerDied(BaseException):
    """Stands for os._exit: nothing after it in the worker runs."""


@dataclass
class Poisoned(Stage):
    poison: str = "r5"
    pool: PoolConfig = field(default_factory=PoolConfig)
    calls: list = field(default_factory=list)
    name = "model"
    reads = ("id", "status")
    writes = ("y",)

    def process(self, batch):
        todo = batch[pending(batch)]
        if todo.empty:
            return batch
        self.calls.append(list(todo["id"]))
        if self.poison in set(todo["id"]):  # only pending rows are ever worked on
            raise WorkerDied
        for i in batch.index[pending(batch)]:
            set_values(batch, i, {"y": 1})
        return batch


def retried_until_done(bound, batch, limit=100):
    """What Ray does with a batch whose worker died: run it again (here: bounded, to fail loudly)."""
    for attempt in range(limit):
        try:
            return bound.run(batch), attempt
        except WorkerDied:
            continue
    raise AssertionError("never finished")


def test_the_row_that_kills_its_worker_fails_and_every_other_row_completes(tmp_path):
    stage = Poisoned()
    ledger = CrashLedger(str(tmp_path / "attempts"), {}, max_crashes=2)
    bound = bind([stage], inputs=["row", "id", "status"], ledger=ledger)[0]
    batch = pd.DataFrame({"row": range(8), "id": [f"r{k}" for k in range(8)], "status": Status.PENDING, "error_type": None, "error_message": None})
    out, deaths = retried_until_done(bound, batch)
    out = out.set_index("id")
    assert out.loc["r5", "status"] == Status.FAILED and out.loc["r5", "error_type"] == "worker_crashed"
    assert "2 times" in out.loc["r5", "error_message"]
    assert (out.drop(index="r5")["y"] == 1).all() and (out.drop(index="r5")["status"] == Status.PENDING).all()
    # Deaths are bounded: 2 on the batch, then 2 on each half holding r5 (4, 2, 1 rows).
    assert deaths == 2 * 4
    assert ["r5"] in stage.calls and stage.calls.count(["r5"]) == 2  # the row alone, twice, then never again


def test_a_batch_that_finishes_leaves_no_marker_and_is_never_split(tmp_path):
    stage = Poisoned(poison="none")
    ledger = CrashLedger(str(tmp_path / "attempts"), {}, max_crashes=1)
    bound = bind([stage], inputs=["row", "id", "status"], ledger=ledger)[0]
    batch = pd.DataFrame({"row": range(4), "id": [f"r{k}" for k in range(4)], "status": Status.PENDING, "error_type": None, "error_message": None})
    out, deaths = retried_until_done(bound, batch)
    assert deaths == 0 and stage.calls == [["r0", "r1", "r2", "r3"]]
    assert ledger.deaths(["0", "1", "2", "3"]) == 0
    bound.run(batch)  # a second run of the same rows (a retry after a later stage died) is not split either
    assert stage.calls[-1] == ["r0", "r1", "r2", "r3"]
