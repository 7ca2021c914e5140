"""The `harmony` command line. Each subcommand parses flags into its typed config and runs a job."""

from __future__ import annotations

import argparse
import difflib
import logging
import sys
from typing import Any

from pipelines.errors import ConfigError


def _model_flags(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group("model")
    g.add_argument("--engine", choices=["diffharmony", "baseline"], help="default: diffharmony (with --model, else the embedded demo model)")
    g.add_argument("--model", help="DiffHarmony checkpoint (diffusers layout), local path or URI (default: the embedded demo model)")
    g.add_argument("--unet", help="override the UNet (model or pipeline folder)")
    g.add_argument("--vae", help="override the VAE (e.g. sd-vae-ft-mse)")
    g.add_argument("--harmony-vae", help="Harmony-VAE (DiffHarmony++ condition_vae) URI (default: the model's harmony_vae/ folder)")
    g.add_argument("--decoder", choices=["auto", "vae", "harmony-vae"], help="auto (default): the Harmony-VAE when there is one")
    g.add_argument("--refiner", help="refinement U-Net URI, 'none', or 'auto' (default: the model's refiner/ folder)")
    g.add_argument("--scheduler", help="euler_a (default), euler, ddim, dpmpp_2m")
    g.add_argument("--steps", type=int, help="denoising steps (default 5)")
    g.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    g.add_argument("--dtype", choices=["auto", "fp32", "fp16", "bf16"])
    g.add_argument("--allow-pickle", action="store_true", default=None, help="allow pickle weight files (unsafe)")
    g.add_argument("--resolution", help="auto (default), 512 or 1024")
    g.add_argument("--feather", type=int, help="feather the paste-back inside the mask edge (px)")
    g.add_argument("--storage-option", action="append", metavar="KEY=VALUE", help="fsspec option, e.g. endpoint_url=http://host:9000")


def _allow_uri_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--allow-uri", action="append", metavar="PREFIX",
                   help="let manifest rows read under PREFIX besides the manifest's own folder or bucket "
                   "(repeatable; HTTP(S) sources and checkpoints only this way)")


def _model_overrides(a: argparse.Namespace) -> dict[str, Any]:
    from pipelines.io.storage import parse_storage_options

    return {
        "model": {
            "engine": a.engine,
            "model": a.model,
            "unet": a.unet,
            "vae": a.vae,
            "refiner": a.refiner,
            "harmony_vae": a.harmony_vae,
            "decoder": a.decoder,
            "scheduler": a.scheduler,
            "steps": a.steps,
            "device": a.device,
            "dtype": a.dtype,
            "allow_pickle": a.allow_pickle,
        },
        "resolution": {"mode": a.resolution, "feather": a.feather},
        "storage_options": parse_storage_options(a.storage_option) or None,
    }


