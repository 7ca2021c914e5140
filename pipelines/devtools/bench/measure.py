"""Timing, the machine, FLOPs and peak TFLOP/s: what every `harmony bench` section measures with (torch only)."""

from __future__ import annotations

import os
import platform
import statistics
import time
from functools import lru_cache
from typing import Any



SECTIONS = ("model", "pipeline", "adaptive", "scaling")
# The adaptive section's photo side. At 1536 px the modes differ most, but on CPU the tiny refiner
# over the full frame (10 of its 12 runs) took 49 of the section's 74 s; 1024 keeps `harmony bench` short.
ADAPTIVE_PHOTO_SIZE = 1024
CPU_SECTION = "cpu"  # runs on request only, without a model, torch or Ray
JOB_SECTION = "job"  # on request: the baseline job against a single-process loop (about 2 minutes)
TRAIN_SECTION = "train"  # on request only (keeps the default run short): training samples/s per worker
QUALITY_SECTION = "quality"  # on request: the embedded model on held-out composites unlike its training data
ON_REQUEST = (CPU_SECTION, JOB_SECTION, TRAIN_SECTION, QUALITY_SECTION)
# Sections planned but not written yet: asking for one is an error that says so.
SECTIONS_NOT_YET: dict[str, str] = {}

# Dense fp16/bf16 tensor-core peaks from the vendors' datasheets (TFLOP/s, no sparsity).
GPU_PEAK_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0, "A10G": 125.0, "L4": 121.0, "T4": 65.0}


def _timed(fn, sync=None) -> float:
    """Seconds of one call; the timed region starts and ends with `sync` (device work is asynchronous)."""
    if sync:
        sync()
    t = time.perf_counter()
    fn()
    if sync:
        sync()
    return time.perf_counter() - t


def median_time(fn, repeats: int, warmup: int = 1, sync=None) -> float:
    for _ in range(warmup):
        fn()
    return statistics.median(_timed(fn, sync) for _ in range(repeats))


def timed_runs(fn, repeats: int, sync=None) -> tuple[float, list[float]]:
    """The first call timed on its own (warm-up: kernel selection, and compilation under torch.compile),
    then `repeats` timed calls."""
    first = _timed(fn, sync)
    return first, [_timed(fn, sync) for _ in range(repeats)]


def machine(device) -> dict[str, Any]:
    import torch

    from pipelines.report.versions import versions

    info = {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "torch_threads": torch.get_num_threads(), "device": str(device),
            "versions": versions()}
    if device.type == "cuda":
        props = torch.cuda.get_device_properties(device)
        info["gpu"] = torch.cuda.get_device_name(device)
        info["gpu_memory_gib"] = round(props.total_memory / 2**30, 1)
        info["gpu_multiprocessors"] = props.multi_processor_count
        info["gpu_capability"] = f"{props.major}.{props.minor}"
        info["cuda"] = torch.version.cuda
    return info


def peak_tflops(device, dtype) -> tuple[float | None, str]:
    """The device's peak for this precision: datasheet for known GPUs, a measured large GEMM on CPU."""
    import torch

    if device.type == "cuda":
        name = torch.cuda.get_device_name(device)
        for key, value in GPU_PEAK_TFLOPS.items():
            if key in name and dtype in (torch.float16, torch.bfloat16):
                return value, f"datasheet dense fp16/bf16 peak of {key}"
        return None, f"no datasheet peak known for {name}"
    n = 1024
    return matmul_tflops(device, dtype, n), f"measured {n}x{n} {str(dtype).removeprefix('torch.')} matmul on this CPU"


def matmul_tflops(device, dtype, n: int, repeats: int = 5) -> float:
    """TFLOP/s of an n x n x n matrix product on random data (never zeros: they run faster)."""
    import torch

    a, b = (torch.randn(n, n, device=device).to(dtype) for _ in range(2))
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    sec = median_time(lambda: a @ b, repeats=repeats, warmup=2 if sync else 1, sync=sync)
    return 2 * n**3 / sec / 1e12


@lru_cache(maxsize=32)
def _count_flops_cached(arch: str, width: int, height: int, steps: int) -> tuple[tuple[str, float], ...]:
    return tuple(count_flops(arch, width, height, steps).items())


def flops_per_image(arch: str, width: int, height: int, steps: int) -> dict[str, float]:
    """`count_flops`, counted once per size in a process (a benchmark grid asks for each size many times)."""
    return dict(_count_flops_cached(arch, width, height, steps))


def count_flops(arch: str, width: int, height: int, steps: int) -> dict[str, float]:
    """FLOPs per image of each part, on meta tensors (instant, no weights needed).

    The model's FLOPs, whatever kernels run them: the same count for SDPA and classic attention, for
    eager and compiled code, so achieved TFLOP/s compares the configurations directly."""
    import torch
    from diffusers import AutoencoderKL, UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    from harmony_ops.condition_vae import ConditionVAE
    from harmony_ops.factory import REFINER_CONFIGS, UNET_CONFIGS, VAE_CONFIGS
    from harmony_ops.refiner import UNet2DCustom

    def flops(fn) -> float:
        with FlopCounterMode(display=False) as fc:
            fn()
        return float(fc.get_total_flops())

    with torch.device("meta"), torch.no_grad():
        unet = UNet2DConditionModel(**UNET_CONFIGS[arch])
        vae = AutoencoderKL(**VAE_CONFIGS[arch])
        refiner = UNet2DCustom(**REFINER_CONFIGS[arch])
        harmony_vae = ConditionVAE(**VAE_CONFIGS[arch], additional_in_channels=1)
        f = 2 ** (len(vae.config.block_out_channels) - 1)
        lat = torch.zeros(1, 4, height // f, width // f)
        text = torch.zeros(1, 77, unet.config.cross_attention_dim)
        out = {
            "vae_encode": flops(lambda: vae.encode(torch.zeros(1, 3, height, width))),
            "unet_step": flops(lambda: unet(torch.zeros(1, 9, height // f, width // f), torch.tensor(1), encoder_hidden_states=text)),
            "vae_decode": flops(lambda: vae.decode(lat)),
            "refiner": flops(lambda: refiner(torch.zeros(1, refiner.config.in_channels, height, width))),
            # what the Harmony-VAE (DiffHarmony++) adds to a decode: its conditional encoder over composite + mask
            "harmony_cond_encoder": flops(lambda: harmony_vae.conditional_encoder(torch.zeros(1, 4, height, width))),
        }
    out["stage1"] = out["vae_encode"] + steps * out["unet_step"] + out["vae_decode"]
    return out


def _f(v, digits=3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)
