"""The stage contract without Ray: chains are checked, columns travel as declared, failures are
classified by one rule, CPU stages never import torch."""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass, field

import pandas as pd
import pytest

from harmony_ops.imageio import ImageError
from pipelines.core.adapter import _named, _Task, _Worker, bind, plan_columns, run_batch
from pipelines.core.failures import classify
from pipelines.core.stage import PoolConfig, Stage, cell, pending, set_values
from pipelines.errors import StageContractError
from schemas.vocabulary import ErrorKind, Status


@dataclass
class Add(Stage):
    reads: tuple = ("x",)
    writes: tuple = ("y",)
    pool: PoolConfig = field(default_factory=PoolConfig)
    name = "add"

    def process(self, batch):
        for i in batch.index[pending(batch)]:
            set_values(batch, i, {self.writes[0]: batch.at[i, "x"] + 1})
        return batch


@dataclass
class Double(Add):
    reads: tuple = ("y",)
    writes: tuple = ("z",)
    name = "double"

    def process(self, batch):
        batch["z"] = batch["y"] * 2
        return batch


@dataclass
class Sneaky(Add):
    name = "sneaky"

    def process(self, batch):
        batch["undeclared"] = 1
        return super().process(batch)


def rows(n=3) -> pd.DataFrame:
    return pd.DataFrame({"x": range(n), "status": [Status.PENDING] * n, "extra": ["keep me"] * n})


def test_a_stage_that_reads_what_nothing_writes_is_refused_before_anything_runs():
    with pytest.raises(StageContractError, match=r"'double' reads \['y'\]"):
        plan_columns([Double()], inputs=["x", "status"])
    assert plan_columns([Add(), Double()], inputs=["x", "status"]) == [(), ("y",)]


def test_columns_no_later_stage_reads_are_emptied_then_removed_unless_kept():
    out = run_batch([Add(), Double()], rows())
    assert list(out["z"]) == [2, 4, 6]
    assert "y" not in out.columns  # written, read by nobody after, not kept
    assert list(out["extra"]) == ["keep me"] * 3  # an input column travels through untouched
    assert "y" in run_batch([Add(), Double()], rows(), keep=["y"]).columns  # the last stage's writes: always
    # Between stages a finished column is emptied, not removed: every block keeps one schema.
    first = bind([Add(), Double(), Add(writes=("w",))], inputs=["x", "status", "extra"], keep=["z"])[1]
    mid = first.run(run_batch([Add()], rows(), keep=["y"]))
    assert mid["y"].isna().all() and list(mid["z"]) == [2, 4, 6]


def test_undeclared_columns_and_missing_inputs_fail_loudly():
    with pytest.raises(StageContractError, match="undeclared columns \\['undeclared'\\]"):
        Sneaky().run(rows())
    with pytest.raises(StageContractError, match="input batch lacks \\['y'\\]"):
        Double().run(rows())


def test_rows_that_are_not_pending_pass_through_unchanged():
    batch = rows()
    batch.loc[1, "status"] = Status.INVALID
    out = Add().run(batch)
    assert pd.isna(out.at[1, "y"]) and list(out["y"].dropna()) == [1, 3]
    assert "y" not in batch.columns  # the input batch is never modified (Ray may share it)


def test_each_operator_is_named_after_its_stage():
    from ray.data._internal.logical.operators.map_operator import MapBatches  # noqa: F401 - Ray present

    bound = bind([Add()], inputs=["x", "status"])[0]
    assert type(_named(_Task, "decode")(bound)).__name__ == "decode"
    assert _named(_Worker, "model").__name__ == "model"
    assert issubclass(_named(_Worker, "model"), _Worker)


@pytest.mark.parametrize("exc, fallback, storage, kind", [
    (ImageError(ErrorKind.EMPTY_MASK, "no fg"), ErrorKind.DECODE_ERROR, True, "empty_mask"),
    (FileNotFoundError("s3://b/x.png"), ErrorKind.STORAGE_ERROR, True, "missing_object"),
    (ConnectionResetError("reset"), ErrorKind.FINISH_ERROR, True, "storage_error"),
    (OSError("image file is truncated"), ErrorKind.DECODE_ERROR, False, "decode_error"),
    (RuntimeError("CUDA out of memory. Tried to allocate 2 GiB"), ErrorKind.MODEL_ERROR, False, "out_of_memory"),
    (MemoryError(), ErrorKind.MODEL_ERROR, False, "out_of_memory"),
    (ValueError("NaN in latents"), ErrorKind.MODEL_ERROR, False, "model_error"),
])
def test_one_classifier_from_exception_to_kind(exc, fallback, storage, kind):
    got, message = classify(exc, fallback, storage=storage)
    assert got == kind and isinstance(message, str) and message


def test_cpu_stage_modules_never_import_torch():
    code = ("import sys\n"
            "import pipelines.jobs.harmonize.decode, pipelines.jobs.harmonize.finish, pipelines.jobs.evaluate.stage\n"
            "import pipelines.jobs.synthesize.stage, pipelines.jobs.synthesize.donors, pipelines.core.adapter\n"
            "print('torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False", out.stderr


def test_cell_reads_every_null_as_none():
    # Ray Data hands Arrow nulls to pandas as pd.NA; pandas readers give NaN or None.
    row = pd.Series({"a": pd.NA, "b": float("nan"), "c": None, "d": b"bytes", "e": "uri", "f": 0})
    assert [cell(row, k) for k in "abc"] == [None, None, None]
    assert (cell(row, "d"), cell(row, "e"), cell(row, "f")) == (b"bytes", "uri", 0)


def test_baseline_model_actor_never_imports_torch():
    # A fresh Ray worker pays ~10 s of CPU to import torch and diffusers; a baseline actor needs neither.
    code = ("import sys\n"
            "from pipelines.config import ModelConfig, PoolConfig\n"
            "from pipelines.core.engine import load_actor_engine, peak_memory_mib as _peak_memory_mib\n"
            "engine = load_actor_engine(ModelConfig(engine='baseline'), PoolConfig(num_cpus=0.5), None)\n"
            "host, device = _peak_memory_mib()\n"
            "print(engine.name, device, [m for m in ('torch', 'diffusers') if m in sys.modules])")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "baseline None []", out.stderr


def test_the_slow_stage_hook_holds_back_only_its_stage(monkeypatch):
    import time

    from pipelines.core.test_hooks import TEST_SLOW_ENV

    monkeypatch.setenv(TEST_SLOW_ENV, "double:0.1")
    t = time.perf_counter()
    out = run_batch([Add(), Double()], rows(3), start=0, stop=1)  # "add" only
    assert time.perf_counter() - t < 0.1
    t = time.perf_counter()
    out = run_batch([Add(), Double()], out, start=1)
    assert time.perf_counter() - t >= 0.3 and out["z"].tolist() == [2, 4, 6]
