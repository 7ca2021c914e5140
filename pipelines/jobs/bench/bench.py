"""`harmony bench`: how fast, how close to the hardware, how it scales.

Sections (each result records its command, the machine and versions):
1. model: stage 1 (VAE encode + N UNet steps + VAE decode) and the refiner on in-memory
   tensors, per resolution and batch size; FLOPs per image counted with torch's FLOP counter
   on meta tensors (no compute), achieved TFLOP/s against the device's peak.
2. pipeline: `harmony harmonize` end to end on the same model, device and images, divided by
   the bare model loop measured in the same run, and against a loop shaped like the reference
   repository's inference script (DataLoader, square resize, refiner at the output size, PNG files).
3. adaptive: images/s and FLOPs for fixed 1024, fixed 512 and auto on a mixed set.
4. scaling: pipeline throughput with 1 and 2 model actors, peak host/device memory per actor.
5. cpu (not in the default list): CPU seconds per image outside the model, per size (1, 4, 12 MP),
   output format and step, on one pinned core, without Ray, torch or a model (pipelines/jobs/bench/cpu.py).
Warm-up runs are excluded; figures are medians of repeated runs.

The model section needs torch and diffusers only (no Ray, pandera, s3fs or pydantic), so it also runs on
a bare GPU machine: `gpu_check.py` beside this runs it over a grid of precisions and optimisations.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np

SECTIONS = ("model", "pipeline", "adaptive", "scaling")
# The adaptive section's photo side. At 1536 px the modes differ most, but on CPU the tiny refiner
# over the full frame (10 of its 12 runs) took 49 of the section's 74 s; 1024 keeps `harmony bench` short.
ADAPTIVE_PHOTO_SIZE = 1024
CPU_SECTION = "cpu"  # runs on request only, without a model, torch or Ray
JOB_SECTION = "job"  # on request: the baseline job against a single-process loop (about 2 minutes)
TRAIN_SECTION = "train"  # on request only (keeps the default run short): training samples/s per worker
ON_REQUEST = (CPU_SECTION, JOB_SECTION, TRAIN_SECTION)
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


def _engine(ckpt: Path, device: str, dtype: str, steps: int):
    from harmony_ops.loader import load_diffharmony

    return load_diffharmony(str(ckpt), device=device, dtype=dtype, steps=steps)


def build_engine(arch: str, device: str = "auto", dtype: str = "auto", steps: int = 5, seed: int = 0):
    """The DiffHarmony engine of `arch` with seeded random weights, built in memory on the device.

    The same models as a checkpoint from `write_checkpoint` loaded by `load_diffharmony` (same classes,
    configs and compute), without writing and reading several GB: the GPU check builds the full-size
    architecture in seconds this way."""
    import torch

    from harmony_ops.engines import DiffHarmonyEngine
    from harmony_ops.factory import SD_SCHEDULER_CONFIG, build_null_embedding, build_refiner, build_unet, build_vae
    from harmony_ops.loader import pick_device, pick_dtype
    from harmony_ops.sampler import DiffHarmonySampler

    dev = pick_device(device)
    dt = pick_dtype(dev, dtype)
    with torch.device(dev):
        unet, vae, refiner = build_unet(arch, seed), build_vae(arch, seed), build_refiner(arch, seed)
    null = build_null_embedding(unet.config.cross_attention_dim, seed)
    sampler = DiffHarmonySampler(unet.to(dtype=dt).eval(), vae.to(dtype=dt).eval(), SD_SCHEDULER_CONFIG, null.to(dev))
    return DiffHarmonyEngine(sampler, refiner.to(dtype=dt).eval(), model_id=f"{arch} (random weights)", steps=steps)


COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")


@dataclass(frozen=True)
class ModelOptions:
    """How the model section runs the models. Defaults are what `harmony harmonize` runs today."""

    sdpa: bool = True  # attention through F.scaled_dot_product_attention (diffusers' AttnProcessor2_0), else AttnProcessor
    channels_last: bool = False  # weights and the refiner's input in channels-last memory format
    compile: bool = False  # torch.compile of the UNet (the VAE and the refiner stay eager)
    compile_mode: str = "default"
    compile_backend: str = "inductor"  # "eager" traces with dynamo only: the CPU dry run's stand-in

    def __post_init__(self):
        if self.compile_mode not in COMPILE_MODES:
            raise ValueError(f"compile mode must be one of {', '.join(COMPILE_MODES)}, got {self.compile_mode!r}")

    def label(self) -> str:
        parts = ["sdpa" if self.sdpa else "no-sdpa"]
        if self.channels_last:
            parts.append("channels-last")
        if self.compile:
            parts.append(f"compile({self.compile_mode if self.compile_backend == 'inductor' else self.compile_backend})")
        return "+".join(parts)


def set_attention(module, sdpa: bool) -> int:
    """Every diffusers Attention in `module` on SDPA (AttnProcessor2_0) or the classic processor; returns
    how many. Works for models without diffusers' set_attn_processor too (the refiner)."""
    from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0

    n = 0
    for m in module.modules():
        if isinstance(m, Attention):
            m.set_processor(AttnProcessor2_0() if sdpa else AttnProcessor())
            n += 1
    return n


