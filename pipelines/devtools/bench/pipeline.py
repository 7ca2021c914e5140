"""`harmony bench` pipeline, adaptive and scaling sections: the harmonize job on the model of the model
section, against the bare model loop and a loop shaped like the reference's inference script."""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

import numpy as np
from pipelines.devtools.bench.measure import count_flops, median_time


def make_images(folder: Path, n: int, size: int, fg_ratios=(0.3,), with_real: bool = False) -> Path:
    """n composites of exactly size x size (so every path runs the same inference size) + manifest.

    Without `real` by default: a catalog run has no ground truth, and scoring against it is an audit
    cost (`harmony evaluate`) that the bare loop does not pay either."""
    from pipelines.devtools.demo.scenes import composite_of, sample_photos, write_scenes

    rng = np.random.default_rng(0)
    photos = list(sample_photos(size))

    def scenes():
        for k in range(n):
            name, real = photos[k % len(photos)]
            comp, mask = composite_of(real, rng, fg_ratios[k % len(fg_ratios)])
            yield f"img{k:03d}", name, comp, mask, real

    return write_scenes(folder, scenes(), with_real=with_real)


def bare_loop_seconds(engine, folder: Path, n: int, batch: int, res: int) -> float:
    """The model alone on preloaded tensors: the upper bound any pipeline can reach."""
    import torch

    from harmony_ops.inputs import load_sample
    from harmony_ops.regions import prepare
    from harmony_ops.resolution import ResolutionPolicy

    policy = ResolutionPolicy(mode="512", class_sizes=(res, 2 * res))
    items = []
    for k in range(n):
        s = load_sample((folder / "composite_images" / f"img{k:03d}.png").read_bytes(), (folder / "masks" / f"img{k:03d}.png").read_bytes())
        items.append(prepare(s.composite, s.mask, policy))
    sync = torch.cuda.synchronize if engine.device.type == "cuda" else (lambda: None)
    engine.run(items[:batch], list(range(batch)))  # warm-up
    sync()
    t = time.perf_counter()
    for i in range(0, n, batch):
        engine.run(items[i : i + batch], list(range(i, i + batch)))
    sync()
    return time.perf_counter() - t


def reference_loop_seconds(engine, folder: Path, n: int, batch: int, res: int, out: Path) -> float:
    """Shaped like the reference inference script: DataLoader, square resize, stage 1 at `res`, the refiner
    at the output resolution on the squashed image, PNG files. The output resolution is `res` (the script's
    --output_resolution set to the images' size), so both loops produce the same pixels' worth of work."""
    import torch
    import torch.nn.functional as F
    from PIL import Image

    from harmony_ops.refiner import make_refiner_input

    class Files(torch.utils.data.Dataset):
        def __len__(self):
            return n

        def __getitem__(self, k):
            comp = Image.open(folder / "composite_images" / f"img{k:03d}.png").convert("RGB").resize((res, res), Image.BILINEAR)
            mask = Image.open(folder / "masks" / f"img{k:03d}.png").convert("1").resize((res, res))
            c = torch.from_numpy(np.asarray(comp, dtype=np.float32)).permute(2, 0, 1) / 127.5 - 1
            m = (torch.from_numpy(np.asarray(mask, dtype=np.float32))[None] >= 0.5).float()
            return c, m, k

    loader = torch.utils.data.DataLoader(Files(), batch_size=batch, shuffle=False, num_workers=0)
    out.mkdir(parents=True, exist_ok=True)

    def run():
        for comp, mask, ks in loader:
            harm = engine.sampler(comp, mask, seeds=[int(k) for k in ks], num_inference_steps=engine.steps)
            if engine.refiner is not None:
                small = lambda x: F.interpolate(x, size=(res, res), mode="bilinear", antialias=True)  # noqa: E731
                x = make_refiner_input(small(harm * 2 - 1), (small(mask) >= 0.5).float(), small(comp),
                                       engine.refiner.config.in_channels)
                with torch.no_grad():
                    harm = (engine.refiner(x.to(engine.device, engine.refiner.dtype)).sample.float().cpu().clamp(-1, 1) + 1) / 2
            for img, k in zip(harm, ks):
                arr = (img.clamp(0, 1) * 255).round().byte().permute(1, 2, 0).numpy()
                Image.fromarray(arr).save(out / f"img{int(k):03d}.png")

    return median_time(run, repeats=1, warmup=0)


