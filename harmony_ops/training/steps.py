"""One optimisation step's loss per task, on tensors: what each Ray Train worker calls per batch.

Images are N x 3 x H x W in [-1, 1], masks N x 1 x H x W in {0, 1}. Numerics follow the reference
(scripts/train/diffharmony.py, scripts/train/refinement_stage.py): VAE posterior *samples* scaled
by `scaling_factor`, DDPM noise at uniform timesteps on the target's latents, the mask resized to
latent size with nearest interpolation, UNet input [noisy latents, mask, conditioning latents]
(the composite's, unmasked), empty-text conditioning.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import DDPMScheduler

from ..refiner import make_refiner_input
from .losses import diffusion_target, foreground_weighted_mse


def autocast(device, precision: str):
    """The mixed precision a training step runs under: bf16 autocast on CUDA for "auto" and "bf16", fp16
    for "fp16"; none on the CPU or for "fp32" (the weights, gradients and AdamW state stay fp32)."""
    device = torch.device(device)
    if device.type != "cuda" or precision == "fp32":
        return torch.autocast("cpu", enabled=False)
    return torch.autocast("cuda", dtype=torch.float16 if precision == "fp16" else torch.bfloat16)


def noise_scheduler(config: dict) -> DDPMScheduler:
    """The training noise schedule from the checkpoint's scheduler config (betas, prediction_type)."""
    return DDPMScheduler.from_config(config)


def encode(vae, images: torch.Tensor, generator: torch.Generator | None = None) -> torch.Tensor:
    with torch.no_grad():
        return vae.encode(images.to(device=vae.device, dtype=vae.dtype)).latent_dist.sample(generator) * vae.config.scaling_factor


def stage1_loss(unet, vae, scheduler: DDPMScheduler, null_embedding: torch.Tensor, target: torch.Tensor,
                condition: torch.Tensor, mask: torch.Tensor, generator: torch.Generator | None = None,
                plain_mse: bool = False) -> torch.Tensor:
    """Denoising loss of the 9-channel UNet that turns `condition` into `target` inside `mask`.

    stage1: target = real, condition = composite; inverse: the two swapped (DiffHarmony++'s
    inverse model learns to put the disharmony back)."""
    latents = encode(vae, target, generator).float()
    cond = encode(vae, condition, generator).float()
    m = F.interpolate((mask >= 0.5).float().to(latents.device), size=latents.shape[-2:])
    n = latents.shape[0]
    noise = torch.randn(latents.shape, generator=generator, device=generator.device if generator else None)
    noise = noise.to(latents.device)
    t = torch.randint(0, scheduler.config.num_train_timesteps, (n,), generator=generator,
                      device=generator.device if generator else None).long().to(latents.device)
    noisy = scheduler.add_noise(latents, noise, t)
    model_in = torch.cat([noisy, m, cond], dim=1)
    dtype = next(unet.parameters()).dtype
    text = null_embedding.to(device=latents.device, dtype=dtype).expand(n, -1, -1)
    pred = unet(model_in.to(dtype), t, encoder_hidden_states=text).sample
    return foreground_weighted_mse(pred, diffusion_target(scheduler, latents, noise, t), m, plain=plain_mse)


def refiner_loss(refiner, harmonized: torch.Tensor, mask: torch.Tensor, composite: torch.Tensor,
                 real: torch.Tensor, in_channels: int) -> torch.Tensor:
    """MSE of the refiner's output against the real image over every pixel; `harmonized` is the
    frozen stage 1's output in [-1, 1] (detached: only the refiner learns)."""
    x = make_refiner_input(harmonized.detach(), (mask >= 0.5).float(), composite, in_channels)
    pred = refiner(x).sample
    return F.mse_loss(pred.float(), real.float().to(pred.device), reduction="mean")


def harmony_vae_loss(cvae, real: torch.Tensor, composite: torch.Tensor, mask: torch.Tensor,
                     generator: torch.Generator | None = None) -> torch.Tensor:
    """Harmony-VAE (scripts/train/cvae.py, mode normal): L1 between the real image and its
    reconstruction from a posterior sample of its latents, decoded with the [composite, mask]
    condition; every part of the model learns."""
    cond = torch.cat([composite, (mask >= 0.5).float()], dim=1)
    out = cvae(real, sample_posterior=True, cond=cond, generator=generator).sample
    return F.l1_loss(out.float(), real.float().to(out.device), reduction="mean")


# LDM's autoencoder weight of the KL term (taming/ldm configs, kl_weight 1e-6): the latents stay
# close to a Gaussian without blurring the reconstruction much.
VAE_KL_WEIGHT = 1e-6


def vae_loss(vae, images: torch.Tensor, generator: torch.Generator | None = None,
             kl_weight: float = VAE_KL_WEIGHT) -> tuple[torch.Tensor, torch.Tensor]:
    """AutoencoderKL reconstruction loss (L1 of a posterior sample's decode + kl_weight * KL), as the
    pixel and KL terms of LDM's autoencoder training; also returns the posterior sample, whose std
    sets the exported `scaling_factor`."""
    posterior = vae.encode(images).latent_dist
    z = posterior.sample(generator)
    rec = vae.decode(z).sample
    loss = F.l1_loss(rec.float(), images.float().to(rec.device), reduction="mean") + kl_weight * posterior.kl().mean()
    return loss, z.detach()


class VAEObjective(torch.nn.Module):
    """`vae_loss` as a module's forward, so DDP (which syncs gradients of what its forward ran)
    can wrap it: the loss calls encode and decode, not the VAE's own forward."""

    def __init__(self, vae, kl_weight: float = VAE_KL_WEIGHT):
        super().__init__()
        self.vae, self.kl_weight = vae, kl_weight

    def forward(self, images: torch.Tensor, generator: torch.Generator | None = None):
        return vae_loss(self.vae, images, generator, self.kl_weight)
