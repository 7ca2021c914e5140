"""Seeded, randomly initialised checkpoints in the diffusers layout.

No pretrained weights can be downloaded in CI, so tests build a tiny SD-inpainting-shaped
checkpoint (9-channel UNet, 8x VAE) and benchmarks build the full-size
Stable-Diffusion-1.5-inpainting architecture from its published config: random weights,
same compute as the real model.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Literal

import torch
from diffusers import AutoencoderKL, UNet2DConditionModel
from safetensors.torch import save_file

from .checkpoints import NULL_EMBEDDING_FILE, NULL_EMBEDDING_KEY
from .condition_vae import ConditionVAE
from .refiner import UNet2DCustom

Arch = Literal["tiny", "demo", "sd15-inpaint"]
ARCHS = ("tiny", "demo", "sd15-inpaint")
RefinerInit = Literal["default", "identity"]
REFINER_INITS = ("default", "identity")

# Stable Diffusion 1.x scheduler config (scheduler/scheduler_config.json of SD-1.5-inpainting).
SD_SCHEDULER_CONFIG = {
    "_class_name": "PNDMScheduler",
    "beta_end": 0.012,
    "beta_schedule": "scaled_linear",
    "beta_start": 0.00085,
    "clip_sample": False,
    "num_train_timesteps": 1000,
    "set_alpha_to_one": False,
    "skip_prk_steps": True,
    "steps_offset": 1,
    "trained_betas": None,
}

UNET_CONFIGS = {
    "sd15-inpaint": dict(
        sample_size=64,
        in_channels=9,
        out_channels=4,
        down_block_types=("CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D", "DownBlock2D"),
        up_block_types=("UpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "CrossAttnUpBlock2D"),
        block_out_channels=(320, 640, 1280, 1280),
        layers_per_block=2,
        cross_attention_dim=768,
        attention_head_dim=8,
        norm_num_groups=32,
    ),
    "tiny": dict(
        sample_size=16,
        in_channels=9,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64),
        layers_per_block=1,
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    ),
    # The embedded model's (harmony_ops/weights/demo): SD-shaped but small enough to train from
    # scratch on 2 CPU cores at 64 px (8 x 8 latents), 1.7 M parameters.
    "demo": dict(
        sample_size=8,
        in_channels=9,
        out_channels=4,
        down_block_types=("DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"),
        up_block_types=("CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"),
        block_out_channels=(32, 64, 64),
        layers_per_block=1,
        cross_attention_dim=32,
        attention_head_dim=8,
        norm_num_groups=8,
    ),
}

VAE_CONFIGS = {
    "sd15-inpaint": dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        latent_channels=4,
        norm_num_groups=32,
        sample_size=512,
        scaling_factor=0.18215,
    ),
    # Four blocks, so the same 8x spatial factor as the real VAE.
    "tiny": dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=4,
        sample_size=64,
        scaling_factor=0.18215,
    ),
    # 8x like SD's; its scaling_factor is re-measured by `harmony train --task vae` (1 / latent std).
    "demo": dict(
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        block_out_channels=(16, 32, 64, 64),
        layers_per_block=1,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=64,
        scaling_factor=0.18215,
    ),
}

# The released refiner configs (configs/stage2_configs/base.json), with the 7-channel input.
REFINER_CONFIGS = {
    "sd15-inpaint": dict(
        sample_size=256,
        in_channels=7,
        out_channels=3,
        down_block_types=("DownBlock2D",) * 4,
        up_block_types=("UpBlock2D",) * 4,
        block_out_channels=(128, 256, 512, 512),
        layers_per_block=2,
        downsample_padding=0,
        attention_head_dim=None,
        norm_num_groups=32,
        norm_eps=1e-6,
        add_attention=True,
        input_residual=True,
    ),
    "tiny": dict(
        sample_size=64,
        in_channels=7,
        out_channels=3,
        down_block_types=("DownBlock2D",) * 4,
        up_block_types=("UpBlock2D",) * 4,
        block_out_channels=(8, 16, 16, 16),
        layers_per_block=1,
        downsample_padding=0,
        attention_head_dim=None,
        norm_num_groups=4,
        norm_eps=1e-6,
        add_attention=True,
        input_residual=True,
    ),
    "demo": dict(
        sample_size=64,
        in_channels=7,
        out_channels=3,
        down_block_types=("DownBlock2D",) * 4,
        up_block_types=("UpBlock2D",) * 4,
        block_out_channels=(16, 32, 64, 64),
        layers_per_block=1,
        downsample_padding=0,
        attention_head_dim=None,
        norm_num_groups=8,
        norm_eps=1e-6,
        add_attention=True,
        input_residual=True,
    ),
}


def build_unet(arch: Arch, seed: int = 0) -> UNet2DConditionModel:
    torch.manual_seed(seed)
    return UNet2DConditionModel(**UNET_CONFIGS[arch])


def build_vae(arch: Arch, seed: int = 0) -> AutoencoderKL:
    torch.manual_seed(seed + 1)
    return AutoencoderKL(**VAE_CONFIGS[arch])


def build_harmony_vae(arch: Arch, seed: int = 0) -> ConditionVAE:
    """A Harmony-VAE built from `build_vae(arch, seed)` as the reference's training starts, then its
    zero-initialised convs (which would make it decode exactly like that VAE) given small random
    weights, so a test can tell which of the two decoded."""
    model = ConditionVAE.from_vae(build_vae(arch, seed))
    gen = torch.Generator().manual_seed(seed + 4)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "skip_conv" in name or "add_conv_in" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    return model


def build_refiner(arch: Arch, seed: int = 0, init: RefinerInit = "default") -> UNet2DCustom:
    """The stage-2 refinement U-Net with seeded random weights.

    init="default": every layer at diffusers' default initialisation, which is where the reference's
    refinement training starts (scripts/train/refinement_stage.py builds `UNet2DCustom.from_config`).
    The output then depends on all of the refiner's inputs (harmonized, mask, composite), so a test
    sees what the refiner is fed. init="identity": `conv_out` zeroed, so the refiner returns its
    first three input channels (the harmonized image, through the input residual) unchanged.
    """
    if init not in REFINER_INITS:
        raise ValueError(f"unknown refiner init {init!r}; choose one of {REFINER_INITS}")
    torch.manual_seed(seed + 2)
    model = UNet2DCustom(**REFINER_CONFIGS[arch])
    if init == "identity":
        torch.nn.init.zeros_(model.conv_out.weight)
        torch.nn.init.zeros_(model.conv_out.bias)
    return model


def build_null_embedding(cross_attention_dim: int, seed: int = 0) -> torch.Tensor:
    """A seeded stand-in for the empty-text conditioning (1 x 77 x D), on the CPU."""
    gen = torch.Generator().manual_seed(seed + 3)
    return torch.randn(1, 77, cross_attention_dim, generator=gen) * 0.1


def write_checkpoint(out: str | Path, arch: Arch = "tiny", seed: int = 0, refiner: bool = True,
                     refiner_init: RefinerInit = "default") -> Path:
    """Write a diffusers-layout DiffHarmony checkpoint (plus `refiner/`, see `build_refiner` for its init)."""
    refiner_model = build_refiner(arch, seed, refiner_init) if refiner else None  # a bad init fails before any write
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    unet = build_unet(arch, seed)
    vae = build_vae(arch, seed)
    unet.save_pretrained(out / "unet", safe_serialization=True)
    vae.save_pretrained(out / "vae", safe_serialization=True)
    (out / "scheduler").mkdir(exist_ok=True)
    (out / "scheduler" / "scheduler_config.json").write_text(json.dumps(SD_SCHEDULER_CONFIG, indent=2))
    emb = build_null_embedding(unet.config.cross_attention_dim, seed)
    save_file({NULL_EMBEDDING_KEY: emb.contiguous()}, str(out / NULL_EMBEDDING_FILE))
    model_index = {
        "_class_name": "StableDiffusionInpaintPipeline",
        "_diffusers_version": "0.27.0",
        "scheduler": ["diffusers", "PNDMScheduler"],
        "unet": ["diffusers", "UNet2DConditionModel"],
        "vae": ["diffusers", "AutoencoderKL"],
        "harmony": {"arch": arch, "seed": seed, "random_weights": True},
    }
    if refiner_model is not None:
        model_index["harmony"]["refiner_init"] = refiner_init
    (out / "model_index.json").write_text(json.dumps(model_index, indent=2))
    if refiner_model is not None:
        refiner_model.save_pretrained(out / "refiner", safe_serialization=True)
    return out


# A tiny CLIP tokenizer vocabulary: the two special tokens and single letters, as vocab.json +
# merges.txt, the files the released archive's tokenizer/ holds.
_TINY_VOCAB = {"<|startoftext|>": 0, "<|endoftext|>": 1,
               **{f"{c}{end}": 2 + 2 * i + j for i, c in enumerate("abcdefghijklmnopqrstuvwxyz") for j, end in enumerate(("", "</w>"))}}


def _save_bin(model, folder: Path, weights_name: str) -> None:
    """A diffusers model folder with pickled weights, as the released base/ pipeline has."""
    folder.mkdir(parents=True, exist_ok=True)
    model.save_config(str(folder))
    torch.save(model.state_dict(), folder / weights_name)


def _write_tiny_text_encoder(base: Path, width: int, seed: int) -> bool:
    """text_encoder/ (pytorch_model.bin) + tokenizer/ when transformers is installed; False otherwise."""
    try:
        from transformers import CLIPTextConfig, CLIPTextModel
    except ImportError:
        return False
    tok = base / "tokenizer"
    tok.mkdir(parents=True, exist_ok=True)
    (tok / "vocab.json").write_text(json.dumps(_TINY_VOCAB))
    (tok / "merges.txt").write_text("#version: 0.2\n")
    (tok / "tokenizer_config.json").write_text(json.dumps({
        "tokenizer_class": "CLIPTokenizer", "model_max_length": 77, "bos_token": "<|startoftext|>",
        "eos_token": "<|endoftext|>", "pad_token": "<|endoftext|>", "unk_token": "<|endoftext|>"}))
    torch.manual_seed(seed + 5)
    cfg = CLIPTextConfig(hidden_size=width, intermediate_size=2 * width, num_hidden_layers=1, num_attention_heads=4,
                         vocab_size=len(_TINY_VOCAB), max_position_embeddings=77, bos_token_id=0, eos_token_id=1, pad_token_id=1)
    enc = CLIPTextModel(cfg).eval()
    (base / "text_encoder").mkdir(exist_ok=True)
    cfg.save_pretrained(str(base / "text_encoder"))
    torch.save(enc.state_dict(), base / "text_encoder" / "pytorch_model.bin")
    return True


def write_archive(out: str | Path, seed: int = 0) -> Path:
    """A tiny archive in the layout the DiffHarmony authors released (see `harmony convert-weights`):
    base/ (an SD-inpainting pipeline with .bin weights, a tiny CLIP text encoder when transformers is
    installed, and the safety checker and feature extractor the converter drops), weights-1/ (the
    fine-tuned stage-1 UNet), refinement/, condition_vae/ (its config with the keys newer diffusers
    adds) and inverse/weights-1/ (the inverse model's UNet). Random, seeded weights."""
    out = Path(out)
    base = out / "base"
    unet_base = build_unet("tiny", seed)
    vae = build_vae("tiny", seed)
    _save_bin(unet_base, base / "unet", "diffusion_pytorch_model.bin")
    _save_bin(vae, base / "vae", "diffusion_pytorch_model.bin")
    (base / "scheduler").mkdir(parents=True, exist_ok=True)
    (base / "scheduler" / "scheduler_config.json").write_text(json.dumps(SD_SCHEDULER_CONFIG, indent=2))
    has_text = _write_tiny_text_encoder(base, unet_base.config.cross_attention_dim, seed)
    (base / "safety_checker").mkdir(exist_ok=True)
    (base / "safety_checker" / "config.json").write_text(json.dumps({"_class_name": "StableDiffusionSafetyChecker"}))
    torch.save({"vision_model.dummy": torch.zeros(2)}, base / "safety_checker" / "pytorch_model.bin")
    (base / "feature_extractor").mkdir(exist_ok=True)
    (base / "feature_extractor" / "preprocessor_config.json").write_text(json.dumps({"crop_size": 224}))
    index = {"_class_name": "StableDiffusionInpaintPipeline", "_diffusers_version": "0.21.0",
             "feature_extractor": ["transformers", "CLIPImageProcessor"],
             "safety_checker": ["stable_diffusion", "StableDiffusionSafetyChecker"],
             "scheduler": ["diffusers", "PNDMScheduler"], "unet": ["diffusers", "UNet2DConditionModel"],
             "vae": ["diffusers", "AutoencoderKL"], "requires_safety_checker": True}
    if has_text:
        index.update(text_encoder=["transformers", "CLIPTextModel"], tokenizer=["transformers", "CLIPTokenizer"])
    (base / "model_index.json").write_text(json.dumps(index, indent=2))
    build_unet("tiny", seed + 10).save_pretrained(out / "weights-1", safe_serialization=True)
    build_refiner("tiny", seed).save_pretrained(out / "refinement", safe_serialization=True)
    build_harmony_vae("tiny", seed).save_pretrained(out / "condition_vae", safe_serialization=True)
    cfg_path = out / "condition_vae" / "config.json"
    cfg = json.loads(cfg_path.read_text())
    cfg.update(latents_mean=None, latents_std=None, shift_factor=None, use_quant_conv=True, use_post_quant_conv=True,
               mid_block_add_attention=True, _name_or_path="checkpoints/condition_vae")
    cfg_path.write_text(json.dumps(cfg, indent=2))
    build_unet("tiny", seed + 20).save_pretrained(out / "inverse" / "weights-1", safe_serialization=True)
    return out
