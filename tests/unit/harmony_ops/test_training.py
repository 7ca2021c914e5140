"""Training numerics on tiny models: the reference's losses, the per-task steps, augmentation."""

from __future__ import annotations

import numpy as np
import torch

from harmony_ops.factory import SD_SCHEDULER_CONFIG, build_null_embedding, build_refiner, build_unet, build_vae
from harmony_ops.training.augment import augment
from harmony_ops.training.losses import diffusion_target, foreground_weighted_mse
from harmony_ops.training.steps import harmony_vae_loss, noise_scheduler, refiner_loss, stage1_loss


def test_foreground_weight_is_clamped_between_1_and_5():
    pred, target = torch.ones(2, 4, 8, 8), torch.zeros(2, 4, 8, 8)
    mask = torch.zeros(2, 1, 8, 8)
    mask[0, :, :1, :2] = 1  # 2/64 of the image: weight 32, clamped to 5
    mask[1] = 1  # the whole image: weight 1
    per0 = 2 / 64  # masked MSE mean over all pixels
    assert torch.isclose(foreground_weighted_mse(pred, target, mask), torch.tensor((per0 * 5 + 1.0) / 2))
    assert torch.isclose(foreground_weighted_mse(pred, target, mask, plain=True), torch.tensor(1.0))


def test_target_follows_the_prediction_type():
    latents, noise, t = torch.randn(2, 4, 4, 4), torch.randn(2, 4, 4, 4), torch.tensor([10, 900])
    eps = noise_scheduler(SD_SCHEDULER_CONFIG)
    assert torch.equal(diffusion_target(eps, latents, noise, t), noise)
    v = noise_scheduler({**SD_SCHEDULER_CONFIG, "prediction_type": "v_prediction"})
    assert torch.allclose(diffusion_target(v, latents, noise, t), v.get_velocity(latents, noise, t))


def _batch(n=2, side=32):
    g = torch.Generator().manual_seed(0)
    comp, real = torch.rand(n, 3, side, side, generator=g) * 2 - 1, torch.rand(n, 3, side, side, generator=g) * 2 - 1
    mask = torch.zeros(n, 1, side, side)
    mask[:, :, 8:24, 8:24] = 1
    return comp, mask, real


def test_stage1_step_is_seeded_and_has_gradients():
    unet, vae = build_unet("tiny"), build_vae("tiny").requires_grad_(False)
    null, sched = build_null_embedding(unet.config.cross_attention_dim), noise_scheduler(SD_SCHEDULER_CONFIG)
    comp, mask, real = _batch()
    a = stage1_loss(unet, vae, sched, null, real, comp, mask, torch.Generator().manual_seed(1))
    b = stage1_loss(unet, vae, sched, null, real, comp, mask, torch.Generator().manual_seed(1))
    assert torch.equal(a, b) and a.item() > 0
    a.backward()
    assert all(p.grad is not None for p in unet.conv_in.parameters())
    assert not any(p.grad is not None for p in vae.parameters())
    # Swapping the roles (inverse) is a different problem: a different loss.
    c = stage1_loss(unet, vae, sched, null, comp, real, mask, torch.Generator().manual_seed(1))
    assert not torch.isclose(a, c)


def test_refiner_loss_falls_on_a_small_fixed_set():
    torch.manual_seed(0)
    refiner = build_refiner("tiny")
    comp, mask, real = _batch(4)
    harmonized = (comp + real) / 2  # a fixed stand-in for stage 1's output
    opt = torch.optim.AdamW(refiner.parameters(), lr=1e-3)
    losses = []
    for _ in range(30):
        loss = refiner_loss(refiner, harmonized, mask, comp, real, refiner.config.in_channels)
        opt.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(refiner.parameters(), 1.0)
        opt.step()
        losses.append(loss.item())
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:5])


def test_augment_keeps_the_triple_aligned():
    rng = np.random.default_rng(0)
    real = rng.integers(0, 255, (40, 60, 3), dtype=np.uint8)
    mask = np.zeros((40, 60), np.float32)
    mask[10:30, 20:40] = 1
    for seed in range(5):
        c, m, r = augment(real.copy(), mask, real, 32, np.random.default_rng(seed))
        assert c.shape == r.shape == (32, 32, 3) and m.shape == (32, 32)
        assert np.array_equal(c, r) and set(np.unique(m)) <= {0, 1} and m.any()


def test_harmony_vae_loss_is_l1_of_the_conditioned_reconstruction():
    from harmony_ops.condition_vae import ConditionVAE

    cvae = ConditionVAE.from_vae(build_vae("tiny"))
    comp, mask, real = _batch()
    loss = harmony_vae_loss(cvae, real, comp, mask, torch.Generator().manual_seed(0))
    cond = torch.cat([comp, mask], dim=1)
    out = cvae(real, sample_posterior=True, cond=cond, generator=torch.Generator().manual_seed(0)).sample
    assert torch.isclose(loss, (out - real).abs().mean())
    loss.backward()
    assert cvae.conditional_encoder.conv_in.weight.grad is not None and cvae.decoder.conv_out.weight.grad is not None


def test_vae_step_reconstructs_better_after_a_few_steps_and_trains_both_halves():
    from harmony_ops.training.steps import VAE_KL_WEIGHT, VAEObjective

    torch.manual_seed(0)
    vae = build_vae("tiny", seed=0).train()
    objective = VAEObjective(vae)
    assert objective.kl_weight == VAE_KL_WEIGHT
    side = 32
    yy, xx = torch.meshgrid(torch.linspace(-1, 1, side), torch.linspace(-1, 1, side), indexing="ij")
    images = torch.stack([torch.stack([xx, yy, xx * yy]), torch.stack([yy, -xx, xx])])  # smooth, learnable
    g = torch.Generator().manual_seed(1)
    loss0, z = objective(images, g)
    assert z.shape == (2, 4, side // 8, side // 8) and not z.requires_grad
    loss0.backward()
    assert vae.encoder.conv_in.weight.grad.abs().sum() > 0 and vae.decoder.conv_out.weight.grad.abs().sum() > 0
    opt = torch.optim.AdamW(vae.parameters(), lr=2e-3)
    for _ in range(40):
        opt.zero_grad()
        loss, _ = objective(images, g)
        loss.backward()
        opt.step()
    assert float(loss.detach()) < 0.7 * float(loss0.detach())
