"""A stage: a name, declared resources, a `setup()` run once per worker, and a batch method.

Stages know nothing of Ray; `ray_adapter.apply_stage` turns one into a `map_batches` call.
Batches are pandas DataFrames of Arrow-friendly columns (ids, URIs, scalars, bytes).
Rows carry a `status`; a stage only works on rows still `pending` and passes the others
through, so a row that failed early still reaches the metrics table.
"""

from __future__ import annotations

from dataclasses import dataclass

import pandas as pd

PENDING = "pending"


@dataclass(frozen=True)
class Resources:
    num_cpus: float = 1.0
    num_gpus: float = 0.0
    batch_size: int = 4
    min_workers: int = 1
    max_workers: int = 1
    # >1 lets Ray queue the next batch on an actor while it runs the current one, so the
    # accelerator never waits for inputs to arrive.
    max_tasks_in_flight: int = 2


class Stage:
    name: str = "stage"
    resources: Resources = Resources()
    # Stateful stages (a model loaded in `setup`) run on a pool of actors; stateless ones run
    # as tasks, which reuse warm worker processes and scale without holding resources.
    stateful: bool = False

    def setup(self) -> None:
        """Load models or open clients; called once per worker before the first batch."""

    def process(self, batch: pd.DataFrame) -> pd.DataFrame:
        raise NotImplementedError

    def __call__(self, batch: pd.DataFrame) -> pd.DataFrame:
        return self.process(batch)


def with_columns(batch: pd.DataFrame, names) -> pd.DataFrame:
    """A copy of the batch (Ray may hand out read-only views) with the named columns present (None)."""
    batch = batch.copy()
    for c in names:
        if c not in batch.columns:
            batch[c] = None
    return batch


def pending(batch: pd.DataFrame) -> pd.Series:
    return batch["status"] == PENDING


def fail_row(batch: pd.DataFrame, i, kind: str, message: str, status: str = "failed") -> None:
    batch.at[i, "status"] = status
    batch.at[i, "error_type"] = kind
    batch.at[i, "error_message"] = message[:2000]
