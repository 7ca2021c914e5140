"""`harmony recipe` / `make model`: run a recipe, a folder of numbered step YAMLs, in order.

Each step file is `{run: <kind>, config: {...}}`, where config is exactly what that command's
`--config` YAML takes (`{work}` in any string stands for the recipe's work folder). Kinds:
photos, synthesize, make-checkpoint, train, evaluate, install. A finished step leaves a marker
under <work>/steps/; a re-run skips finished steps and resumes an interrupted `train` step from
its checkpoint, so nothing already computed is lost.
"""

from __future__ import annotations

import json
import os
import platform

import time
from pathlib import Path
from typing import Any, Callable

import yaml

from pipelines.errors import JobError
from pipelines.devtools.recipe.card import code_commit

KINDS = ("photos", "synthesize", "make-checkpoint", "train", "evaluate", "install")


def _subst(value: Any, work: str) -> Any:
    if isinstance(value, str):
        return value.replace("{work}", work)
    if isinstance(value, dict):
        return {k: _subst(v, work) for k, v in value.items()}
    if isinstance(value, list):
        return [_subst(v, work) for v in value]
    return value


def parse_caps(items: list[str] | None) -> dict[str, int]:
    """`--cap KEY=N` flags as {KEY: N}."""
    caps = {}
    for item in items or []:
        key, sep, value = item.partition("=")
        if not sep or not key or not value.strip().lstrip("-").isdigit():
            raise ValueError(f"--cap takes KEY=N with an integer N (e.g. max_steps=5), got {item!r}")
        caps[key] = int(value)
    return caps


def load_steps(folder: str | Path) -> list[tuple[str, dict]]:
    """(step name, {run, config}) for each `NN-*.yaml` in the recipe folder, in file-name order."""
    folder = Path(folder)
    files = sorted(p for p in folder.glob("[0-9][0-9]-*.yaml"))
    if not files:
        raise JobError(f"recipe {folder} has no step files (NN-name.yaml)")
    steps = []
    for p in files:
        spec = yaml.safe_load(p.read_text()) or {}
        if spec.get("run") not in KINDS:
            raise JobError(f"{p}: `run` must be one of {KINDS}, got {spec.get('run')!r}")
        steps.append((p.stem, {"run": spec["run"], "config": spec.get("config") or {}}))
    return steps


def _run_step(kind: str, cfg: dict, log: dict, echo) -> dict:
    from pipelines.config import build
    from pipelines.jobs.synthesize.config import SynthesizeJobConfig
    from pipelines.jobs.train.config import TrainJobConfig

    if kind == "photos":
        from pipelines.devtools.recipe.photos import write_photo_sets

        return write_photo_sets(**cfg)
    if kind == "synthesize":
        from pipelines.jobs.synthesize.job import run_synthesize

        r = run_synthesize(build(SynthesizeJobConfig, None, cfg), echo=echo)
        if r.exit_code:
            raise JobError(f"synthesize ended with exit code {r.exit_code}")
        return {"counts": r.summary.get("counts"), "seconds": r.summary.get("seconds")}
    if kind == "make-checkpoint":
        from harmony_ops.factory import write_checkpoint

        return {"path": str(write_checkpoint(cfg["dir"], arch=cfg.get("arch", "demo"), seed=cfg.get("seed", 0)))}
    if kind == "train":
        from pipelines.jobs.train.driver import run_train

        r = run_train(build(TrainJobConfig, None, cfg), echo=echo)
        s = r.summary
        return {k: s.get(k) for k in ("task", "steps", "final_loss", "validation", "model", "wall_seconds")}
    if kind == "evaluate":
        from pipelines.devtools.recipe.card import evaluate_variants

        return evaluate_variants(cfg, echo=echo)
    from pipelines.devtools.recipe.card import install_model

    return install_model(cfg, log, echo=echo)


def run_recipe(folder: str | Path, work: str | Path, restart: bool = False, only: str | None = None,
               caps: dict[str, int] | None = None, until: str | None = None, echo: Callable[..., None] = print) -> dict:
    """Run the recipe's steps in order (each once; `restart`: run them all again; `only`: that
    step alone); returns the log of every step (what it wrote, its wall seconds). `caps`: upper
    bounds on numeric settings of any step (e.g. max_steps, crops) for a quick trial run; `until`:
    stop after that step."""
    folder, work = Path(folder), Path(work).resolve()
    steps = load_steps(folder)
    for name in (only, until):
        if name is not None and name not in {n for n, _ in steps}:
            raise JobError(f"recipe {folder} has no step {name!r}; steps: {[n for n, _ in steps]}")
    marks = work / "steps"
    marks.mkdir(parents=True, exist_ok=True)
    log: dict[str, Any] = {"recipe": str(folder), "work": str(work), "commit": code_commit(),
                           "machine": f"{platform.machine()}, {os.cpu_count()} CPUs", "steps": {}}
    for name, spec in steps:
        mark = marks / f"{name}.json"
        if mark.exists() and not restart and only != name:
            log["steps"][name] = json.loads(mark.read_text())
            echo(f"recipe: {name} done before ({log['steps'][name]['seconds']:.0f} s), skipped")
            if name == until:
                break
            continue
        if only is not None and only != name:
            continue
        echo(f"recipe: {name} ({spec['run']}) ...")
        t0 = time.perf_counter()
        cfg = _subst(spec["config"], str(work))
        for key, cap in (caps or {}).items():
            if isinstance(cfg.get(key), int):
                cfg[key] = min(cfg[key], cap)
        out = _run_step(spec["run"], cfg, log, echo)
        entry = {"run": spec["run"], "config": cfg, "result": out, "seconds": time.perf_counter() - t0}
        mark.write_text(json.dumps(entry, indent=2, default=str))
        log["steps"][name] = entry
        echo(f"recipe: {name} finished in {entry['seconds']:.0f} s")
        if name == until:
            break
    (work / "recipe-log.json").write_text(json.dumps(log, indent=2, default=str))
    return log
