"""Losses of DiffHarmony's training scripts (nicecv/DiffHarmony, scripts/train/*.py)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

# The reference's per-sample foreground weight H*W/|mask| is clamped to this range: a small
# foreground counts up to 5x, a large one never less than plain MSE.
FG_WEIGHT_RANGE = (1.0, 5.0)


def foreground_weighted_mse(pred: torch.Tensor, target: torch.Tensor, mask: torch.Tensor, plain: bool = False) -> torch.Tensor:
    """Stage-1 loss. mask: N x 1 x h x w in {0, 1} at the prediction's size.

    As the reference computes it: MSE of the masked prediction and target per sample and channel
    (the mean over all h*w pixels, background zeros included), scaled by H*W/|mask| clamped to
    [1, 5], then averaged. `plain`: the unweighted MSE over every pixel (the reference's --nofg).
    """
    if plain:
        return F.mse_loss(pred.float(), target.float(), reduction="mean")
    mask = mask.float()
    per = F.mse_loss(pred.float() * mask, target.float() * mask, reduction="none").mean(dim=(2, 3), keepdim=True)
    area = mask.sum(dim=(2, 3), keepdim=True)
    scale = (mask.shape[2] * mask.shape[3] / area.clamp(min=1e-6)).clamp(*FG_WEIGHT_RANGE)
    return (per * scale).mean()


def diffusion_target(scheduler, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """What the UNet learns to predict, from the scheduler config's `prediction_type`."""
    kind = scheduler.config.prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    raise ValueError(f"unsupported prediction_type {kind!r} (epsilon or v_prediction)")