class TunedModels:
    """Puts an engine's models into the state `ModelOptions` and a dtype describe, any number of times:
    each `apply` sets every option (nothing is left from the previous configuration). The eager UNet is
    kept, so compiling is undone by putting it back; a compiled UNet is reused while its options hold."""

    def __init__(self, engine):
        self.engine = engine
        self.unet = engine.sampler.unet
        self._compiled = None
        self._compiled_key = None

    def models(self) -> list:
        return [self.unet, self.engine.sampler.vae] + ([self.engine.refiner] if self.engine.refiner is not None else [])

    def apply(self, opts: ModelOptions, dtype=None) -> None:
        import torch

        fmt = torch.channels_last if opts.channels_last else torch.contiguous_format
        for m in self.models():
            if dtype is not None:
                m.to(dtype=dtype)
            m.to(memory_format=fmt)
            set_attention(m, opts.sdpa)
        sampler = self.engine.sampler
        if not opts.compile:
            sampler.unet = self.unet
            return
        key = (str(self.unet.dtype), opts)
        if self._compiled_key != key:
            torch._dynamo.reset()  # a fresh compile: its time is this configuration's, not left over
            kwargs = {"mode": opts.compile_mode} if opts.compile_backend == "inductor" else {}
            self._compiled = torch.compile(self.unet, backend=opts.compile_backend, dynamic=False, **kwargs)
            self._compiled_key = key
        sampler.unet = self._compiled

    def reset(self) -> None:
        self.apply(ModelOptions())


