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
   output format and step, on one pinned core, without Ray, torch or a model (pipelines/devtools/bench/cpu.py).
Warm-up runs are excluded; figures are medians of repeated runs.

The model section needs torch and diffusers only (no Ray, pandera, s3fs or pydantic), so it also runs on
a bare GPU machine: `gpu_check.py` beside this runs it over a grid of precisions and optimisations.
"""

from __future__ import annotations

import json
import os
import platform
import shlex
import sys
import tempfile
import time
from pathlib import Path
from typing import Any
from pipelines.devtools.bench.measure import (
    ADAPTIVE_PHOTO_SIZE, CPU_SECTION, JOB_SECTION, ON_REQUEST, QUALITY_SECTION, SECTIONS, SECTIONS_NOT_YET, TRAIN_SECTION,
    _f, machine,
)
from pipelines.devtools.bench.model import ModelOptions, _engine, bench_model
from pipelines.devtools.bench.pipeline import (
    bare_loop_seconds, bench_adaptive, make_images, pipeline_seconds, reference_loop_seconds,
)



def run_bench(arch: str = "tiny", resolutions=(512, 1024), batch_sizes=(1, 2), device: str = "auto", images: int = 12,
              out: str = "bench-results", repeats: int = 2, steps: int = 5, dtype: str = "auto",
              sections=SECTIONS, argv: list[str] | None = None, options: ModelOptions = ModelOptions(),  # noqa: B008
              cpu_megapixels=(1, 4, 12), job_rows: int = 1200, adaptive_size: int = ADAPTIVE_PHOTO_SIZE,
              quality_model: str | None = None, quality_per_kind: int = 2, record: bool = False) -> dict:
    """`options` apply to the model section only: the other sections run the engine as the product does.
    `cpu_megapixels`: the cpu section's image sizes (it runs at least 3 repeats, whatever `repeats`).
    `adaptive_size`: side of the adaptive section's square photos. `quality_model` (default: the embedded one),
    `quality_per_kind`, `record`: the quality section's (record: store its figures beside the embedded weights)."""
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
        from pipelines.devtools.bench.cpu import bench_cpu

        print(f"harmony bench: cpu section at {', '.join(map(str, cpu_megapixels))} MP, one core", file=sys.stderr)
        results["cpu"] = bench_cpu(megapixels=cpu_megapixels, repeats=max(repeats, 3), work=work / "cpu",
                                   echo=lambda m: print(m, file=sys.stderr))

    if JOB_SECTION in sections:
        from pipelines.devtools.bench.job import bench_job

        print(f"harmony bench: job section, {job_rows} rows of 256x256", file=sys.stderr)
        results["job"] = bench_job(job_rows, 256, work / "job", echo=lambda m: print(m, file=sys.stderr))
    if TRAIN_SECTION in sections:
        from pipelines.devtools.bench.train import bench_train

        side, batch = min(resolutions), max(batch_sizes)
        print(f"harmony bench: train section, {arch} at {side} px, batch {batch}", file=sys.stderr)
        results["train"] = bench_train(arch, side, batch, device, max(repeats, 2), steps)

    if QUALITY_SECTION in sections:
        from pipelines.devtools.bench.quality import bench_quality
        from pipelines.devtools.bench.quality import record as record_quality

        print("harmony bench: quality section", file=sys.stderr)
        results["quality"] = bench_quality(quality_model, quality_per_kind, echo=lambda m: print(m, file=sys.stderr))
        if record:
            if quality_model is not None:
                raise ValueError("--record stores the embedded model's figures: leave --quality-model unset")
            print(f"harmony bench: recorded {record_quality(results['quality'])}", file=sys.stderr)

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


def to_markdown(r: dict) -> str:
    m = r["machine"]
    if "arch" in r:
        lines = [f"### {r['arch']} on {m.get('gpu', m['processor'])} ({m['device']}, {r['dtype']}, {m['cpus']} CPUs)", "",
                 f"Command: `{r['command']}` — {r['date']}, torch {m['versions'].get('torch')}, "
                 f"diffusers {m['versions'].get('diffusers')}, ray {m['versions'].get('ray')}", ""]
    else:
        lines = [f"### {'Quality' if 'quality' in r else 'CPU work per image'} on {m['processor']} ({m['cpus']} CPUs)", "",
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
        from pipelines.devtools.bench.cpu import cpu_markdown

        lines += cpu_markdown(r["cpu"])
    if "job" in r:
        from pipelines.devtools.bench.job import job_markdown

        lines += job_markdown(r["job"])
    if "train" in r:
        from pipelines.devtools.bench.train import train_markdown

        lines += train_markdown(r["train"])
    if "quality" in r:
        from pipelines.devtools.bench.quality import quality_markdown

        lines += quality_markdown(r["quality"])
    return "\n".join(lines)
