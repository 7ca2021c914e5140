"""Test-only hooks, all of them. Read from the environment once, where a chain of stages is bound (or a
training run is configured) on the driver, and carried to the workers with the stages: a batch pays
nothing for them when they are unset."""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

import pandas as pd

# "STAGE:ROW_ID" makes that stage's worker exit abruptly when a batch holds that row id, as a native
# crash would.
TEST_CRASH_ENV = "HARMONY_TEST_CRASH"
# "STAGE:SECONDS" makes that stage take SECONDS longer per row: a short job that still runs long enough
# to be killed or taken over midway, without a model's start-up.
TEST_SLOW_ENV = "HARMONY_TEST_SLOW"
# `harmony train`: the last worker raises once at this step; the marker file records that it did.
TRAIN_FAIL_AT_ENV = "HARMONY_TRAIN_FAIL_AT_STEP"
TRAIN_FAIL_MARKER_ENV = "HARMONY_TRAIN_FAIL_MARKER"


@dataclass(frozen=True)
class StageHooks:
    crash_row: str | None = None
    slow_seconds: float = 0.0

    def crash(self, batch: pd.DataFrame) -> None:
        if self.crash_row is not None and "id" in batch.columns and self.crash_row in set(batch["id"].astype(str)):
            os._exit(86)

    def slow(self, batch: pd.DataFrame) -> None:
        if self.slow_seconds:
            time.sleep(self.slow_seconds * len(batch))


def stage_hooks(stage_name: str) -> StageHooks | None:
    """The hooks the environment sets for this stage; None (the usual case) when it sets none."""
    crash, slow = os.environ.get(TEST_CRASH_ENV, ""), os.environ.get(TEST_SLOW_ENV, "")
    c_stage, _, row_id = crash.partition(":")
    s_stage, _, seconds = slow.partition(":")
    crash_row = row_id if crash and c_stage == stage_name else None
    slow_seconds = float(seconds) if slow and s_stage == stage_name else 0.0
    return StageHooks(crash_row, slow_seconds) if crash_row is not None or slow_seconds else None


def train_fail_hook() -> dict:
    """`fail_at` and `fail_marker` of the training loop's configuration (None when unset)."""
    return {"fail_at": os.environ.get(TRAIN_FAIL_AT_ENV), "fail_marker": os.environ.get(TRAIN_FAIL_MARKER_ENV)}
