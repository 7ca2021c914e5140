"""One objective per `harmony train` task: which model it trains, its loss on a batch, what validation
measures, and what it adds to the checkpoint. The training loop calls these and never asks which task
it runs. Plain torch (no Ray): each is callable on tensors in a unit test."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from harmony_ops.training.steps import VAEObjective, harmony_vae_loss, noise_scheduler, refiner_loss, stage1_loss


@dataclass
class TrainModels:
    """What a task is built from: --init's parts, on the training device."""

    unet: Any
    vae: Any
    null: torch.Tensor
    scheduler_config: dict
    refiner: Any = None
    harmony_vae: Any = None


def check_parts(ck, needs: tuple[str, ...], init: str) -> None:
    """Raises ValueError when the resolved checkpoint lacks a part the task must start from (the
    Harmony-VAE can be built from the VAE; the refiner cannot)."""
    if "refiner" in needs and ck.refiner is None:
        raise ValueError(f"--task refiner: {init} has no refiner/ to start from")


def load_train_models(init: str, device, storage_options: dict | None = None,
                      needs: tuple[str, ...] = ()) -> TrainModels:
    """--init's UNet, VAE (frozen), null text and scheduler config on `device`, plus the parts `needs`
    names: the refiner (an error when --init has none), the Harmony-VAE (--init's own when it has one,
    else built from its VAE, as the reference starts)."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from harmony_ops.checkpoints import load_model, load_null_embedding, load_scheduler_config, resolve_checkpoint

    ck = resolve_checkpoint(init, refiner="auto", storage_options=storage_options)
    check_parts(ck, needs, init)
    unet = load_model(UNet2DConditionModel, ck.unet, "unet").to(device)
    vae = load_model(AutoencoderKL, ck.vae, "vae").to(device).eval().requires_grad_(False)
    null, _ = load_null_embedding(ck.root, unet.config.cross_attention_dim)
    models = TrainModels(unet, vae, null.to(device), load_scheduler_config(ck.root))
    if "harmony_vae" in needs:
        from harmony_ops.condition_vae import ConditionVAE

        models.harmony_vae = (load_model(ConditionVAE, ck.harmony_vae, "harmony-vae") if ck.harmony_vae is not None
                              else ConditionVAE.from_vae(vae)).to(device)
    if "refiner" in needs:
        from harmony_ops.refiner import UNet2DCustom

        models.refiner = load_model(UNet2DCustom, ck.refiner, "refiner").to(device)
    return models


class Objective:
    """Stage 1: the inpainting UNet learns to denoise the real image's latents given the composite
    (VAE frozen), DiffHarmony's foreground-weighted MSE."""

    task = "stage1"
    needs: tuple[str, ...] = ()  # parts of --init beyond UNet and VAE: "refiner", "harmony_vae"
    trains = "unet"  # the TrainModels part that learns; every other part is frozen
    swap = False  # inverse: condition on the real image, target the composite

    def __init__(self, models: TrainModels, plain_mse: bool = False, sampler_steps: int = 5):
        from harmony_ops.sampler import DiffHarmonySampler

        self.m, self.plain_mse, self.sampler_steps = models, plain_mse, sampler_steps
        self.freeze()
        self.sampler = DiffHarmonySampler(models.unet, models.vae, models.scheduler_config, models.null, "euler_a",
                                          harmony_vae=models.harmony_vae)
        self.scheduler = noise_scheduler(models.scheduler_config)

    def freeze(self) -> None:
        """Everything but the trained model is frozen."""
        for part in ("unet", "vae"):
            if part != self.trains:
                getattr(self.m, part).eval().requires_grad_(False)
        self.trained.requires_grad_(True)  # the VAE is loaded frozen; the loop puts it in train mode

    @property
    def trained(self) -> torch.nn.Module:
        return getattr(self.m, self.trains)

    def module(self) -> torch.nn.Module:
        """What the optimiser's DDP wrapper runs forward: the trained model unless the loss needs more."""
        return self.trained

    def pair(self, comp, real):
        """(condition, target) of a row."""
        return (real, comp) if self.swap else (comp, real)

    def loss(self, model, comp, mask, real, gen: torch.Generator, harmonized=None) -> torch.Tensor:
        cond, target = self.pair(comp, real)
        return stage1_loss(model, self.m.vae, self.scheduler, self.m.null, target, cond, mask, gen, self.plain_mse)

    @torch.no_grad()
    def predict(self, comp, mask, real, seeds) -> torch.Tensor:
        """The current model's outputs in [0, 1] for validation (N x 3 x H x W, on the CPU)."""
        cond, _ = self.pair(comp, real)
        return self.sampler(cond, mask, seeds=seeds, num_inference_steps=self.sampler_steps)

    def validation_target(self, comp, real):
        return self.pair(comp, real)[1]

    def extra_state(self) -> dict:
        """What a checkpoint holds beyond weights, EMA and optimiser."""
        return {}

    def load_extra_state(self, state: dict) -> None:
        pass

    def before_export(self) -> None:
        """Settings the exported model records from training (the VAE's scaling factor)."""


