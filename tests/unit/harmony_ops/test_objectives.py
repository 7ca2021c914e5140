"""harmony_ops/training/objectives.py: each task's objective on the tiny checkpoint, on tensors (no Ray)."""

from __future__ import annotations

import pytest
import torch

from harmony_ops.training.objectives import OBJECTIVES, load_train_models


def batch(n=2, side=32):
    g = torch.Generator().manual_seed(0)
    comp = torch.rand(n, 3, side, side, generator=g) * 2 - 1
    real = torch.rand(n, 3, side, side, generator=g) * 2 - 1
    mask = torch.zeros(n, 1, side, side)
    mask[:, :, 8:24, 8:24] = 1
    return comp, mask, real


@pytest.mark.parametrize("task", sorted(OBJECTIVES))
def test_each_objective_trains_only_its_model(tiny_checkpoint, task):
    kind = OBJECTIVES[task]
    objective = kind(load_train_models(str(tiny_checkpoint), torch.device("cpu"), needs=kind.needs), sampler_steps=1)
    trained = objective.trained
    comp, mask, real = batch()
    loss = objective.loss(objective.module(), comp, mask, real, torch.Generator().manual_seed(1))
    assert loss.ndim == 0 and torch.isfinite(loss)
    loss.backward()
    assert any(p.grad is not None for p in trained.parameters())
    frozen = [m for m in (objective.m.unet, objective.m.vae, objective.m.refiner, objective.m.harmony_vae)
              if m is not None and m is not trained]
    assert all(p.grad is None for m in frozen for p in m.parameters())
    out = objective.predict(comp, mask, real, seeds=[0, 1])
    assert out.shape == comp.shape and float(out.min()) >= 0 and float(out.max()) <= 1
    target = objective.validation_target(comp, real)
    assert target is (comp if task == "inverse" else real)


def test_the_vae_objective_records_the_latents_scale_for_export(tiny_checkpoint):
    kind = OBJECTIVES["vae"]
    objective = kind(load_train_models(str(tiny_checkpoint), torch.device("cpu")))
    comp, mask, real = batch()
    objective.loss(objective.module(), comp, mask, real, torch.Generator().manual_seed(1))
    state = objective.extra_state()
    assert state["latent_var"][1] > 0
    objective.before_export()
    std = float((state["latent_var"][0] / state["latent_var"][1]).sqrt())
    assert objective.trained.config.scaling_factor == round(1 / std, 5)
    fresh = kind(load_train_models(str(tiny_checkpoint), torch.device("cpu")))
    fresh.load_extra_state(state)
    assert torch.equal(fresh.latent_var, state["latent_var"])


def test_a_refiner_task_needs_a_refiner(tmp_path):
    from harmony_ops.factory import write_checkpoint

    ck = write_checkpoint(tmp_path / "ck", arch="tiny", seed=0, refiner=False)
    with pytest.raises(ValueError, match="has no refiner"):
        load_train_models(str(ck), torch.device("cpu"), needs=("refiner",))
