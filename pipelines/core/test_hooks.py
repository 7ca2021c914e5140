"""Test-only hooks, read by the workers at call time from the environment (Ray workers inherit the
driver's environment when a local instance starts); unset, they cost one dictionary lookup."""

from __future__ import annotations

import os
import time

import pandas as pd

# "STAGE:ROW_ID" makes that stage's worker exit abruptly when a batch holds that row id, as a native
# crash would.
TEST_CRASH_ENV = "HARMONY_TEST_CRASH"
# "STAGE:SECONDS" makes that stage take SECONDS longer per row: a short job that still runs long enough
# to be killed or taken over midway, without a model's start-up.
TEST_SLOW_ENV = "HARMONY_TEST_SLOW"


def maybe_crash_for_test(stage_name: str, batch: pd.DataFrame) -> None:
    target = os.environ.get(TEST_CRASH_ENV)
    if target and "id" in batch.columns:
        stage, _, row_id = target.partition(":")
        if stage == stage_name and row_id in set(batch["id"].astype(str)):
            os._exit(86)


def maybe_slow_for_test(stage_name: str, batch: pd.DataFrame) -> None:
    target = os.environ.get(TEST_SLOW_ENV)
    if target:
        stage, _, seconds = target.partition(":")
        if stage == stage_name:
            time.sleep(float(seconds) * len(batch))