def cmd_image(a: argparse.Namespace) -> int:
    from pipelines.config import build
    from pipelines.jobs.image.config import ImageJobConfig
    from pipelines.jobs.image.job import run_image

    flags = _model_overrides(a)
    flags.update(composite=a.composite, mask=a.mask, output=a.output, seed=a.seed)
    cfg = build(ImageJobConfig, a.config, flags)
    from harmony_ops.defaults import model_label

    print(f"harmony image: {model_label(cfg.model.engine, cfg.model.model)}, resolution {cfg.resolution.mode}", file=sys.stderr)
    r = run_image(cfg)
    crop = f" crop {r.plan.crop}" if r.plan.crop else ""
    print(f"wrote {r.output} ({r.width}x{r.height}); inference {r.plan.width}x{r.plan.height}{crop}")
    print("seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in r.seconds.items()))
    print("metrics: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in r.metrics.items()))
    if r.notes:
        print("notes: " + ", ".join(r.notes))
    return 0


def _harmonize_flags(a: argparse.Namespace) -> dict[str, Any]:
    flags = _model_overrides(a)
    model_pool: dict[str, Any] = {"batch_size": a.batch_size, "num_gpus": a.gpus_per_actor}
    if a.actors:
        lo, _, hi = a.actors.partition(",")
        model_pool.update(min_workers=int(lo), max_workers=int(hi or lo))
    flags.update(
        manifest=a.manifest,
        output=a.output,
        seed=a.seed,
        image_format=a.image_format,
        limit=a.limit,
        resume=False if a.no_resume else None,
        max_failed_fraction=a.max_failed_fraction,
        ray_address=a.ray_address,
        force=a.force or None,
        pools={"model": model_pool},
        allow_uri=a.allow_uri,
    )
    return flags


def cmd_harmonize(a: argparse.Namespace) -> int:
    from pipelines.config import build
    from pipelines.jobs.harmonize.config import HarmonizeJobConfig
    from pipelines.jobs.harmonize.job import run_harmonize

    cfg = build(HarmonizeJobConfig, a.config, _harmonize_flags(a))
    return run_harmonize(cfg, echo=a.console).exit_code


def cmd_evaluate(a: argparse.Namespace) -> int:
    from pipelines.config import build
    from pipelines.jobs.evaluate.config import EvaluateJobConfig
    from pipelines.jobs.evaluate.job import run_evaluate
    from pipelines.io.storage import parse_storage_options

    flags = dict(
        manifest=a.manifest,
        predictions=a.predictions,
        output=a.output,
        compare=a.compare,
        use_gt_bg=True if a.use_gt_bg else None,
        report=False if a.no_report else None,
        limit=a.limit,
        ray_address=a.ray_address,
        force=a.force or None,
        storage_options=parse_storage_options(a.storage_option) or None,
        allow_uri=a.allow_uri,
    )
    cfg = build(EvaluateJobConfig, a.config, flags)
    return run_evaluate(cfg, echo=a.console).exit_code


def cmd_synthesize(a: argparse.Namespace) -> int:
    from pipelines.config import build
    from pipelines.jobs.synthesize.config import SynthesizeJobConfig
    from pipelines.io.storage import parse_storage_options
    from pipelines.jobs.synthesize.job import run_synthesize

    flags = dict(
        manifest=a.manifest,
        output=a.output,
        mask_source=a.mask_source,
        fg_ratio=a.fg_ratio,
        per_image=a.per_image,
        kinds=a.kinds,
        strength=a.strength,
        fmse_range=a.fmse_range,
        max_draws=a.max_draws,
        method=a.method,
        candidates=a.candidates,
        model={"model": a.model, "harmony_vae": a.harmony_vae, "decoder": a.decoder, "scheduler": a.scheduler,
               "steps": a.steps, "device": a.device, "dtype": a.dtype},
        model_pool={"batch_size": a.batch_size, "num_gpus": a.gpus_per_actor},
        seed=a.seed,
        limit=a.limit,
        ray_address=a.ray_address,
        force=a.force or None,
        storage_options=parse_storage_options(a.storage_option) or None,
        allow_uri=a.allow_uri,
    )
    cfg = build(SynthesizeJobConfig, a.config, flags)
    return run_synthesize(cfg, echo=a.console).exit_code


def cmd_report(a: argparse.Namespace) -> int:
    from pipelines.report.html import write_report
    from pipelines.io.storage import parse_storage_options

    print(f"wrote {write_report(a.prefix, parse_storage_options(a.storage_option))}")
    return 0


def cmd_validate(a: argparse.Namespace) -> int:
    from pipelines.io.storage import parse_storage_options
    from pipelines.jobs.validate.job import run_validate

    report = run_validate(a.manifest, parse_storage_options(a.storage_option), check_objects=not a.no_check_objects,
                          allow_uri=a.allow_uri or ())
    print(report.text())
    return 0 if report.ok else 1


def cmd_demo(a: argparse.Namespace) -> int:
    from pipelines.devtools.demo.demo import run_demo

    return run_demo(output=a.output, model=a.model, s3=a.s3, images=a.images, engine=a.engine, echo=a.console)


def cmd_import_iharmony4(a: argparse.Namespace) -> int:
    from pipelines.io.iharmony4 import import_iharmony4
    from pipelines.io.storage import parse_storage_options

    n = import_iharmony4(a.root, a.split, a.output, parse_storage_options(a.storage_option))
    print(f"wrote {n} rows to {a.output}")
    from pipelines.io.access import AccessPolicy
    from pipelines.io.manifest import manifest_dir, resolve_uri
    from pipelines.io.storage import join

    if not AccessPolicy(a.output).allows(resolve_uri(manifest_dir(a.output), join(a.root, "x"))):
        print(f"its rows read under {a.root}, outside the manifest's folder: pass --allow-uri {a.root} to the jobs")
    return 0


def cmd_bench(a: argparse.Namespace) -> int:
    from pipelines.devtools.bench.model import ModelOptions
    from pipelines.devtools.bench.run import run_bench

    ints = lambda v: tuple(int(x) for x in v.split(","))  # noqa: E731
    options = ModelOptions(sdpa=a.sdpa, channels_last=a.channels_last, compile=a.compile is not None,
                           compile_mode=a.compile or "default")
    run_bench(arch=a.arch, resolutions=ints(a.resolution), batch_sizes=ints(a.batch_size), device=a.device,
              images=a.images, out=a.out, repeats=a.repeats, steps=a.steps, dtype=a.dtype,
              sections=tuple(a.sections.split(",")), argv=sys.argv[2:], options=options,
              cpu_megapixels=tuple(float(x) if "." in x else int(x) for x in a.cpu_megapixels.split(",")),
              job_rows=a.job_rows, **({"adaptive_size": a.adaptive_photo_size} if a.adaptive_photo_size else {}))
    return 0


def _train_flags(a: argparse.Namespace) -> dict:
    from pipelines.io.storage import parse_storage_options

    names = ("task", "data", "init", "output", "workers", "gpus_per_worker", "cpus_per_worker", "max_steps", "batch_size",
             "lr", "warmup_steps", "resolution", "checkpoint_every", "validate_every", "log_every", "ema", "precision",
             "seed", "plain_mse", "limit", "ray_address", "stage1_cache", "max_failures", "resource_wait_seconds")
    flags = {k: getattr(a, k) for k in names}
    flags.update(validate=a.validate, force=a.force or None,
                 storage_options=parse_storage_options(a.storage_option) or None, allow_uri=a.allow_uri)
    return flags


def cmd_train(a: argparse.Namespace) -> int:
    from pipelines.config import build
    from pipelines.jobs.train.config import TrainJobConfig
    from pipelines.jobs.train.driver import run_train

    cfg = build(TrainJobConfig, a.config, _train_flags(a))
    return run_train(cfg, echo=a.console).exit_code


def cmd_recipe(a: argparse.Namespace) -> int:
    from pipelines.devtools.recipe.runner import parse_caps, run_recipe

    run_recipe(a.recipe, a.work, restart=a.restart, only=a.only, until=a.until, caps=parse_caps(a.cap))
    return 0


def cmd_make_checkpoint(a: argparse.Namespace) -> int:
    from harmony_ops.factory import write_archive, write_checkpoint

    if a.archive:
        if not a.tiny and a.arch != "tiny":
            raise ValueError("--archive writes the tiny architecture only")
        out = write_archive(a.dir, seed=a.seed)
        text = "with" if (out / "base" / "text_encoder").is_dir() else "without (transformers is not installed)"
        print(f"wrote a tiny archive in the released DiffHarmony layout (seed {a.seed}, {text} a text encoder) to {out}")
        return 0
    arch = "tiny" if a.tiny else a.arch
    out = write_checkpoint(a.dir, arch=arch, seed=a.seed, refiner=not a.no_refiner)
    print(f"wrote a randomly initialised {arch} checkpoint (seed {a.seed}) to {out}")
    return 0


def cmd_convert_weights(a: argparse.Namespace) -> int:
    from harmony_ops.convert import convert_weights
    from pipelines.io.storage import parse_storage_options

    r = convert_weights(a.src, a.dst, unet=a.unet, refiner=a.refiner, harmony_vae=a.harmony_vae, inverse=a.inverse,
                        inverse_unet=a.inverse_unet, storage_options=parse_storage_options(a.storage_option) or None)
    for part, used in r.used.items():
        print(f"{part}: {used}")
    for note in r.notes:
        print(f"note: {note}")
    inverse = f"; inverse model: {r.dst.rstrip('/')}/inverse" if "none" not in r.used["inverse unet"] else ""
    print(f"wrote {r.dst} (safetensors; model card harmony.json, {len(r.files)} source files){inverse}")
    return 0


def _output_flags(p: argparse.ArgumentParser) -> None:
    """How a Ray job reports: the same four flags on harmonize, evaluate, synthesize and train."""
    p.add_argument("--progress-every", type=float, default=10.0, metavar="SECONDS",
                   help="when redirected (no terminal): one progress line every SECONDS (default 10)")
    p.add_argument("--log-format", choices=["text", "json"], default="text",
                   help="json: one JSON object per line (progress events, messages, the final summary)")
    p.add_argument("--quiet", action="store_true", help="print only the final summary and errors")
    p.add_argument("--verbose", action="store_true", default=argparse.SUPPRESS,
                   help="Ray's own logs and warnings on the terminal too (default: in a log file, its path printed)")
    p.set_defaults(ray_job=True)


def _force_flag(p: argparse.ArgumentParser) -> None:
    p.add_argument("--force", action="store_true",
                   help="take over the output prefix's lease even when another run holds it (that run then stops)")


class Parser(argparse.ArgumentParser):
    """argparse, with the closest known flag named when one is mistyped (Python 3.11's argparse names none)."""

    def unknown(self, extras: list[str]) -> None:
        known = [s for a in self._actions for s in a.option_strings if s.startswith("--")]
        hints = []
        for arg in extras:
            flag = arg.split("=", 1)[0]
            close = difflib.get_close_matches(flag, known, n=1, cutoff=0.6) if flag.startswith("-") else []
            hints.append(f"{arg} (did you mean {close[0]}?)" if close else arg)
        self.error("unrecognized arguments: " + ", ".join(hints))


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("harmony")
    except PackageNotFoundError:
        return "unknown (not installed)"


def build_parser() -> argparse.ArgumentParser:
    p = Parser(prog="harmony", description="Image harmonization with DiffHarmony, from one image to a Ray cluster.")
    p.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    p.add_argument("--version", action="version", version=f"harmony {_version()}")
    sub = p.add_subparsers(dest="command", required=True, parser_class=Parser)

    s = sub.add_parser("image", help="harmonize one composite with its mask")
    s.add_argument("composite", help="the composite image: local path or URI (png, jpg, webp)")
    s.add_argument("mask", help="its foreground mask (white = foreground), same size as the composite")
    s.add_argument("-o", "--output", required=True, help="output image (.png, .jpg, .webp)")
    s.add_argument("--seed", type=int, help="seed of this image's noise (default 0): the same seed gives the same output")
    s.add_argument("--config", help="YAML file with the same fields (flags win)")
    _model_flags(s)
    s.set_defaults(func=cmd_image)

    s = sub.add_parser("harmonize", help="run the Ray Data job over a manifest")
    s.add_argument("--manifest", help="manifest URI (parquet, csv, jsonl)")
    s.add_argument("--output", help="output prefix URI")
    s.add_argument("--config", help="YAML job config (flags win)")
    s.add_argument("--seed", type=int)
    s.add_argument("--batch-size", type=int, help="rows per model batch")
    s.add_argument("--gpus-per-actor", type=float, help="GPUs per model actor (fractions share a GPU)")
    s.add_argument("--actors", help="model actors: N or MIN,MAX (autoscaling)")
    s.add_argument("--image-format", choices=["png", "jpg", "jpeg", "webp"], help="format of images/{id}.{ext} (default png; jpeg = jpg)")
    s.add_argument("--limit", type=int, help="only the first N manifest rows")
    s.add_argument("--no-resume", action="store_true", help="redo rows already done")
    s.add_argument("--max-failed-fraction", type=float, help="exit 3 when more rows than this fraction fail")
    s.add_argument("--ray-address", help="Ray cluster address (default: RAY_ADDRESS or a local instance)")
    _model_flags(s)
    _allow_uri_flag(s)
    _force_flag(s)
    _output_flags(s)
    s.set_defaults(func=cmd_harmonize)

    s = sub.add_parser("evaluate", help="score a folder of harmonized images against ground truth (iHarmony4 protocol)")
    s.add_argument("--manifest", help="manifest URI with id, composite, mask, real (optional subset)")
    s.add_argument("--predictions", help="folder of <id>.<png|jpg|jpeg|webp> (or <composite stem>.png), or a harmonize output prefix")
    s.add_argument("--output", help="output prefix URI (metrics/, summary.json, report.html)")
    s.add_argument("--compare", help="a second predictions folder, scored side by side")
    s.add_argument("--use-gt-bg", action="store_true", help="paste the ground-truth background into each prediction first")
    s.add_argument("--no-report", action="store_true", help="do not write report.html")
    s.add_argument("--config", help="YAML job config (flags win)")
    s.add_argument("--limit", type=int, help="only the first N manifest rows")
    s.add_argument("--ray-address", help="Ray cluster address (default: RAY_ADDRESS or a local instance)")
    s.add_argument("--storage-option", action="append", metavar="KEY=VALUE", help="fsspec option, e.g. endpoint_url=http://host:9000")
    _allow_uri_flag(s)
    _force_flag(s)
    _output_flags(s)
    s.set_defaults(func=cmd_evaluate)

    s = sub.add_parser("synthesize", help="make iHarmony4-style training data: perturb real images' foregrounds")
    s.add_argument("--manifest", help="input manifest URI with id, real (and mask for --mask-source given)")
    s.add_argument("--output", help="output prefix URI (composite_images/, masks/, real_images/, manifest.parquet, params.parquet)")
    s.add_argument("--mask-source", choices=["given", "ellipse", "box", "blob"], help="given (default): the manifest's masks; else random shapes")
    s.add_argument("--fg-ratio", metavar="MIN,MAX", help="random masks: foreground ratio range (default 0.05,0.4)")
    s.add_argument("--per-image", type=int, help="samples per real image (default 1)")
    s.add_argument("--kinds", help="perturbation kinds, optionally weighted: colour_transfer,tone,day_night or tone=0.7,day_night=0.3")
    s.add_argument("--strength", metavar="MIN,MAX", help="perturbation strength range (default 0.5,1.0)")
    s.add_argument("--fmse-range", metavar="MIN,MAX", help="keep composites with fMSE against the real image in range (default 100,5000)")
    s.add_argument("--max-draws", type=int, help="draws per sample until one passes the fMSE filter (default 3)")
    g = s.add_argument_group("inverse synthesis", "--method inverse: the inverse-harmonization model re-renders the foreground")
    g.add_argument("--method", choices=["classical", "inverse"], help="classical (default): colour perturbations; inverse: the model")
    g.add_argument("--model", help="the inverse model checkpoint (e.g. DST/inverse from harmony convert-weights)")
    g.add_argument("--candidates", type=int, help="seeded candidates per sample; the largest fMSE in --fmse-range is kept (default 4)")
    g.add_argument("--harmony-vae", help="Harmony-VAE URI for the inverse model's decode")
    g.add_argument("--decoder", choices=["auto", "vae", "harmony-vae"])
    g.add_argument("--scheduler", help="euler_a (default), euler, ddim, dpmpp_2m")
    g.add_argument("--steps", type=int, help="denoising steps (default 5)")
    g.add_argument("--device", help="auto (default), cpu, cuda, cuda:N")
    g.add_argument("--dtype", choices=["auto", "fp32", "fp16", "bf16"])
    g.add_argument("--batch-size", type=int, help="input rows per model actor batch")
    g.add_argument("--gpus-per-actor", type=float, help="GPUs per model actor (fractions share a GPU)")
    s.add_argument("--seed", type=int)
    s.add_argument("--config", help="YAML job config (flags win)")
    s.add_argument("--limit", type=int, help="only the first N manifest rows")
    s.add_argument("--ray-address", help="Ray cluster address (default: RAY_ADDRESS or a local instance)")
    s.add_argument("--storage-option", action="append", metavar="KEY=VALUE", help="fsspec option, e.g. endpoint_url=http://host:9000")
    _allow_uri_flag(s)
    _force_flag(s)
    _output_flags(s)
    s.set_defaults(func=cmd_synthesize)

    s = sub.add_parser("report", help="write report.html (tables, plots, image grids) under an output prefix")
    s.add_argument("prefix", metavar="OUTPUT_PREFIX", help="a harmonize or evaluate output prefix")
    s.add_argument("--storage-option", action="append", metavar="KEY=VALUE", help="fsspec option, e.g. endpoint_url=http://host:9000")
    s.set_defaults(func=cmd_report)

    s = sub.add_parser("validate", help="check a manifest and that every object exists; writes nothing")
    s.add_argument("--manifest", required=True)
    s.add_argument("--no-check-objects", action="store_true", help="only check the table, not the objects")
    s.add_argument("--storage-option", action="append", metavar="KEY=VALUE")
    _allow_uri_flag(s)
    s.set_defaults(func=cmd_validate)

    s = sub.add_parser("demo", help="build sample composites and run the whole harmonize job on them")
    s.add_argument("--output", default="demo-output", help="local folder for data and results")
    s.add_argument("--model", help="run DiffHarmony with this checkpoint (default: the embedded demo model)")
    s.add_argument("--engine", choices=["diffharmony", "baseline"], help="baseline: the Lab colour-statistics transfer instead")
    s.add_argument("--s3", action="store_true", help="go through an embedded S3 server (moto)")
    s.add_argument("--images", type=int, default=8, help="number of sample composites")
    _output_flags(s)
    s.set_defaults(func=cmd_demo)

    s = sub.add_parser("import-iharmony4", help="build a manifest from an iHarmony4 folder")
    s.add_argument("root", help="dataset root (a subset folder or the folder holding several)")
    s.add_argument("--split", choices=["train", "test"], default="test")
    s.add_argument("-o", "--output", required=True, help="manifest to write (.parquet, .csv, .jsonl)")
    s.add_argument("--storage-option", action="append", metavar="KEY=VALUE")
    s.set_defaults(func=cmd_import_iharmony4)

    s = sub.add_parser("bench", help="measure model throughput, pipeline efficiency, adaptive resolution, scaling")
    s.add_argument("--arch", choices=["tiny", "sd15-inpaint"], default="tiny")
    s.add_argument("--resolution", default="512,1024", help="comma-separated square inference sizes")
    s.add_argument("--batch-size", default="1,2", help="comma-separated batch sizes")
    s.add_argument("--device", default="auto", help="auto, cpu, cuda")
    s.add_argument("--dtype", default="auto", choices=["auto", "fp32", "fp16", "bf16"])
    s.add_argument("--images", type=int, default=12, help="images for the pipeline and scaling sections")
    s.add_argument("--repeats", type=int, default=2, help="timed repeats per model configuration (median)")
    s.add_argument("--steps", type=int, default=5)
    s.add_argument("--sections", default="model,pipeline,adaptive,scaling",
                   help="comma-separated; model runs without Ray (torch and diffusers only), the others start Ray; "
                   "cpu (CPU work per image outside the model) runs without a model, torch or Ray; "
                   "job (harmonize --engine baseline against a single-process loop, --job-rows rows) starts Ray; "
                   "train (training samples/s per worker for stage 1 and the refiner, at the smallest --resolution "
                   "and the largest --batch-size) runs on request only")
    s.add_argument("--job-rows", type=int, default=1200, help="rows of 256x256 composites for the job section")
    s.add_argument("--cpu-megapixels", default="1,4,12", help="image sizes of the cpu section, in megapixels")
    s.add_argument("--adaptive-photo-size", type=int,
                   help="side of the adaptive section's four square photos (default 1024; 1536: where the modes "
                   "differ most, slower)")
    g = s.add_argument_group("model section", "how the model section runs the models (the other sections run them as harmonize does)")
    g.add_argument("--sdpa", action=argparse.BooleanOptionalAction, default=True,
                   help="attention through scaled_dot_product_attention (default) or diffusers' classic processor")
    g.add_argument("--channels-last", action="store_true", help="channels-last memory format for the models")
    g.add_argument("--compile", nargs="?", const="default", metavar="MODE",
                   help="torch.compile the UNet; MODE: default, reduce-overhead, max-autotune, "
                   "max-autotune-no-cudagraphs (compile time is reported apart)")
    s.add_argument("--out", default="bench-results", help="folder for bench.json and bench.md")
    s.set_defaults(func=cmd_bench)

    s = sub.add_parser("train", help="fine-tune a DiffHarmony part on Ray Train (stage1, refiner, inverse, harmony-vae, vae)")
    s.add_argument("--task", choices=["stage1", "refiner", "inverse", "harmony-vae", "vae"])
    s.add_argument("--data", help="training manifest with composite, mask, real")
    s.add_argument("--init", help="checkpoint to start from (local path or fsspec URI)")
    s.add_argument("--output", help="output prefix URI (model/, metrics/, checkpoints/, summary.json, report/)")
    s.add_argument("--validate", help="validation manifest (composite, mask, real)")
    s.add_argument("--workers", type=int, help="Ray Train workers (default 1)")
    s.add_argument("--gpus-per-worker", type=float, help="GPUs per worker (0: CPU, gloo)")
    s.add_argument("--cpus-per-worker", type=float, help="CPUs per worker (default 1, or on a local Ray with too few "
                   "CPUs an equal share of what the data stage leaves)")
    s.add_argument("--max-failures", type=int, help="worker deaths and transient errors survived, each restarting "
                   "from the last checkpoint (default 3); errors no restart can fix stop the run at once")
    s.add_argument("--resource-wait-seconds", type=float, help="on a cluster joined by address, how long to wait for "
                   "the workers' resources before stopping (default 600)")
    s.add_argument("--max-steps", type=int, help="train until this step; a re-run with more continues")
    s.add_argument("--batch-size", type=int, help="samples per worker per step")
    s.add_argument("--lr", type=float)
    s.add_argument("--warmup-steps", type=int)
    s.add_argument("--resolution", type=int, help="training side in pixels (multiple of 32)")
    s.add_argument("--checkpoint-every", type=int)
    s.add_argument("--validate-every", type=int)
    s.add_argument("--log-every", type=int, help="progress line every N steps")
    s.add_argument("--ema", action=argparse.BooleanOptionalAction, default=None, help="EMA weights (default on)")
    s.add_argument("--plain-mse", action="store_true", default=None, help="stage1/inverse: plain instead of foreground-weighted MSE")
    s.add_argument("--precision", choices=["auto", "fp32", "bf16", "fp16"])
    s.add_argument("--seed", type=int)
    s.add_argument("--limit", type=int, help="only the first N manifest rows")
    s.add_argument("--stage1-cache", metavar="URI", help="refiner: precompute the frozen stage-1 outputs once into a "
                   "cache manifest under URI (reused when init model and resolution match) instead of sampling per step")
    s.add_argument("--config", help="YAML job config (flags win)")
    s.add_argument("--ray-address", help="Ray cluster address (default: RAY_ADDRESS or a local instance)")
    s.add_argument("--storage-option", action="append", metavar="KEY=VALUE", help="fsspec option, e.g. endpoint_url=http://host:9000")
    _allow_uri_flag(s)
    _force_flag(s)
    _output_flags(s)
    s.set_defaults(func=cmd_train)

    s = sub.add_parser("recipe", help="run a training recipe (a folder of step YAMLs), e.g. the embedded model's: make model")
    s.add_argument("recipe", nargs="?", default="configs/recipes/demo", help="recipe folder (default configs/recipes/demo)")
    s.add_argument("--work", default="build/recipe-demo", help="work folder: data, checkpoints, step markers (default build/recipe-demo)")
    s.add_argument("--restart", action="store_true", help="run every step again (default: skip finished steps, resume training)")
    s.add_argument("--only", metavar="STEP", help="run this step alone (e.g. 08-evaluate)")
    s.add_argument("--until", metavar="STEP", help="stop after this step")
    s.add_argument("--cap", action="append", metavar="KEY=N", help="upper bound on a numeric step setting, e.g. max_steps=5 (trial runs)")
    s.set_defaults(func=cmd_recipe)

    s = sub.add_parser("make-checkpoint", help="write a seeded, randomly initialised checkpoint (tests, benchmarks)")
    s.add_argument("dir")
    s.add_argument("--tiny", action="store_true", help="same as --arch tiny")
    s.add_argument("--arch", choices=["tiny", "demo", "sd15-inpaint"], default="tiny")
    s.add_argument("--seed", type=int, default=0)
    s.add_argument("--no-refiner", action="store_true", help="do not write refiner/")
    s.add_argument("--archive", action="store_true",
                   help="write an archive in the layout the DiffHarmony authors released (tiny only), for convert-weights")
    s.set_defaults(func=cmd_make_checkpoint)

    s = sub.add_parser("convert-weights", help="turn the released DiffHarmony / DiffHarmony++ archive into safetensors checkpoints")
    s.add_argument("src", metavar="SRC", help="the unpacked archive (base/, weights-N/, refinement/, condition_vae/, inverse/)")
    s.add_argument("dst", metavar="DST", help="output checkpoint URI (the inverse model goes to DST/inverse)")
    for flag, what in (("--unet", "stage-1 UNet (a weights-N/ folder or base/unet)"), ("--refiner", "refiner folder"),
                       ("--harmony-vae", "Harmony-VAE folder (condition_vae/)"), ("--inverse", "inverse model folder"),
                       ("--inverse-unet", "inverse UNet folder (a weights-N/ folder under --inverse)")):
        s.add_argument(flag, metavar="PATH", help=f"the {what}, relative to SRC or absolute; default: found by the layout")
    s.add_argument("--storage-option", action="append", metavar="KEY=VALUE")
    s.set_defaults(func=cmd_convert_weights)
    return p


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extras = parser.parse_known_args(argv)
    if extras:  # said by the subcommand's parser, which knows its flags
        parser._subparsers._group_actions[0].choices[args.command].unknown(extras)
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.WARNING, format="%(levelname)s %(name)s: %(message)s")
    from harmony_ops.checkpoints import CheckpointError
    from harmony_ops.imageio import ImageError

    from pipelines.errors import JobError

    from pipelines.core.console import Console
    from pipelines.core.logs import ray_logs_to_file

    args.console = console = Console(getattr(args, "log_format", "text"), getattr(args, "quiet", False),
                                     getattr(args, "progress_every", 10.0))
    try:
        if not getattr(args, "ray_job", False):
            return args.func(args)
        with ray_logs_to_file(args.command, verbose=args.verbose) as log:
            if log is not None:
                console(f"Ray's logs and warnings: {log}")
            return args.func(args)
    except (ConfigError, CheckpointError, ImageError, JobError, ValueError, FileNotFoundError) as exc:
        console(f"harmony {args.command}: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
