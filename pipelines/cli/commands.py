"""The `harmony` commands: each names its options (a job's config, or a small options model), the flat
flag names of nested fields that users type often, and the body that runs it."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from typing import Callable, Mapping

# ModelConfig's fields as flat flags (--steps for model.steps), on every command that loads a model.
MODEL_FLAGS = {f"model.{n}": "--" + n.replace("_", "-") for n in (
    "engine", "model", "unet", "vae", "harmony_vae", "decoder", "refiner", "scheduler", "steps", "device", "dtype",
    "allow_pickle")}
STORAGE_FLAG = {"storage_options": "--storage-option"}
RESOLUTION_FLAGS = {"resolution.mode": "--resolution", "resolution.feather": "--feather"}
FIDELITY_FLAGS = {"fidelity.mode": "--fidelity", "fidelity.max_chroma_shift": "--max-chroma-shift"}
MODEL_POOL_FLAGS = {"pools.model.batch_size": "--batch-size", "pools.model.num_gpus": "--gpus-per-actor"}


@dataclass(frozen=True)
class Command:
    name: str
    help: str
    run: Callable[..., int]  # (options, console) -> exit code
    options: str  # "module:Class", imported only when this command runs (or its help is shown)
    shortcuts: Mapping[str, str] = field(default_factory=dict)
    yaml: bool = False  # --config FILE: a YAML file with the same fields, flags winning
    ray_job: bool = False  # --progress-every, --log-format, --quiet, --verbose; Ray's logs to a file

    def options_class(self) -> type:
        from importlib import import_module

        module, _, name = self.options.partition(":")
        return getattr(import_module(module), name)


def cmd_image(cfg, console) -> int:
    from pipelines.jobs.image.job import run_image

    print(f"harmony image: {cfg.model.label()}, resolution {cfg.resolution.mode}", file=sys.stderr)
    r = run_image(cfg)
    crop = f" crop {r.plan.crop}" if r.plan.crop else ""
    print(f"wrote {r.output} ({r.width}x{r.height}); inference {r.plan.width}x{r.plan.height}{crop}")
    print("seconds: " + ", ".join(f"{k} {v:.2f}" for k, v in r.seconds.items()))
    print("metrics: " + ", ".join(f"{k} {v:.4g}" if isinstance(v, float) else f"{k} {v}" for k, v in r.metrics.items()))
    if r.notes:
        print("notes: " + ", ".join(r.notes))
    return 0


def cmd_harmonize(cfg, console) -> int:
    from pipelines.jobs.harmonize.job import run_harmonize

    return run_harmonize(cfg, echo=console).exit_code


def cmd_evaluate(cfg, console) -> int:
    from pipelines.jobs.evaluate.job import run_evaluate

    return run_evaluate(cfg, echo=console).exit_code


def cmd_synthesize(cfg, console) -> int:
    from pipelines.jobs.synthesize.job import run_synthesize

    return run_synthesize(cfg, echo=console).exit_code


def cmd_train(cfg, console) -> int:
    from pipelines.jobs.train.driver import run_train

    return run_train(cfg, echo=console).exit_code


def cmd_report(o, console) -> int:
    from pipelines.report.html import write_report

    uri = write_report(o.prefix, o.storage_options)
    print(f"wrote {uri}")
    if o.screenshot:
        from pipelines.report.screenshot import screenshot

        print(f"wrote {screenshot(uri, o.screenshot, o.row)}")
    elif o.row is not None:
        print("--row is for --screenshot", file=sys.stderr)
        return 2
    return 0


def cmd_validate(o, console) -> int:
    from pipelines.jobs.validate.job import run_deep, run_validate

    report = run_validate(o.manifest, o.storage_options, check_objects=o.check_objects, allow_uri=o.allow_uri)
    print(report.text())
    if not o.deep:
        return 0 if report.ok else 1
    from pipelines.core.logs import ray_logs_to_file

    with ray_logs_to_file("validate") as log:
        if log is not None:
            console(f"Ray's logs and warnings: {log}")
        deep = run_deep(o, console)
    print(deep.text())
    return 0 if report.ok and deep.ok else 1


def cmd_demo(o, console) -> int:
    from pipelines.devtools.demo.demo import run_demo

    return run_demo(output=o.output, model=o.model, s3=o.s3, images=o.images, engine=o.engine, echo=console,
                    catalog=o.catalog)


def cmd_import_iharmony4(o, console) -> int:
    from pipelines.io.access import AccessPolicy
    from pipelines.io.iharmony4 import import_iharmony4
    from pipelines.io.manifest import manifest_dir, resolve_uri
    from pipelines.io.storage import join

    n = import_iharmony4(o.root, o.split, o.output, o.storage_options)
    print(f"wrote {n} rows to {o.output}")
    if not AccessPolicy(o.output).allows(resolve_uri(manifest_dir(o.output), join(o.root, "x"))):
        print(f"its rows read under {o.root}, outside the manifest's folder: pass --allow-uri {o.root} to the jobs")
    return 0


def cmd_bench(o, console) -> int:
    from pipelines.devtools.bench.model import ModelOptions
    from pipelines.devtools.bench.run import run_bench

    ints = lambda v: tuple(int(x) for x in v.split(","))  # noqa: E731
    options = ModelOptions(sdpa=o.sdpa, channels_last=o.channels_last, compile=o.compile is not None,
                           compile_mode=o.compile or "default")
    run_bench(arch=o.arch, resolutions=ints(o.resolution), batch_sizes=ints(o.batch_size), device=o.device,
              images=o.images, out=o.out, repeats=o.repeats, steps=o.steps, dtype=o.dtype,
              sections=tuple(o.sections.split(",")), argv=sys.argv[2:], options=options,
              cpu_megapixels=tuple(float(x) if "." in x else int(x) for x in o.cpu_megapixels.split(",")),
              job_rows=o.job_rows, quality_model=o.quality_model, quality_per_kind=o.quality_per_kind, record=o.record,
              **({"adaptive_size": o.adaptive_photo_size} if o.adaptive_photo_size else {}))
    return 0


def cmd_recipe(o, console) -> int:
    from pipelines.devtools.recipe.runner import parse_caps, run_recipe

    run_recipe(o.recipe, o.work, restart=o.restart, only=o.only, until=o.until, caps=parse_caps(o.cap))
    return 0


def cmd_make_checkpoint(o, console) -> int:
    from harmony_ops.factory import write_archive, write_checkpoint

    if o.archive:
        if not o.tiny and o.arch != "tiny":
            raise ValueError("--archive writes the tiny architecture only")
        out = write_archive(o.dir, seed=o.seed)
        text = "with" if (out / "base" / "text_encoder").is_dir() else "without (transformers is not installed)"
        print(f"wrote a tiny archive in the released DiffHarmony layout (seed {o.seed}, {text} a text encoder) to {out}")
        return 0
    arch = "tiny" if o.tiny else o.arch
    out = write_checkpoint(o.dir, arch=arch, seed=o.seed, refiner=o.refiner)
    print(f"wrote a randomly initialised {arch} checkpoint (seed {o.seed}) to {out}")
    return 0


def cmd_convert_weights(o, console) -> int:
    from harmony_ops.convert import convert_weights

    r = convert_weights(o.src, o.dst, unet=o.unet, refiner=o.refiner, harmony_vae=o.harmony_vae, inverse=o.inverse,
                        inverse_unet=o.inverse_unet, storage_options=o.storage_options or None)
    for part, used in r.used.items():
        print(f"{part}: {used}")
    for note in r.notes:
        print(f"note: {note}")
    inverse = f"; inverse model: {r.dst.rstrip('/')}/inverse" if "none" not in r.used["inverse unet"] else ""
    print(f"wrote {r.dst} (safetensors; model card harmony.json, {len(r.files)} source files){inverse}")
    return 0


_MODEL_JOB = {**MODEL_FLAGS, **STORAGE_FLAG, **RESOLUTION_FLAGS}
COMMANDS: tuple[Command, ...] = (
    Command("image", "harmonize one composite with its mask", cmd_image, "pipelines.jobs.image.config:ImageJobConfig",
            {**_MODEL_JOB, **FIDELITY_FLAGS, "output": "-o"}, yaml=True),
    Command("harmonize", "run the Ray Data job over a manifest", cmd_harmonize,
            "pipelines.jobs.harmonize.config:HarmonizeJobConfig", {**_MODEL_JOB, **MODEL_POOL_FLAGS, **FIDELITY_FLAGS},
            yaml=True,
            ray_job=True),
    Command("evaluate", "score a folder of harmonized images against ground truth (iHarmony4 protocol)", cmd_evaluate,
            "pipelines.jobs.evaluate.config:EvaluateJobConfig", STORAGE_FLAG, yaml=True, ray_job=True),
    Command("synthesize", "make iHarmony4-style training data: perturb real images' foregrounds", cmd_synthesize,
            "pipelines.jobs.synthesize.config:SynthesizeJobConfig", {**_MODEL_JOB, **MODEL_POOL_FLAGS}, yaml=True,
            ray_job=True),
    Command("report", "write report.html (tables, plots, image grids) under an output prefix", cmd_report,
            "pipelines.cli.options:ReportOptions", STORAGE_FLAG),
    Command("validate", "check a manifest and that every object exists; writes nothing", cmd_validate,
            "pipelines.jobs.validate.config:ValidateOptions", STORAGE_FLAG),
    Command("demo", "build sample composites and run the whole harmonize job on them", cmd_demo,
            "pipelines.devtools.demo.config:DemoOptions", ray_job=True),
    Command("import-iharmony4", "build a manifest from an iHarmony4 folder", cmd_import_iharmony4,
            "pipelines.cli.options:ImportIHarmony4Options", {**STORAGE_FLAG, "output": "-o"}),
    Command("bench", "measure model throughput, pipeline efficiency, adaptive resolution, scaling", cmd_bench,
            "pipelines.devtools.bench.config:BenchOptions"),
    Command("train", "fine-tune a DiffHarmony part on Ray Train (stage1, refiner, inverse, harmony-vae, vae)", cmd_train,
            "pipelines.jobs.train.config:TrainJobConfig", STORAGE_FLAG, yaml=True, ray_job=True),
    Command("recipe", "run a training recipe (a folder of step YAMLs), e.g. the embedded model's: make model",
            cmd_recipe, "pipelines.devtools.recipe.config:RecipeOptions"),
    Command("make-checkpoint", "write a seeded, randomly initialised checkpoint (tests, benchmarks)",
            cmd_make_checkpoint, "pipelines.cli.options:MakeCheckpointOptions"),
    Command("convert-weights", "turn the released DiffHarmony / DiffHarmony++ archive into safetensors checkpoints",
            cmd_convert_weights, "pipelines.cli.options:ConvertWeightsOptions", STORAGE_FLAG),
)
BY_NAME: dict[str, Command] = {c.name: c for c in COMMANDS}
