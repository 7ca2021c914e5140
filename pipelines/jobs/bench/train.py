"""`harmony bench --sections train`: training samples/s of one worker, per task, without Ray.

One optimisation step as the train loop runs it (loss, backward, clip, AdamW): stage 1 with online
VAE encoding of real and composite, the refiner with its frozen 5-step stage-1 sampler included.
Throughput of N workers is at most N times this; the data side runs on other CPUs."""

from __future__ import annotations

import time

import torch


def bench_train(arch: str, resolution: int, batch: int, device: str, repeats: int, steps: int) -> list[dict]:
    from harmony_ops.factory import SD_SCHEDULER_CONFIG, build_null_embedding, build_refiner, build_unet, build_vae
    from harmony_ops.loader import pick_device
    from harmony_ops.sampler import DiffHarmonySampler
    from harmony_ops.training.steps import noise_scheduler, refiner_loss, stage1_loss

    dev = pick_device(device)
    unet, vae = build_unet(arch).to(dev), build_vae(arch).to(dev).requires_grad_(False)
    null = build_null_embedding(unet.config.cross_attention_dim).to(dev)
    sched = noise_scheduler(SD_SCHEDULER_CONFIG)
    g = torch.Generator().manual_seed(0)
    comp = (torch.rand(batch, 3, resolution, resolution, generator=g) * 2 - 1).to(dev)
    real = (torch.rand(batch, 3, resolution, resolution, generator=g) * 2 - 1).to(dev)
    mask = torch.zeros(batch, 1, resolution, resolution, device=dev)
    mask[..., resolution // 4 : 3 * resolution // 4, resolution // 4 : 3 * resolution // 4] = 1
    refiner = build_refiner(arch).to(dev)
    sampler = DiffHarmonySampler(unet, vae, SD_SCHEDULER_CONFIG, null, "euler_a")

    def stage1():
        return stage1_loss(unet, vae, sched, null, real, comp, mask, g)

    def refine():
        with torch.no_grad():
            harm = sampler(comp, mask, seeds=list(range(batch)), num_inference_steps=steps).to(dev) * 2 - 1
        return refiner_loss(refiner, harm, mask, comp, real, refiner.config.in_channels)

    rows = []
    for task, model, loss_fn in (("stage1", unet, stage1), ("refiner", refiner, refine)):
        params = [p for p in model.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=1e-5)

        def step(loss_fn=loss_fn, opt=opt, params=params):
            loss = loss_fn()
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            if dev.type == "cuda":
                torch.cuda.synchronize()

        step()  # warm-up: allocator, kernels
        times = []
        for _ in range(repeats):
            t = time.perf_counter()
            step()
            times.append(time.perf_counter() - t)
        sec = sorted(times)[len(times) // 2]
        rows.append(dict(task=task, arch=arch, resolution=resolution, batch=batch, device=str(dev),
                         seconds_per_step=sec, samples_per_s_per_worker=batch / sec))
    return rows


def train_markdown(rows: list[dict]) -> list[str]:
    lines = ["## Training (one worker, one optimisation step)", "",
             "| task | arch | side | batch | device | s/step | samples/s per worker |", "|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['arch']} | {r['resolution']} | {r['batch']} | {r['device']} | "
                     f"{r['seconds_per_step']:.3f} | {r['samples_per_s_per_worker']:.2f} |")
    return lines + [""]
