"""`harmony bench --sections train`: training samples/s of one worker, per task, without Ray.

One optimisation step as the train loop runs it (loss under the loop's autocast, backward, clip, AdamW):
stage 1 with online VAE encoding of real and composite, the refiner with its frozen 5-step stage-1
sampler included. Throughput of N workers is at most N times this; the data side runs on other CPUs.

Needs torch and diffusers only (no Ray, pandas or pydantic): the GPU check (gpu_check.py) runs it too,
building the models once (`TrainModels`) and timing one row (`train_row`) per task, size, batch and
precision. FLOPs per sample (`train_flops_per_sample`): the trained model's forward and backward counted
by torch's FLOP counter on meta tensors, plus the forward of the frozen parts (stage 1: two VAE encodes;
the refiner: the frozen sampler, as the model section counts it); the optimiser step is not counted."""

from __future__ import annotations

import statistics
import time
from functools import lru_cache

import torch

TRAIN_TASKS = ("stage1", "refiner")
PRECISIONS = ("auto", "bf16", "fp16", "fp32")


def effective_precision(device, precision: str) -> str:
    """What `harmony_ops.training.steps.autocast` runs for `precision` on `device` (as the train loop)."""
    if torch.device(device).type != "cuda" or precision == "fp32":
        return "fp32"
    return "fp16" if precision == "fp16" else "bf16"


@lru_cache(maxsize=16)
def _train_flops_cached(arch: str, resolution: int, steps: int) -> tuple[tuple[str, float], ...]:
    from diffusers import UNet2DConditionModel
    from torch.utils.flop_counter import FlopCounterMode

    from harmony_ops.factory import REFINER_CONFIGS, UNET_CONFIGS, VAE_CONFIGS
    from harmony_ops.refiner import UNet2DCustom
    from pipelines.devtools.bench.measure import flops_per_image

    def fwd_bwd(model, *inputs, **kwargs) -> float:
        with FlopCounterMode(display=False) as fc:
            model(*inputs, **kwargs).sample.float().pow(2).mean().backward()
        return float(fc.get_total_flops())

    f = 2 ** (len(VAE_CONFIGS[arch]["block_out_channels"]) - 1)
    with torch.device("meta"):
        unet = UNet2DConditionModel(**UNET_CONFIGS[arch])
        refiner = UNet2DCustom(**REFINER_CONFIGS[arch])
        lat = resolution // f
        unet_fb = fwd_bwd(unet, torch.zeros(1, unet.config.in_channels, lat, lat), torch.tensor(1),
                          encoder_hidden_states=torch.zeros(1, 77, unet.config.cross_attention_dim))
        refiner_fb = fwd_bwd(refiner, torch.zeros(1, refiner.config.in_channels, resolution, resolution))
    fwd = flops_per_image(arch, resolution, resolution, steps)
    return (("stage1", unet_fb + 2 * fwd["vae_encode"]), ("refiner", refiner_fb + fwd["stage1"]),
            ("unet_forward_backward", unet_fb), ("refiner_forward_backward", refiner_fb))


def train_flops_per_sample(arch: str, resolution: int, steps: int) -> dict[str, float]:
    """FLOPs of one training sample per task (see the module docstring), counted once per size."""
    return dict(_train_flops_cached(arch, resolution, steps))


class TrainModels:
    """The models a training step needs, built once on the device in fp32 (the train loop's master
    weights; autocast decides the compute precision) with seeded random weights."""

    def __init__(self, arch: str, device: str, seed: int = 0):
        from harmony_ops.factory import SD_SCHEDULER_CONFIG, build_null_embedding, build_refiner, build_unet, build_vae
        from harmony_ops.loader import pick_device
        from harmony_ops.sampler import DiffHarmonySampler
        from harmony_ops.training.steps import noise_scheduler

        self.arch, self.device = arch, pick_device(device)
        with torch.device(self.device):  # initialised where they run: seconds for SD-1.5 on a GPU
            self.unet = build_unet(arch, seed)
            self.vae = build_vae(arch, seed).requires_grad_(False)
            self.refiner = build_refiner(arch, seed)
        self.null = build_null_embedding(self.unet.config.cross_attention_dim, seed).to(self.device)
        self.sched = noise_scheduler(SD_SCHEDULER_CONFIG)
        self.sampler = DiffHarmonySampler(self.unet, self.vae, SD_SCHEDULER_CONFIG, self.null, "euler_a")


