"""Out-of-memory pressure in the model stage, without Ray: a batch too large for the device is split
in halves and retried at smaller sizes; only a row that fails on its own is failed, with a reason."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

import pipelines.jobs.harmonize.model as stages
from harmony_ops.engines import RunResult
from harmony_ops.masks import ellipse
from pipelines.config import ModelConfig
from pipelines.jobs.harmonize.config import HarmonizeJobConfig
from pipelines.core.adapter import bind
from pipelines.jobs.harmonize.decode import CUTOUT_COLUMNS, DecodeStage
from pipelines.jobs.harmonize.finish import FinishStage, job_columns
from pipelines.jobs.harmonize.model import ModelStage
from schemas.metrics import COLUMNS
from pipelines.io.manifest import prepare_rows
from tests.conftest import png_bytes


class FakeEngine:
    """Returns each region unchanged; raises CUDA OOM above `capacity` items or for a poisoned seed."""

    name = "fake"
    model_id = "fake"
    needs_resize = False

    def __init__(self, capacity: int, poisoned: set[int] = frozenset(), error=None):
        self.capacity, self.poisoned, self.error = capacity, set(poisoned), error
        self.calls: list[tuple[int, bool]] = []  # (items, succeeded)

    def run(self, items, seeds):
        fail = len(items) > self.capacity or bool(self.poisoned & set(seeds))
        self.calls.append((len(items), not fail))
        if fail:
            if self.error is not None and self.poisoned & set(seeds):
                raise self.error
            raise torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate {len(items) * 512} MiB")
        return RunResult(regions=[it.region_image for it in items], seconds={"stage1": 0.01 * len(items)})


def decoded_batch(tmp_path, n: int) -> pd.DataFrame:
    """n decoded rows (the decode stage's real output), ready for the model stage."""
    rng = np.random.default_rng(0)
    rows = []
    for k in range(n):
        comp = rng.integers(0, 255, (40, 48, 3), dtype=np.uint8)
        mask = (ellipse(40, 48, rng, (0.2, 0.2)) * 255).astype(np.uint8)
        (tmp_path / f"c{k}.png").write_bytes(png_bytes(comp))
        (tmp_path / f"m{k}.png").write_bytes(png_bytes(mask))
        rows.append({"id": f"r{k}", "composite": f"c{k}.png", "mask": f"m{k}.png"})
    cfg = job_config(tmp_path)
    prepared = prepare_rows(pd.DataFrame(rows), str(tmp_path / "manifest.csv"), cfg.output, "png", cfg.seed)
    batch = DecodeStage.for_job(cfg, False).run(prepared)
    assert (batch["status"] == "pending").all()
    return batch


def job_config(tmp_path) -> HarmonizeJobConfig:
    return HarmonizeJobConfig(manifest=str(tmp_path / "manifest.csv"), output=str(tmp_path / "out"),
                              model=ModelConfig(engine="baseline"))


def model_stage(tmp_path, engine):
    """The model stage as the harmonize chain runs it (with the chain's column handling)."""
    cfg = job_config(tmp_path)
    stage = ModelStage.for_job(cfg)
    stage.engine = engine  # what setup() would load
    chain = [DecodeStage.for_job(cfg, False), stage, FinishStage.for_job(cfg, job_columns(cfg, "fake", "k"))]
    return bind(chain, inputs=["row", "id", "status", "seed", "output", "composite", "mask", "real", *CUTOUT_COLUMNS], keep=COLUMNS)[1]


@pytest.fixture
def freed(monkeypatch):
    calls = []
    monkeypatch.setattr(stages, "free_device_memory", lambda: calls.append(1))
    return calls


def test_batch_too_large_is_split_until_it_fits(tmp_path, freed):
    batch = decoded_batch(tmp_path, 8)
    engine = FakeEngine(capacity=2)
    out = model_stage(tmp_path, engine).run(batch)
    assert (out["status"] == "pending").all()  # nothing failed: every row ran at a smaller size
    assert out["result_rgb"].map(lambda b: isinstance(b, bytes) and len(b) > 0).all()
    assert engine.calls == [(8, False), (4, False), (2, True), (2, True), (4, False), (2, True), (2, True)]
    assert len(freed) == 3  # device memory released after each failed attempt
    # the bulky transit columns are dropped after the model ran
    assert out["region_rgb"].isna().all() and out["infer_rgb"].isna().all()


def test_only_the_poisoned_row_fails_as_out_of_memory(tmp_path, freed):
    batch = decoded_batch(tmp_path, 8)
    poisoned_row = batch.index[5]
    engine = FakeEngine(capacity=2, poisoned={int(batch.at[poisoned_row, "seed"])})
    out = model_stage(tmp_path, engine).run(batch)
    failed = out[out["status"] == "failed"]
    assert list(failed.index) == [poisoned_row]
    assert failed.at[poisoned_row, "error_type"] == "out_of_memory"
    assert "CUDA out of memory" in failed.at[poisoned_row, "error_message"]
    assert "OutOfMemoryError" in failed.at[poisoned_row, "error_message"]
    assert pd.isna(out.at[poisoned_row, "result_rgb"])
    ok = out.drop(index=poisoned_row)
    assert (ok["status"] == "pending").all() and ok["result_rgb"].map(lambda b: isinstance(b, bytes)).all()
    # the poisoned row was tried alone before it was failed, and its neighbour still ran
    assert engine.calls[-3:] == [(1, True), (1, False), (2, True)]
    assert all(n <= 2 for n, ok_ in engine.calls if ok_)
    # every successful row's result is its own region (no mix-up while splitting)
    for i in ok.index:
        assert out.at[i, "result_rgb"] == batch.at[i, "region_rgb"]


def test_a_non_memory_error_on_one_row_is_a_model_error(tmp_path, freed):
    batch = decoded_batch(tmp_path, 4)
    bad = batch.index[0]
    engine = FakeEngine(capacity=4, poisoned={int(batch.at[bad, "seed"])}, error=ValueError("NaN in latents"))
    out = model_stage(tmp_path, engine).run(batch)
    assert out.at[bad, "status"] == "failed" and out.at[bad, "error_type"] == "model_error"
    assert "NaN in latents" in out.at[bad, "error_message"]
    assert (out.drop(index=bad)["status"] == "pending").all()


def test_rows_that_already_failed_are_not_sent_to_the_engine(tmp_path, freed):
    batch = decoded_batch(tmp_path, 4)
    batch.loc[batch.index[1], ["status", "error_type", "error_message"]] = ["failed", "corrupt", "x"]
    engine = FakeEngine(capacity=8)
    out = model_stage(tmp_path, engine).run(batch)
    assert engine.calls == [(3, True)]
    assert out.at[batch.index[1], "error_type"] == "corrupt"