def pipeline_seconds(ckpt: Path, manifest: Path, out: Path, res: int, batch: int, actors: int, device: str,
                     dtype: str, steps: int) -> tuple[float, dict]:
    """Wall time of `harmony harmonize` (warm Ray workers, model load included) and its summary."""
    from pipelines.config import ModelConfig, PoolConfig, PoolsConfig, ResolutionConfig
    from pipelines.jobs.harmonize.config import HarmonizeJobConfig
    from pipelines.jobs.harmonize.job import run_harmonize

    cpus = os.cpu_count() or 2
    gpu = device.startswith("cuda")
    # On CPU the model actors share all but half a CPU, which the decode/encode tasks keep.
    model_cpus = 1.0 if gpu else max(0.25, (cpus - 0.5) / actors)
    cfg = HarmonizeJobConfig(
        manifest=str(manifest), output=str(out), resume=False, block_rows=batch,
        model=ModelConfig(model=str(ckpt), device=device, dtype=dtype, steps=steps),
        resolution=ResolutionConfig(mode="512", class_sizes=(res, 2 * res)),
        pools=PoolsConfig(
            decode=PoolConfig(num_cpus=0.25, num_gpus=0, batch_size=batch, max_workers=max(1, cpus // 2)),
            model=PoolConfig(num_cpus=model_cpus, num_gpus=1.0 / actors if gpu else 0, batch_size=batch,
                             min_workers=actors, max_workers=actors),
            finish=PoolConfig(num_cpus=0.25, num_gpus=0, batch_size=batch, max_workers=max(1, cpus // 2)),
        ),
    )
    t = time.perf_counter()
    result = run_harmonize(cfg, echo=lambda *a, **k: None)
    return time.perf_counter() - t, result.summary


def bench_adaptive(engine, folder: Path, n: int, arch: str, steps: int) -> list[dict]:
    """Fixed 1024, fixed 512 and auto on a mixed set of foreground sizes (large photos)."""
    import torch

    from harmony_ops.inputs import load_sample
    from harmony_ops.regions import prepare
    from harmony_ops.resolution import ResolutionPolicy

    samples = [load_sample((folder / "composite_images" / f"img{k:03d}.png").read_bytes(), (folder / "masks" / f"img{k:03d}.png").read_bytes())
               for k in range(n)]
    sync = torch.cuda.synchronize if engine.device.type == "cuda" else (lambda: None)
    rows = []
    flop_cache: dict[tuple[int, int], float] = {}
    plans = {mode: [prepare(s.composite, s.mask, ResolutionPolicy(mode=mode)) for s in samples] for mode in ("1024", "512", "auto")}
    # One warm-up for all modes, on the smallest region (a full 1536 px one costs ~10 s on this CPU and warms nothing more).
    engine.run([min((it for its in plans.values() for it in its), key=lambda it: it.plan.width * it.plan.height)], [0])
    sync()
    for mode, items in plans.items():
        total_flops = 0.0
        for it in items:
            key = (it.plan.width, it.plan.height)
            if key not in flop_cache:
                flop_cache[key] = count_flops(arch, *key, steps)["stage1"]
            total_flops += flop_cache[key]
        t = time.perf_counter()
        for k, it in enumerate(items):
            engine.run([it], [k])
        sync()
        sec = time.perf_counter() - t
        rows.append({"mode": mode, "images": n, "photo_size": samples[0].composite.shape[0], "images_per_s": n / sec, "stage1_tflop_total": total_flops / 1e12,
                     "sizes": sorted({it.plan.bucket for it in items}), "crops": sum(it.plan.crop is not None for it in items)})
        print(f"  adaptive {mode}: {n / sec:.3f} img/s, {total_flops / 1e12:.3f} TFLOP", file=sys.stderr)
    full = rows[0]["stage1_tflop_total"]
    for r in rows:
        r["compute_saved_vs_1024"] = 1 - r["stage1_tflop_total"] / full
    return rows
