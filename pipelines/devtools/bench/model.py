"""`harmony bench` model section: stage 1 and the refiner on in-memory tensors, per resolution and batch size.

Needs torch and diffusers only (no Ray, pandera, s3fs or pydantic): the GPU check runs it on a bare GPU machine."""

from __future__ import annotations

import statistics
import sys
from dataclasses import dataclass
from pathlib import Path
from pipelines.devtools.bench.measure import _f, flops_per_image, peak_tflops, timed_runs



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
