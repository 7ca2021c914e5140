"""Build engines from checkpoint URIs. Device and precision are chosen here, when a model is
loaded (once per worker), never at import time.

torch and diffusers are imported when a model is loaded, not with this module: importing them costs a
fresh Ray worker ~10 s of CPU (diffusers pulls in transformers, scipy and torch._dynamo), which a
baseline-engine actor never needs.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from .baseline import BaselineEngine
from .defaults import DEFAULT_REFINE_MAX_PIXELS, DEFAULT_SCHEDULER, DEFAULT_STEPS

if TYPE_CHECKING:
    import torch

    from .engines import DiffHarmonyEngine

log = logging.getLogger(__name__)


def torch_dtypes() -> dict[str, torch.dtype]:
    import torch

    return {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def pick_device(device: str = "auto") -> torch.device:
    import torch

    if device == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if device.startswith("cuda") and not torch.cuda.is_available():
        raise RuntimeError(f"device {device!r} requested but CUDA is not available")
    dev = torch.device(device)
    if dev.type == "cuda" and dev.index is not None and dev.index >= torch.cuda.device_count():
        raise RuntimeError(f"device {device!r}: this process sees {torch.cuda.device_count()} GPU(s), cuda:0 to "
                           f"cuda:{torch.cuda.device_count() - 1} (a Ray worker sees only the GPUs it was given)")
    return dev


def pick_dtype(device: torch.device, dtype: str = "auto") -> torch.dtype:
    """fp16 on CUDA, fp32 on CPU (half precision on CPU is slow and inaccurate)."""
    import torch

    if dtype == "auto":
        return torch.float16 if device.type == "cuda" else torch.float32
    dtypes = torch_dtypes()
    try:
        return dtypes[dtype]
    except KeyError:
        raise ValueError(f"dtype must be auto or one of {sorted(dtypes)}, got {dtype!r}") from None


def load_diffharmony(
    model: str,
    unet: str | None = None,
    vae: str | None = None,
    refiner: str | None = "auto",
    scheduler: str = DEFAULT_SCHEDULER,
    steps: int = DEFAULT_STEPS,
    device: str = "auto",
    dtype: str = "auto",
    storage_options: dict | None = None,
    allow_pickle: bool = False,
    refine_max_pixels: int = DEFAULT_REFINE_MAX_PIXELS,
    harmony_vae: str | None = None,
    decoder: str = "auto",
) -> DiffHarmonyEngine:
    """decoder: "auto" decodes with the Harmony-VAE (DiffHarmony++) when the checkpoint has
    `harmony_vae/` or `harmony_vae` names one, "vae" with the plain VAE, "harmony-vae" insists."""
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from .checkpoints import load_model, load_null_embedding, load_scheduler_config, resolve_checkpoint
    from .condition_vae import ConditionVAE
    from .engines import DiffHarmonyEngine
    from .refiner import UNet2DCustom
    from .sampler import DiffHarmonySampler

    ckpt = resolve_checkpoint(model, unet, vae, refiner, storage_options, allow_pickle, harmony_vae, decoder)
    dev = pick_device(device)
    dt = pick_dtype(dev, dtype)
    unet_m = load_model(UNet2DConditionModel, ckpt.unet, f"unet ({unet or model})", allow_pickle, dt)
    harmony_m = None
    if ckpt.harmony_vae is not None:
        # It replaces the VAE (its encoder is the base VAE's), so the plain VAE is not loaded.
        harmony_m = load_model(ConditionVAE, ckpt.harmony_vae, f"harmony-vae ({harmony_vae or model})", allow_pickle, dt).eval()
        vae_m = harmony_m
    else:
        vae_m = load_model(AutoencoderKL, ckpt.vae, f"vae ({vae or model})", allow_pickle, dt).eval()
    null, source = load_null_embedding(ckpt.root, unet_m.config.cross_attention_dim, allow_pickle)
    log.info("empty-text conditioning from %s; decoder %s", source, "harmony-vae" if harmony_m is not None else "vae")
    sampler = DiffHarmonySampler(unet_m.eval(), vae_m, load_scheduler_config(ckpt.root), null, scheduler, harmony_vae=harmony_m)
    sampler.to(dev)
    refiner_m = None
    if ckpt.refiner is not None:
        refiner_m = load_model(UNet2DCustom, ckpt.refiner, f"refiner ({refiner})", allow_pickle, dt).eval().to(dev)
    return DiffHarmonyEngine(sampler, refiner_m, model_id=ckpt.model_id, steps=steps, refine_max_pixels=refine_max_pixels,
                             class_sizes=ckpt.class_sizes)


def load_engine(engine: str, **kwargs):
    """`diffharmony` (needs `model=`) or `baseline`."""
    if engine == "baseline":
        return BaselineEngine()
    if engine == "diffharmony":
        if not kwargs.get("model"):
            raise ValueError("the diffharmony engine needs a model checkpoint (--model URI)")
        return load_diffharmony(**kwargs)
    raise ValueError(f"unknown engine {engine!r}; choose diffharmony or baseline")