def model_row(engine, arch: str, res: int, bs: int, repeats: int, steps: int, peak: float | None,
              opts: ModelOptions = ModelOptions(), peak_note: str = "", harmony_vae: bool = True) -> dict:
    """Stage 1 and the refiner at one size and batch, with the engine as `TunedModels` left it: img/s,
    s/img, achieved TFLOP/s and utilisation for each; the first (warm-up) call apart, as compile time."""
    import torch

    from harmony_ops.refiner import make_refiner_input

    device = engine.device
    cuda = device.type == "cuda"
    sync = torch.cuda.synchronize if cuda else None
    fl = flops_per_image(arch, res, res, steps)
    g = torch.Generator().manual_seed(0)
    images = torch.rand(bs, 3, res, res, generator=g) * 2 - 1
    masks = (torch.rand(bs, 1, res, res, generator=g) > 0.5).float()
    if cuda:
        torch.cuda.reset_peak_memory_stats(device)
    first, times = timed_runs(lambda: engine.sampler(images, masks, seeds=list(range(bs)), num_inference_steps=steps),
                              repeats, sync=sync)
    t1 = statistics.median(times)
    row = {"resolution": res, "batch_size": bs, "dtype": str(engine.sampler.dtype).removeprefix("torch."),
           "options": opts.label(), "sdpa": opts.sdpa, "channels_last": opts.channels_last, "compile": opts.compile,
           "stage1_s_per_image": t1 / bs, "stage1_images_per_s": bs / t1, "stage1_gflop_per_image": fl["stage1"] / 1e9,
           "stage1_tflops": fl["stage1"] * bs / t1 / 1e12, "stage1_first_call_s": first,
           "stage1_spread": (max(times) - min(times)) / t1}
    # Compiling happens in the first call; the rest of that call is an ordinary (warm-up) run.
    row["compile_s"] = max(0.0, first - t1) if opts.compile else None
    if engine.refiner is not None:
        x = make_refiner_input(images, masks, images, engine.refiner.config.in_channels).to(device, engine.refiner.dtype)
        if opts.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)

        def refine():
            with torch.inference_mode():
                engine.refiner(x)

        _, rtimes = timed_runs(refine, repeats, sync=sync)
        t2 = statistics.median(rtimes)
        row.update(refiner_s_per_image=t2 / bs, refiner_images_per_s=bs / t2, refiner_gflop_per_image=fl["refiner"] / 1e9,
                   refiner_tflops=fl["refiner"] * bs / t2 / 1e12, refiner_spread=(max(rtimes) - min(rtimes)) / t2)
    row.update(harmony_cond_encoder_s_per_image=None, harmony_cond_encoder_gflop_per_image=fl["harmony_cond_encoder"] / 1e9)
    if harmony_vae:
        hvae = _harmony_vae(engine)
        cond = torch.cat([images, masks], 1).to(device, hvae.dtype)

        def cond_encode():
            with torch.inference_mode():
                hvae.conditional_encoder(cond)

        # One timed call after a warm-up: on a CPU at 1024 px it costs about what the VAE encode does.
        _, ctimes = timed_runs(cond_encode, 1, sync=sync)
        row["harmony_cond_encoder_s_per_image"] = ctimes[0] / bs
    if peak:
        row["stage1_utilisation"] = row["stage1_tflops"] / peak
        if "refiner_tflops" in row:
            row["refiner_utilisation"] = row["refiner_tflops"] / peak
    row["peak_tflops"] = peak
    row["peak_note"] = peak_note
    if cuda:
        row["peak_memory_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    return row


def _harmony_vae(engine):
    """A Harmony-VAE built from the engine's VAE (same widths, device, dtype), made once per engine: the
    bench measures what decoding with one would add, whether or not the checkpoint has one."""
    hvae = getattr(engine, "_bench_harmony_vae", None)
    if hvae is None:
        from harmony_ops.condition_vae import ConditionVAE

        vae = engine.sampler.vae
        hvae = ConditionVAE.from_vae(vae).eval().to(vae.device, vae.dtype)
        engine._bench_harmony_vae = hvae
    return hvae


def bench_model(engine, arch, resolutions, batch_sizes, repeats, steps, options: ModelOptions = ModelOptions()) -> list[dict]:
    device, dtype = engine.device, engine.sampler.dtype
    peak, peak_note = peak_tflops(device, dtype)
    tuned = TunedModels(engine)
    tuned.apply(options)
    rows = []
    try:
        for res in resolutions:
            for bs in batch_sizes:
                # The Harmony-VAE's encoder is timed once per size (first batch size): `harmony bench` stays short.
                row = model_row(engine, arch, res, bs, repeats, steps, peak, options, peak_note, harmony_vae=bs == batch_sizes[0])
                rows.append(row)
                print(f"  model {res}px batch {bs} ({options.label()}): stage1 {row['stage1_images_per_s']:.3f} img/s "
                      f"({row['stage1_tflops']:.3f} TFLOP/s), refiner {row.get('refiner_images_per_s', float('nan')):.3f} img/s, "
                      f"Harmony-VAE conditional encoder {_f(row['harmony_cond_encoder_s_per_image'], 4)} s/img",
                      file=sys.stderr)
    finally:
        tuned.reset()  # the other sections run the engine as the product does
    return rows


def make_images(folder: Path, n: int, size: int, fg_ratios=(0.3,), with_real: bool = False) -> Path:
    """n composites of exactly size x size (so every path runs the same inference size) + manifest.

    Without `real` by default: a catalog run has no ground truth, and scoring against it is an audit
    cost (`harmony evaluate`) that the bare loop does not pay either."""
    from pipelines.jobs.demo.scenes import composite_of, sample_photos, write_scenes

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
    from pipelines.config import HarmonizeJobConfig, ModelConfig, PoolConfig, PoolsConfig, ResolutionConfig
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


def run_bench(arch: str = "tiny", resolutions=(512, 1024), batch_sizes=(1, 2), device: str = "auto", images: int = 12,
              out: str = "bench-results", repeats: int = 2, steps: int = 5, dtype: str = "auto",
              sections=SECTIONS, argv: list[str] | None = None, options: ModelOptions = ModelOptions(),
              cpu_megapixels=(1, 4, 12), job_rows: int = 1200, adaptive_size: int = ADAPTIVE_PHOTO_SIZE) -> dict:
    """`options` apply to the model section only: the other sections run the engine as the product does.
    `cpu_megapixels`: the cpu section's image sizes (it runs at least 3 repeats, whatever `repeats`).
    `adaptive_size`: side of the adaptive section's square photos."""
    for name in sections:
        if name in SECTIONS_NOT_YET:
            raise ValueError(f"section {name}: {SECTIONS_NOT_YET[name]}")
        if name not in SECTIONS + ON_REQUEST:
            raise ValueError(f"unknown section {name!r}; choose from {', '.join(SECTIONS + ON_REQUEST)}")
    outdir = Path(out)
    outdir.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="harmony-bench-"))
    command = "harmony bench " + " ".join(shlex.quote(a) for a in (argv or []))
    results: dict[str, Any] = {"command": command.strip(), "date": time.strftime("%Y-%m-%d %H:%M:%S")}
    if any(name in SECTIONS for name in sections):
        _run_model_sections(results, work, outdir, arch, resolutions, batch_sizes, device, images, repeats, steps, dtype,
                            sections, options, adaptive_size)
    else:
        results["machine"] = cpu_machine()
    if CPU_SECTION in sections:
        from pipelines.jobs.bench.cpu import bench_cpu

        print(f"harmony bench: cpu section at {', '.join(map(str, cpu_megapixels))} MP, one core", file=sys.stderr)
        results["cpu"] = bench_cpu(megapixels=cpu_megapixels, repeats=max(repeats, 3), work=work / "cpu",
                                   echo=lambda m: print(m, file=sys.stderr))

    if JOB_SECTION in sections:
        from pipelines.jobs.bench.job import bench_job

        print(f"harmony bench: job section, {job_rows} rows of 256x256", file=sys.stderr)
        results["job"] = bench_job(job_rows, 256, work / "job", echo=lambda m: print(m, file=sys.stderr))
    if TRAIN_SECTION in sections:
        from pipelines.jobs.bench.train import bench_train

        side, batch = min(resolutions), max(batch_sizes)
        print(f"harmony bench: train section, {arch} at {side} px, batch {batch}", file=sys.stderr)
        results["train"] = bench_train(arch, side, batch, device, max(repeats, 2), steps)

    (outdir / "bench.json").write_text(json.dumps(results, indent=2, default=str))
    md = to_markdown(results)
    (outdir / "bench.md").write_text(md)
    print(md)
    return results


