"""The stage contract: a name, the resources one worker needs, the pool it runs on, the columns it
reads and adds, a `setup()` run once per worker, and a batch method.

Stages know nothing of Ray; `pipelines.core.adapter` turns each into one named Ray Data operator
and checks the declared columns. Batches are pandas DataFrames of Arrow-friendly columns (ids,
URIs, scalars, bytes). Rows carry a `status`: a stage works on rows still `pending` and passes the
others through, so a row that failed early still reaches the output table.
"""

from __future__ import annotations

from typing import ClassVar

import pandas as pd
from pydantic import BaseModel, ConfigDict, Field, model_validator

from pipelines.core.failures import classify
from pipelines.errors import StageContractError
from schemas.vocabulary import ErrorKind, Status


class PoolConfig(BaseModel):
    """How one stage runs: what each worker needs, how many workers, how many rows per batch."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)

    # Ray counts resources in units of 1e-4 and schedules nothing below it: 0.01 is the smallest share kept here.
    num_cpus: float = Field(1.0, ge=0.01, description="CPUs per worker (at least 0.01)")
    num_gpus: float | None = Field(None, ge=0, description="GPUs per worker; unset: 1 when the cluster has GPUs, else 0")
    batch_size: int = Field(4, ge=1, description="rows per batch")
    min_workers: int = Field(1, ge=1, description="smallest pool size")
    max_workers: int = Field(1, ge=1, description="largest pool size (autoscaling between min and max)")
    max_tasks_in_flight: int = Field(2, ge=1, description="batches queued per actor (prefetch)")
    resources: dict[str, float] = Field(
        default_factory=dict, description="custom Ray resources per worker: workers run only on nodes that offer them"
    )

    @model_validator(mode="after")
    def _sizes(self) -> "PoolConfig":
        if self.max_workers < self.min_workers:
            raise ValueError(f"max_workers ({self.max_workers}) < min_workers ({self.min_workers})")
        if self.num_gpus is not None and 0 < self.num_gpus < 0.01:
            raise ValueError(f"num_gpus: {self.num_gpus} (0, or at least 0.01: Ray schedules nothing smaller)")
        for name, amount in self.resources.items():
            if name in ("CPU", "GPU", "memory") or not amount >= 0.01:
                raise ValueError(f"resources: {name!r}: {amount} (a custom resource, at least 0.01; CPUs and GPUs "
                                 "have their own fields)")
        return self

    def on_cluster(self, has_gpu: bool) -> "PoolConfig":
        """This pool with `num_gpus` settled for a cluster that has (or lacks) GPUs."""
        if self.num_gpus is not None:
            return self
        return self.model_copy(update={"num_gpus": 1.0 if has_gpu else 0.0})


class Stage:
    """Subclasses set `name`, `reads`, `writes` (class attributes, or properties when they depend on
    the configuration), implement `process`, and get a `pool`.

    `reads`: columns the stage needs in its input batch. `writes`: columns it adds. `run` adds the
    declared `writes` as empty (None) columns before `process` and refuses undeclared new columns;
    the adapter empties after each stage the columns that no later stage reads and removes them
    from the output unless the job keeps them: what travels between stages follows from these
    declarations.
    """

    name: ClassVar[str] = "stage"
    reads: tuple[str, ...] = ()
    writes: tuple[str, ...] = ()
    # False for stages that turn input rows into rows of another table (synthesis draws, donor
    # statistics): their output holds only their `writes`, and no input column travels on.
    keeps_rows: ClassVar[bool] = True
    # Stateful stages (a model loaded in `setup`) run on a pool of actors; stateless ones run as
    # tasks, which reuse warm worker processes and scale without holding resources.
    stateful: ClassVar[bool] = False
    pool: PoolConfig

    def setup(self) -> None:
        """Load models or open clients; called once per worker before the first batch."""

    def process(self, batch: pd.DataFrame) -> pd.DataFrame:
        raise NotImplementedError

    def crashed(self, batch: pd.DataFrame, message: str) -> pd.DataFrame:
        """The output for rows that kept killing this stage's worker: failed, `worker_crashed`, not run.
        Stages that make rows of another table (`keeps_rows = False`) say what such rows become."""
        if not self.keeps_rows:
            raise NotImplementedError(f"stage {self.name!r} must say what a row that crashes its worker becomes")
        batch = batch.copy()
        for i in batch.index[pending(batch)]:
            fail_row(batch, i, ErrorKind.WORKER_CRASHED, message)
        return self.run(batch)  # no row is pending: only the per-batch columns (job columns) are written

    def run(self, batch: pd.DataFrame) -> pd.DataFrame:
        """`process` under the column contract: what the adapter calls for every batch."""
        missing = [c for c in self.reads if c not in batch.columns]
        if missing:
            raise StageContractError(f"stage {self.name!r}: input batch lacks {missing}")
        batch = batch.copy()  # Ray may hand out read-only views
        if self.keeps_rows:
            for c in self.writes:
                if c not in batch.columns:
                    batch[c] = None
        allowed = set(batch.columns) if self.keeps_rows else set(self.writes)
        out = self.process(batch)
        extra = [c for c in out.columns if c not in allowed]
        if extra:
            raise StageContractError(f"stage {self.name!r} wrote undeclared columns {extra}; add them to its `writes`")
        return out


def pending(batch: pd.DataFrame) -> pd.Series:
    return batch["status"] == Status.PENDING


def cell(row: pd.Series, column: str):
    """`row[column]`, or None where the cell is null. Ray Data hands an Arrow null to pandas as
    `pd.NA` (and pandas readers give NaN), which is neither None nor usable as a truth value: a
    row without an optional value (e.g. no ground truth) must read as None, not fail."""
    v = row[column]
    return None if v is None or (pd.api.types.is_scalar(v) and pd.isna(v)) else v


def set_values(batch: pd.DataFrame, i, values: dict) -> None:
    """Write one row's values (a stage's result for row `i`) into its declared columns."""
    for k, v in values.items():
        batch.at[i, k] = v


def fail_row(batch: pd.DataFrame, i, kind: str, message: str, status: Status = Status.FAILED) -> None:
    batch.at[i, "status"] = status
    batch.at[i, "error_type"] = kind
    batch.at[i, "error_message"] = message[:2000]


def fail_with(batch: pd.DataFrame, i, exc: BaseException, fallback: ErrorKind, storage: bool = True) -> None:
    """Mark row `i` failed with the kind the one classifier gives `exc`."""
    fail_row(batch, i, *classify(exc, fallback, storage=storage))