def train_row(models: TrainModels, task: str, resolution: int, batch: int, repeats: int, steps: int,
              precision: str = "auto") -> dict:
    """One task's optimisation step at one size and batch: the first (warm-up) step timed apart, then the
    median of `repeats` steps; samples/s per worker, s/step, and peak device memory on a GPU."""
    from harmony_ops.training.steps import autocast, refiner_loss, stage1_loss

    if task not in TRAIN_TASKS:
        raise ValueError(f"unknown task {task!r}; choose from {', '.join(TRAIN_TASKS)}")
    dev = models.device
    cuda = dev.type == "cuda"
    g = torch.Generator().manual_seed(0)
    comp = (torch.rand(batch, 3, resolution, resolution, generator=g) * 2 - 1).to(dev)
    real = (torch.rand(batch, 3, resolution, resolution, generator=g) * 2 - 1).to(dev)
    mask = torch.zeros(batch, 1, resolution, resolution, device=dev)
    mask[..., resolution // 4 : 3 * resolution // 4, resolution // 4 : 3 * resolution // 4] = 1

    def stage1():
        return stage1_loss(models.unet, models.vae, models.sched, models.null, real, comp, mask, g)

    def refine():
        with torch.no_grad():
            harm = models.sampler(comp, mask, seeds=list(range(batch)), num_inference_steps=steps).to(dev) * 2 - 1
        return refiner_loss(models.refiner, harm, mask, comp, real, models.refiner.config.in_channels)

    # As the train loop: only the task's model learns, the rest is frozen.
    model, loss_fn = (models.unet, stage1) if task == "stage1" else (models.refiner, refine)
    models.unet.train(task == "stage1").requires_grad_(task == "stage1")
    models.refiner.train(task == "refiner").requires_grad_(task == "refiner")
    params = [p for p in model.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=1e-5)

    def step():
        with autocast(dev, precision):
            loss = loss_fn()
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        opt.step()
        if cuda:
            torch.cuda.synchronize(dev)

    if cuda:
        torch.cuda.reset_peak_memory_stats(dev)
    t = time.perf_counter()
    step()  # warm-up: allocator, kernels, AdamW state
    first = time.perf_counter() - t
    times = []
    for _ in range(repeats):
        t = time.perf_counter()
        step()
        times.append(time.perf_counter() - t)
    sec = statistics.median(times)
    row = dict(task=task, arch=models.arch, resolution=resolution, batch=batch, device=str(dev),
               precision=effective_precision(dev, precision), seconds_per_step=sec, samples_per_s_per_worker=batch / sec,
               first_step_s=first, spread=(max(times) - min(times)) / sec)
    if cuda:
        row["peak_memory_gib"] = torch.cuda.max_memory_allocated(dev) / 2**30
    return row


def bench_train(arch: str, resolution: int, batch: int, device: str, repeats: int, steps: int,
                precision: str = "auto", tasks=TRAIN_TASKS) -> list[dict]:
    """Both tasks at one size and batch; `precision` as `harmony train --precision` (auto: bf16 on CUDA,
    fp32 on the CPU)."""
    models = TrainModels(arch, device)
    return [train_row(models, task, resolution, batch, repeats, steps, precision) for task in tasks]


def train_markdown(rows: list[dict]) -> list[str]:
    lines = ["## Training (one worker, one optimisation step)", "",
             "| task | arch | side | batch | device | precision | s/step | samples/s per worker |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['arch']} | {r['resolution']} | {r['batch']} | {r['device']} | "
                     f"{r.get('precision', 'fp32')} | {r['seconds_per_step']:.3f} | {r['samples_per_s_per_worker']:.2f} |")
    return lines + [""]