def cpu_machine() -> dict[str, Any]:
    """`machine` without torch (the cpu section never imports it)."""
    from pipelines.report.versions import versions

    return {"platform": platform.platform(), "processor": platform.processor() or platform.machine(),
            "cpus": os.cpu_count(), "device": "cpu", "versions": versions()}


def _run_model_sections(results, work, outdir, arch, resolutions, batch_sizes, device, images, repeats, steps, dtype,
                        sections, options, adaptive_size: int) -> None:
    from harmony_ops.factory import write_checkpoint
    from harmony_ops.loader import pick_device

    dev = pick_device(device)
    device_name = str(dev)
    ckpt = write_checkpoint(work / "ckpt", arch=arch, seed=0)
    engine = _engine(ckpt, device_name, dtype, steps)
    results.update({"arch": arch, "steps": steps, "dtype": str(engine.sampler.dtype).removeprefix("torch."),
                    "machine": machine(dev)})
    print(f"harmony bench: {arch} on {device_name} ({results['dtype']}); writing {outdir}", file=sys.stderr)

    if "model" in sections:
        results["model"] = bench_model(engine, arch, resolutions, batch_sizes, repeats, steps, options)

    res, batch = resolutions[0], max(batch_sizes)
    if "pipeline" in sections or "scaling" in sections:
        data = work / "pipeline-data"
        manifest = make_images(data, images, res)
        from pipelines.core.adapter import ensure_ray  # here, not above: the model section runs without Ray

        ensure_ray()
        # Warm Ray's workers (imports) so the timed run measures the job, not process start-up.
        pipeline_seconds(ckpt, make_images(work / "warm", 2, res), work / "warm-out", res, batch, 1, device_name, dtype, steps)
    if "pipeline" in sections:
        bare = bare_loop_seconds(engine, data, images, batch, res)
        ref = reference_loop_seconds(engine, data, images, batch, res, work / "ref-out")
        pipe, summary = pipeline_seconds(ckpt, manifest, work / "pipe-out", res, batch, 1, device_name, dtype, steps)
        one_actor = (pipe, summary)
        # The job's fixed cost (actor start-up and model load, planning, consolidation) is paid once per
        # run: a run of half the images isolates it, and the difference is the streaming throughput.
        half_manifest = make_images(work / "pipeline-half", images // 2, res)
        half, _ = pipeline_seconds(ckpt, half_manifest, work / "pipe-half", res, batch, 1, device_name, dtype, steps)
        marginal = (images - images // 2) / max(pipe - half, 1e-9)
        results["pipeline"] = {
            "images": images, "resolution": res, "batch_size": batch,
            "bare_loop_images_per_s": images / bare, "reference_loop_images_per_s": images / ref,
            "pipeline_images_per_s": images / pipe, "efficiency_vs_bare": bare / pipe, "speedup_vs_reference": ref / pipe,
            "pipeline_streaming_images_per_s": marginal, "streaming_efficiency_vs_bare": marginal * bare / images,
            "pipeline_fixed_seconds": pipe - images / marginal,
            "pipeline_stage_seconds": summary["throughput"]["mean_seconds_per_stage"],
            "pipeline_ok": summary["counts"]["ok"],
        }
        p = results["pipeline"]
        print(f"  pipeline {p['pipeline_images_per_s']:.3f} img/s = {p['efficiency_vs_bare']:.0%} of the bare loop "
              f"({p['bare_loop_images_per_s']:.3f}); streaming {marginal:.3f} img/s = {p['streaming_efficiency_vs_bare']:.0%}; "
              f"reference-shaped loop {p['reference_loop_images_per_s']:.3f}", file=sys.stderr)
    if "adaptive" in sections:
        # One image per foreground bucket and a tiny one.
        mixed = make_images(work / "mixed", 4, adaptive_size, fg_ratios=(0.01, 0.03, 0.1, 0.4)).parent
        results["adaptive"] = bench_adaptive(engine, mixed, 4, arch, steps)
    if "scaling" in sections:
        scaling = []
        for actors in (1, 2):
            if actors == 1 and "pipeline" in sections:
                sec, summary = one_actor  # the pipeline section's run is this row: same rows, same configuration
            else:
                sec, summary = pipeline_seconds(ckpt, manifest, work / f"scale-{actors}", res, batch, actors, device_name, dtype, steps)
            scaling.append({"model_actors": actors, "images_per_s": images / sec,
                            "peak_host_mib_per_actor": summary["throughput"].get("model_peak_host_mib"),
                            "peak_device_mib_per_actor": summary["throughput"].get("model_peak_device_mib")})
            print(f"  scaling {actors} actor(s): {images / sec:.3f} img/s", file=sys.stderr)
        results["scaling"] = scaling


def _f(v, digits=3) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}" if abs(v) < 1000 else f"{v:,.0f}"
    return str(v)


def to_markdown(r: dict) -> str:
    m = r["machine"]
    if "arch" in r:
        lines = [f"### {r['arch']} on {m.get('gpu', m['processor'])} ({m['device']}, {r['dtype']}, {m['cpus']} CPUs)", "",
                 f"Command: `{r['command']}` — {r['date']}, torch {m['versions'].get('torch')}, "
                 f"diffusers {m['versions'].get('diffusers')}, ray {m['versions'].get('ray')}", ""]
    else:
        lines = [f"### CPU work per image on {m['processor']} ({m['cpus']} CPUs)", "",
                 f"Command: `{r['command']}` — {r['date']}, numpy {m['versions'].get('numpy')}, pillow {m['versions'].get('pillow')}", ""]
    if "model" in r:
        peak = r["model"][0].get("peak_tflops") if r["model"] else None
        opts = r["model"][0].get("options", "sdpa") if r["model"] else "sdpa"
        lines += [f"Model throughput ({r['steps']} steps, {opts}; peak {_f(peak)} TFLOP/s: {r['model'][0].get('peak_note', '')})", "",
                  "| resolution | batch | stage 1 img/s | s/img | GFLOP/img | TFLOP/s | utilisation | refiner img/s | refiner GFLOP/img "
                  "| Harmony-VAE cond. encoder s/img | its GFLOP/img |",
                  "|---|---|---|---|---|---|---|---|---|---|---|"]
        for x in r["model"]:
            util = x.get("stage1_utilisation")
            lines.append(f"| {x['resolution']} | {x['batch_size']} | {_f(x['stage1_images_per_s'])} | {_f(x['stage1_s_per_image'])} | "
                         f"{_f(x['stage1_gflop_per_image'], 1)} | {_f(x['stage1_tflops'])} | {'-' if util is None else f'{util:.1%}'} | "
                         f"{_f(x.get('refiner_images_per_s'))} | {_f(x.get('refiner_gflop_per_image'), 1)} | "
                         f"{_f(x.get('harmony_cond_encoder_s_per_image'))} | {_f(x.get('harmony_cond_encoder_gflop_per_image'), 1)} |")
        lines.append("")
    if "pipeline" in r:
        p = r["pipeline"]
        lines += [f"Pipeline efficiency ({p['images']} images at {p['resolution']} px, batch {p['batch_size']})", "",
                  "| bare model loop img/s | `harmony harmonize` img/s (wall) | efficiency (wall) | streaming img/s | "
                  "efficiency (streaming) | fixed cost s | reference-shaped loop img/s | speed-up vs reference (wall) |",
                  "|---|---|---|---|---|---|---|---|",
                  f"| {_f(p['bare_loop_images_per_s'])} | {_f(p['pipeline_images_per_s'])} | {p['efficiency_vs_bare']:.0%} | "
                  f"{_f(p.get('pipeline_streaming_images_per_s'))} | "
                  f"{'-' if p.get('streaming_efficiency_vs_bare') is None else format(p['streaming_efficiency_vs_bare'], '.0%')} | "
                  f"{_f(p.get('pipeline_fixed_seconds'), 1)} | {_f(p['reference_loop_images_per_s'])} | {p['speedup_vs_reference']:.2f}x |", ""]
    if "adaptive" in r:
        size = r["adaptive"][0].get("photo_size", 1536) if r["adaptive"] else "-"
        lines += [f"Adaptive resolution (mixed foreground sizes, {size} px photos)", "",
                  "| mode | img/s | stage-1 TFLOP | compute saved vs 1024 | crops | inference sizes |", "|---|---|---|---|---|---|"]
        for x in r["adaptive"]:
            lines.append(f"| {x['mode']} | {_f(x['images_per_s'])} | {_f(x['stage1_tflop_total'])} | {x['compute_saved_vs_1024']:.0%} | "
                         f"{x['crops']} | {', '.join(x['sizes'])} |")
        lines.append("")
    if "scaling" in r:
        lines += ["Scaling (pipeline, model actors)", "", "| actors | img/s | peak host MiB/actor | peak device MiB/actor |", "|---|---|---|---|"]
        for x in r["scaling"]:
            lines.append(f"| {x['model_actors']} | {_f(x['images_per_s'])} | {_f(x['peak_host_mib_per_actor'], 0)} | "
                         f"{_f(x['peak_device_mib_per_actor'], 0)} |")
        lines.append("")
    if "cpu" in r:
        from pipelines.jobs.bench.cpu import cpu_markdown

        lines += cpu_markdown(r["cpu"])
    if "job" in r:
        from pipelines.jobs.bench.job import job_markdown

        lines += job_markdown(r["job"])
    if "train" in r:
        from pipelines.jobs.bench.train import train_markdown

        lines += train_markdown(r["train"])
    return "\n".join(lines)
