"""What the `harmony train` pipeline tests share: the config they train with, checks on the
exported model. Each Ray Train launch costs tens of seconds on a 2-core machine: the slow tests live in
files of their own so that the suite's processes share them out."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np


SIDE = 32


def quiet(*a, **k):
    pass


def _cfg(task, data, init, out, **kw):
    from pipelines.jobs.train.config import TrainJobConfig

    base = dict(task=task, data=str(data / "train.parquet"), init=str(init), output=str(out), workers=2,
                cpus_per_worker=0.5, batch_size=2, resolution=SIDE, max_steps=2, checkpoint_every=2, log_every=1,
                random_crop=False, sampler_steps=2, lr=1e-3, max_failures=1)
    base.update(kw)
    return TrainJobConfig(**base)


def _image_runs(model: Path, data: Path, tmp: Path) -> None:
    from pipelines.cli import main

    out = tmp / "image.png"
    assert main(["image", str(data / "comp" / "s0.png"), str(data / "mask" / "s0.png"), "-o", str(out),
                 "--model", str(model)]) == 0
    assert out.stat().st_size > 0


def _unet_changed(model: Path, init: Path, part: str = "unet") -> bool:
    from safetensors.torch import load_file

    new, old = (load_file(p / part / "diffusion_pytorch_model.safetensors") for p in (model, init))
    return any(not np.allclose(new[k].numpy(), old[k].numpy()) for k in old)


def _registered_checkpoints(ckpts) -> int:
    n = 0
    for snap in ckpts.glob("*/checkpoint_manager_snapshot.json"):
        try:
            n = max(n, len(json.loads(snap.read_text()).get("checkpoint_results", [])))
        except ValueError:  # being written
            pass
    return n