class InverseObjective(Objective):
    """DiffHarmony++'s inverse model: stage 1 with real and composite swapped."""

    task = "inverse"
    swap = True


class RefinerObjective(Objective):
    """The stage-2 U-Net on [stage-1 output, mask, composite] -> real (MSE); the stage-1 outputs come
    from the frozen stage 1, online (a fresh noise draw per step) or from the stage-1 cache."""

    task = "refiner"
    needs = ("refiner",)
    trains = "refiner"

    def loss(self, model, comp, mask, real, gen, harmonized=None) -> torch.Tensor:
        if harmonized is None:
            with torch.no_grad():
                seeds = [int(x) for x in torch.randint(0, 2**31 - 1, (len(comp),), generator=gen)]
                harmonized = self.sampler(comp, mask, seeds=seeds,
                                          num_inference_steps=self.sampler_steps).to(comp.device) * 2 - 1
        return refiner_loss(model, harmonized, mask, comp, real, self.trained.config.in_channels)

    @torch.no_grad()
    def predict(self, comp, mask, real, seeds) -> torch.Tensor:
        from harmony_ops.refiner import make_refiner_input

        out = super().predict(comp, mask, real, seeds)
        refiner, device = self.trained, self.trained.device
        x = make_refiner_input(out.to(device) * 2 - 1, mask.to(device), comp.to(device), refiner.config.in_channels)
        return (refiner(x).sample / 2 + 0.5).clamp(0, 1).float().cpu()


class HarmonyVAEObjective(Objective):
    """DiffHarmony++'s Harmony-VAE: L1 between the real image and its reconstruction from a posterior
    sample, decoded with the [composite, mask] condition."""

    task = "harmony-vae"
    needs = ("harmony_vae",)
    trains = "harmony_vae"

    def loss(self, model, comp, mask, real, gen, harmonized=None) -> torch.Tensor:
        return harmony_vae_loss(model, real, comp, mask, gen)


class VAEReconstructionObjective(Objective):
    """The AutoencoderKL itself, for reconstruction, on both images of a row (more views of the same
    photographs); the exported scaling_factor is 1 / std of the trained latents, as LDM set SD's 0.18215,
    so stage 1 sees unit-variance latents."""

    task = "vae"
    trains = "vae"

    def __init__(self, models: TrainModels, plain_mse: bool = False, sampler_steps: int = 5):
        super().__init__(models, plain_mse, sampler_steps)
        self.wrapper = VAEObjective(models.vae)
        # Running sum of the latents' variance x count, and the count.
        self.latent_var = torch.zeros(2, dtype=torch.float64)

    def module(self) -> torch.nn.Module:
        return self.wrapper  # the loss runs encode and decode, not the VAE's forward: DDP wraps this

    def loss(self, model, comp, mask, real, gen, harmonized=None) -> torch.Tensor:
        loss, z = model(torch.cat([real, comp]), gen)
        self.latent_var += torch.tensor([float(z.double().var()) * z.numel(), float(z.numel())], dtype=torch.float64)
        return loss

    @torch.no_grad()
    def predict(self, comp, mask, real, seeds) -> torch.Tensor:
        vae = self.m.vae  # reconstruction of the real images (the posterior's mode)
        return (vae(real.to(device=vae.device), sample_posterior=False).sample / 2 + 0.5).clamp(0, 1).float().cpu()

    def validation_target(self, comp, real):
        return real

    def extra_state(self) -> dict:
        return {"latent_var": self.latent_var}

    def load_extra_state(self, state: dict) -> None:
        if state.get("latent_var") is not None:
            self.latent_var = state["latent_var"].to(torch.float64).cpu()

    def before_export(self) -> None:
        if self.latent_var[1] > 0:
            std = float((self.latent_var[0] / self.latent_var[1]).sqrt())
            self.m.vae.register_to_config(scaling_factor=round(1.0 / max(std, 1e-6), 5))


OBJECTIVES: dict[str, type[Objective]] = {o.task: o for o in (Objective, InverseObjective, RefinerObjective,
                                                                 HarmonyVAEObjective, VAEReconstructionObjective)}
