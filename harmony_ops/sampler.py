"""Stage 1 of DiffHarmony: the Stable-Diffusion-inpainting sampler with empty-text conditioning.

Numerics follow the reference pipeline (nicecv/DiffHarmony,
src/pipelines/pipeline_stable_diffusion_harmony.py) called with one generator per image:
- the composite is NOT masked: the VAE encodes the full composite, a posterior *sample*
  (not its mode) scaled by `scaling_factor` conditions the UNet;
- the mask is binarised at 0.5 and resized to latent size with nearest interpolation;
- UNet input = [scaled noisy latents, mask, composite latents] (4 + 1 + 4 = 9 channels);
- each image's generator is consumed in the reference's order: initial noise, then the
  VAE posterior noise, then the scheduler's per-step noise, then (with a Harmony-VAE) the
  conditional posterior noise of `decode_with_cond`. So an image's result depends only on its
  own seed, never on the other images in its batch.
- with a Harmony-VAE (DiffHarmony++), it takes the VAE's place as the reference pipeline does:
  it encodes the composite (its `encoder` is the base VAE's, frozen in training) and decodes with
  the full-resolution composite and binary mask as condition.
Guidance scale is 1.0 as in the paper: with empty text on both branches, classifier-free
guidance would compute the same prediction twice, so it is not offered.
Noise is drawn on the CPU and moved to the device, so one seed gives the same noise on
any hardware.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from diffusers import (
    AutoencoderKL,
    DDIMScheduler,
    DPMSolverMultistepScheduler,
    EulerAncestralDiscreteScheduler,
    EulerDiscreteScheduler,
    UNet2DConditionModel,
)
from diffusers.utils.torch_utils import randn_tensor

from .defaults import DEFAULT_SCHEDULER, DEFAULT_STEPS, SCHEDULER_NAMES

SCHEDULERS = dict(zip(SCHEDULER_NAMES, (EulerAncestralDiscreteScheduler, EulerDiscreteScheduler, DDIMScheduler,
                                        DPMSolverMultistepScheduler)))


def make_scheduler(name: str, config: dict):
    """A fresh scheduler of the named kind from a diffusers scheduler config."""
    try:
        cls = SCHEDULERS[name]
    except KeyError:
        raise ValueError(f"unknown scheduler {name!r}; choose one of {sorted(SCHEDULERS)}") from None
    return cls.from_config(config)


def generators_for(seeds: list[int]) -> list[torch.Generator]:
    return [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]


class DiffHarmonySampler:
    """Runs stage 1 on batches of one shape. Callable on tensors; knows nothing of files or Ray."""

    def __init__(
        self,
        unet: UNet2DConditionModel,
        vae: AutoencoderKL,
        scheduler_config: dict,
        null_embedding: torch.Tensor,
        scheduler: str = DEFAULT_SCHEDULER,
        harmony_vae=None,
    ):
        vae = harmony_vae if harmony_vae is not None else vae
        if unet.config.in_channels != 2 * vae.config.latent_channels + 1:
            raise ValueError(
                f"the UNet takes {unet.config.in_channels} input channels, but an inpainting UNet for this VAE "
                f"needs {2 * vae.config.latent_channels + 1} (latents, mask, composite latents)"
            )
        self.unet = unet
        self.vae = vae
        self.harmony_vae = harmony_vae
        self.scheduler_config = dict(scheduler_config)
        self.scheduler_name = scheduler
        make_scheduler(scheduler, self.scheduler_config)  # fail early on a bad name
        self.null_embedding = null_embedding
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1)

    @property
    def device(self) -> torch.device:
        return self.unet.device

    @property
    def dtype(self) -> torch.dtype:
        return self.unet.dtype

    @property
    def multiple(self) -> int:
        """Image sides must be multiples of this (VAE factor x UNet downsampling)."""
        return self.vae_scale_factor * 2 ** (len(self.unet.config.block_out_channels) - 1)

    def to(self, device: torch.device | str) -> "DiffHarmonySampler":
        self.unet.to(device=device)
        self.vae.to(device=device)
        self.null_embedding = self.null_embedding.to(device=device)
        return self

    @torch.no_grad()
    def __call__(
        self,
        images: torch.Tensor,
        masks: torch.Tensor,
        seeds: list[int] | None = None,
        generators: list[torch.Generator] | None = None,
        num_inference_steps: int = DEFAULT_STEPS,
        latents: torch.Tensor | None = None,
        scheduler: str | None = None,
    ) -> torch.Tensor:
        """Harmonize a batch.

        images: N x 3 x H x W in [-1, 1]; masks: N x 1 x H x W in [0, 1] (binarised at 0.5).
        seeds or generators: one per image (seeds win if both are given).
        latents: optional initial noise N x C x H/f x W/f (like diffusers pipelines).
        Returns N x 3 x H x W float32 in [0, 1] on the CPU.
        """
        n, _, height, width = images.shape
        if masks.shape[0] != n or masks.shape[-2:] != images.shape[-2:]:
            raise ValueError(f"masks {tuple(masks.shape)} do not match images {tuple(images.shape)}")
        if height % self.vae_scale_factor or width % self.vae_scale_factor:
            raise ValueError(f"image size {width}x{height} must be a multiple of {self.vae_scale_factor}")
        if seeds is not None:
            generators = generators_for(seeds)
        if generators is None or len(generators) != n:
            raise ValueError(f"need one seed or generator per image ({n})")
        device, dtype = self.device, self.dtype

        sched = make_scheduler(scheduler or self.scheduler_name, self.scheduler_config)
        sched.set_timesteps(num_inference_steps, device=device)

        lh, lw = height // self.vae_scale_factor, width // self.vae_scale_factor
        shape = (n, self.vae.config.latent_channels, lh, lw)
        if latents is None:
            latents = randn_tensor(shape, generator=generators, device=device, dtype=dtype)
        elif tuple(latents.shape) != shape:
            raise ValueError(f"latents must have shape {shape}, got {tuple(latents.shape)}")
        else:
            latents = latents.to(device=device, dtype=dtype)
        latents = latents * sched.init_noise_sigma

        full_mask = (masks >= 0.5).to(device=device, dtype=dtype)
        images = images.to(device=device, dtype=dtype)
        posterior = self.vae.encode(images).latent_dist
        cond_latents = posterior.sample(generator=generators) * self.vae.config.scaling_factor
        mask = F.interpolate(full_mask, size=(lh, lw))
        text = self.null_embedding.to(device=device, dtype=dtype).expand(n, -1, -1)

        for t in sched.timesteps:
            model_in = torch.cat([sched.scale_model_input(latents, t), mask, cond_latents], dim=1)
            noise_pred = self.unet(model_in, t, encoder_hidden_states=text).sample
            latents = sched.step(noise_pred, t, latents, generator=generators).prev_sample

        if self.harmony_vae is not None:
            cond = torch.cat([images, full_mask], dim=1)
            out = self.harmony_vae.decode_with_cond(latents / self.vae.config.scaling_factor, cond, generator=generators).sample
        else:
            out = self.vae.decode(latents / self.vae.config.scaling_factor).sample
        return (out / 2 + 0.5).clamp(0, 1).float().cpu()
