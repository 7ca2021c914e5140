"""`harmony train` as a user runs it: the `harmony` command in a subprocess, from the folder that holds
its inputs, relative paths, the local Ray that the CLI starts with the machine's CPUs, and no
test-only resource settings (no num_cpus, no --cpus-per-worker)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.pipeline.conftest import enc, make_scene

HARMONY = str(Path(sys.executable).with_name("harmony"))


def _user_env() -> dict:
    # The conftest's Ray Train polling interval stays (it only shortens waits); what a user would not pass
    # and the issue was about, resource settings (num_cpus, cpus_per_worker), is never given.
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_num_", "RAY_idle_"))}
    env.pop("RAY_ADDRESS", None)
    # Ray's sockets live under RAY_TMPDIR; a short one keeps their paths under the 107-byte limit.
    return env | {"RAY_TMPDIR": tempfile.mkdtemp(prefix="rt-")}


def _harmony(cwd: Path, *args: str, timeout: float = 420) -> subprocess.CompletedProcess:
    return subprocess.run([HARMONY, *args], cwd=cwd, env=_user_env(), capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def workdir(tmp_path, tiny_checkpoint) -> Path:
    """ck/ (a tiny checkpoint) and syn/manifest.parquet (8 triples) under one folder."""
    shutil.copytree(tiny_checkpoint, tmp_path / "ck")
    # As the embedded model has: a card describing --init, which a trained model must not carry.
    (tmp_path / "ck" / "MODEL_CARD.md").write_text("# the init model's card\n")
    (tmp_path / "ck" / "card.json").write_text('{"about": "init"}')
    syn, rows = tmp_path / "syn", []
    syn.mkdir()
    for k in range(8):
        comp, mask, real = make_scene(k, ratio=0.3)
        for kind, arr in (("comp", comp), ("mask", mask), ("real", real)):
            (syn / f"{kind}{k}.png").write_bytes(enc(arr))
        rows.append(dict(id=f"s{k}", composite=f"comp{k}.png", mask=f"mask{k}.png", real=f"real{k}.png"))
    pd.DataFrame(rows).to_parquet(syn / "manifest.parquet")
    return tmp_path


def test_two_trainers_on_a_small_machine_complete_with_relative_paths(workdir):
    # The command: two workers with the default CPUs each used to take every CPU of a 2-CPU
    # machine, leaving the decode stage none: no step ever ran. A relative --init used to be looked up
    # in each worker's own folder.
    r = _harmony(workdir, "train", "--task", "stage1", "--data", "syn/manifest.parquet", "--init", "ck", "--output", "run",
                 "--workers", "2", "--max-steps", "2", "--batch-size", "2", "--resolution", "32",
                 "--checkpoint-every", "2")
    assert r.returncode == 0, r.stderr[-3000:]
    summary = json.loads((workdir / "run" / "summary.json").read_text())
    assert summary["steps"] == 2 and summary["config"]["init"] == str(workdir / "ck")
    assert (workdir / "run" / "model" / "unet" / "diffusion_pytorch_model.safetensors").exists()
    assert "trainer(s) x" in r.stdout and "CPU for the data stage" in r.stdout
    # Its own model card: task, init and its id, data and rows, steps; never --init's.
    card = json.loads((workdir / "run" / "model" / "card.json").read_text())
    assert card["task"] == "stage1" and card["init"]["uri"] == str(workdir / "ck") and card["steps"] == 2
    assert card["data"]["rows"] == 8 and card["data"]["rows_trained_on"] == 8 and card["init"]["model_id"]
    text = (workdir / "run" / "model" / "MODEL_CARD.md").read_text()
    assert "init model's card" not in text and "harmony train --task stage1" in text


def test_a_missing_init_fails_within_seconds(workdir):
    t0 = time.monotonic()
    r = _harmony(workdir, "train", "--task", "stage1", "--data", "syn/manifest.parquet", "--init", "no-such-ck",
                 "--output", "run", "--workers", "2", "--max-steps", "2", "--resolution", "32", timeout=120)
    assert r.returncode == 2 and time.monotonic() - t0 < 60
    assert f"--init: checkpoint {workdir / 'no-such-ck'} does not exist" in r.stderr
    assert not (workdir / "run" / "checkpoints").exists()


def _has_cuda() -> bool:
    import torch

    return torch.cuda.is_available()


@pytest.mark.skipif(_has_cuda(), reason="this machine has a GPU")
def test_gpus_asked_of_a_cpu_only_machine_end_with_a_clear_error(workdir):
    r = _harmony(workdir, "train", "--task", "stage1", "--data", "syn/manifest.parquet", "--init", "ck",
                 "--output", "run", "--workers", "2", "--gpus-per-worker", "1", "--max-steps", "2",
                 "--resolution", "32", timeout=180)
    assert r.returncode == 2, r.stderr[-2000:]
    assert "training needs 2 GPU (--workers 2 x --gpus-per-worker 1) and this Ray instance has 0" in r.stderr
