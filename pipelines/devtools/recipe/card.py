"""The recipe's last two steps: score the trained model side by side with the composite and the
baseline engine on held-out composites, then install its weights with a model card."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pandas as pd

from pipelines.errors import JobError

# Goals of the embedded model (issue 15): below the baseline engine's fMSE, at most this share of
# the untouched composite's, and the refiner better than stage 1 alone.
FMSE_SHARE_OF_COMPOSITE = 0.6
VARIANTS = ("baseline", "stage1", "stage1+refiner")
SCORES = ("fmse", "mse", "psnr")


def _model_config(variant: str, model: str, steps: int):
    from pipelines.config import ModelConfig

    if variant == "baseline":
        return ModelConfig(engine="baseline")
    return ModelConfig(engine="diffharmony", model=model, refiner="none" if variant == "stage1" else "auto", steps=steps)


def _pools():
    from pipelines.config import PoolConfig, PoolsConfig

    small = dict(num_cpus=0.25, num_gpus=0, batch_size=4, min_workers=1, max_workers=1)
    return PoolsConfig(decode=PoolConfig(**small), model=PoolConfig(batch_size=4, min_workers=1, max_workers=1),
                       finish=PoolConfig(**small))


def summarise(metrics: pd.DataFrame, prefix: str = "") -> dict:
    """Mean fMSE, MSE, PSNR of the ok rows (the iHarmony4 tables' means), and the row count."""
    ok = metrics[metrics["status"] == "ok"]
    out = {m: float(ok[f"{prefix}{m}"].mean()) for m in SCORES}
    out["rows"] = int(len(ok))
    return out


def evaluate_variants(cfg: dict, echo=print) -> dict:
    """Harmonize the held-out manifest with each variant (harmony harmonize, ground truth given)
    and return {composite, baseline, stage1, stage1+refiner: {fmse, mse, psnr, rows}}."""
    from pipelines.config import ResolutionConfig
    from pipelines.jobs.harmonize.config import HarmonizeJobConfig
    from pipelines.io.tables import METRICS_FILE
    from pipelines.jobs.harmonize.job import run_harmonize

    out: dict[str, dict] = {}
    for variant in VARIANTS:
        run = HarmonizeJobConfig(
            manifest=cfg["manifest"], output=f"{cfg['output']}/{variant.replace('+', '-')}",
            model=_model_config(variant, cfg["model"], cfg.get("steps", 5)), pools=_pools(), block_rows=4,
            resolution=ResolutionConfig(class_sizes=tuple(cfg["class_sizes"])), seed=cfg.get("seed", 0))
        r = run_harmonize(run, echo=echo)
        if r.exit_code:
            raise JobError(f"evaluation run {variant} ended with exit code {r.exit_code}")
        metrics = pd.read_parquet(Path(run.output) / METRICS_FILE)
        if "composite" not in out:
            out["composite"] = summarise(metrics, "composite_")
        out[variant] = summarise(metrics)
    for k, v in out.items():
        echo(f"evaluate: {k:15s} fMSE {v['fmse']:8.1f}  MSE {v['mse']:7.1f}  PSNR {v['psnr']:5.2f}  ({v['rows']} rows)")
    return out


def goals(scores: dict) -> list[tuple[str, bool, str]]:
    """(goal, met, figures) for the three goals of the embedded model."""
    comp, base, s1, full = (scores[k]["fmse"] for k in ("composite", "baseline", "stage1", "stage1+refiner"))
    return [
        ("fMSE below the baseline engine's", full < base, f"{full:.1f} vs {base:.1f} ({full / base:.2f}x)"),
        (f"fMSE at most {FMSE_SHARE_OF_COMPOSITE}x the composite's", full <= FMSE_SHARE_OF_COMPOSITE * comp,
         f"{full:.1f} vs {comp:.1f} ({full / comp:.2f}x)"),
        ("the refiner improves on stage 1 alone", full < s1, f"{full:.1f} vs {s1:.1f}"),
    ]


def scores_table(scores: dict) -> str:
    rows = ["| | fMSE | MSE | PSNR (dB) | rows |", "|---|---|---|---|---|"]
    for k in ("composite", *VARIANTS):
        v = scores[k]
        rows.append(f"| {k} | {v['fmse']:.1f} | {v['mse']:.1f} | {v['psnr']:.2f} | {v['rows']} |")
    return "\n".join(rows)


def render_card(card: dict) -> str:
    steps = card["steps"]
    train = [(n, s) for n, s in steps.items() if s["run"] == "train"]
    lines = [
        "# Embedded DiffHarmony model `demo`",
        "",
        "A small SD-shaped DiffHarmony (8x VAE, 9-channel inpainting UNet, refinement U-Net), trained from "
        "scratch on this project's own commands on a CPU-only machine. It is the default model of "
        "`harmony harmonize`, `harmony image` and `harmony demo`. It shows the method end to end; it is not "
        "the released DiffHarmony (which needs a GPU and the authors' weights: see `harmony convert-weights`).",
        "",
        f"- Reproduce: `{card['command']}` (recipe `{card['recipe']}`, one YAML per step)",
        f"- Commit: `{card['commit']}`; machine: {card['machine']}",
        f"- Inference: stage 1 at the {card['class_sizes'][0]} / {card['class_sizes'][1]} px classes "
        "(model_index.json `harmony.class_sizes`), the refiner at the region's size",
        f"- Training: {sum(card.get('step_seconds', {}).values()) / 60:.1f} min of optimisation steps in all "
        f"({card['train_seconds'] / 60:.1f} min wall in the last invocation of each training step)",
        "",
        "## Data",
        "",
        f"- Training photographs: {', '.join(card['photos']['train'])}",
        f"- Held out (never trained on): {', '.join(card['photos']['holdout'])}",
        f"- {card['photos']['crops']} random crops per training photograph at {card['photos']['side']} px, "
        "then `harmony synthesize` (every perturbation kind, random masks); see the recipe's YAMLs for seeds and settings",
        "",
        "## Steps",
        "",
        "| step | task | steps | final loss | optimisation seconds (all runs) | wall seconds (last run) | validation fMSE / PSNR |",
        "|---|---|---|---|---|---|---|",
    ]
    for name, s in train:
        r = s["result"]
        v = r.get("validation") or {}
        val = f"{v.get('fmse', float('nan')):.1f} / {v.get('psnr', float('nan')):.2f}" if v else "-"
        opt = card.get("step_seconds", {}).get(name)
        opt = f"{opt:.0f}" if opt is not None else "-"
        lines.append(f"| {name} | {r['task']} | {r['steps']} | {r['final_loss']:.4f} | {opt} | {s['seconds']:.0f} | {val} |")
    lines += ["", "Optimisation seconds: the sum of every recorded step's time (metrics/train.parquet), across "
              "resumed runs; wall seconds: the last invocation of the step (start-up, data, validation included)."]
    lines += ["", "## Quality on held-out composites", "",
              f"`harmony harmonize` over {card['scores']['composite']['rows']} held-out composites "
              "(256 px, iHarmony4 protocol), each variant with the same seeds:", "", scores_table(card["scores"]), "",
              "| goal | met | figures |", "|---|---|---|"]
    lines += [f"| {g} | {'yes' if ok else 'no'} | {fig} |" for g, ok, fig in goals(card["scores"])]
    if card.get("notes"):
        lines += ["", "## Notes", "", *[f"- {n}" for n in card["notes"]]]
    return "\n".join(lines) + "\n"


def install_model(cfg: dict, log: dict, echo=print) -> dict:
    """Copy the final model's weights and configs into cfg['dest'] (relative paths: to the
    repository root), record class_sizes and the recipe in model_index.json, write card.json and
    MODEL_CARD.md."""
    src = Path(cfg["model"])
    dest = Path(cfg["dest"])
    if not dest.is_absolute():
        dest = Path(__file__).resolve().parents[3] / dest
    scores = log["steps"].get(cfg["evaluate_step"], {}).get("result")
    if not scores:
        raise JobError(f"install needs the scores of step {cfg['evaluate_step']!r}, which has not run")
    if dest.exists():
        shutil.rmtree(dest)
    for p in sorted(src.rglob("*")):
        if p.is_file() and p.suffix in (".safetensors", ".json"):
            (dest / p.relative_to(src)).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(p, dest / p.relative_to(src))
    index_path = dest / "model_index.json"
    index = json.loads(index_path.read_text())

    # The commit at install time: the code that trained is that commit's if the tree was clean throughout.
    log = {**log, "commit": code_commit()}
    index["harmony"] = {"arch": "demo", "seed": cfg.get("seed", 0), "random_weights": False,
                        "class_sizes": list(cfg["class_sizes"]), "recipe": log["recipe"], "commit": log["commit"]}
    index_path.write_text(json.dumps(index, indent=2))
    photos = next(s for s in log["steps"].values() if s["run"] == "photos")["config"]
    step_seconds = {}
    for name, st in log["steps"].items():
        model = (st.get("result") or {}).get("model") if st["run"] == "train" else None
        if model:
            rows = Path(model).parent / "metrics" / "train.parquet"
            if rows.exists():
                step_seconds[name] = float(pd.read_parquet(rows)["seconds"].sum())
    card = dict(command=cfg.get("command", "make model"), step_seconds=step_seconds, recipe=log["recipe"], commit=log["commit"], machine=log["machine"],
                class_sizes=list(cfg["class_sizes"]), steps=log["steps"], scores=scores,
                train_seconds=sum(s["seconds"] for s in log["steps"].values() if s["run"] == "train"),
                photos=dict(train=photos["train"], holdout=photos["holdout"], crops=photos["crops"], side=photos["side"]),
                notes=cfg.get("notes", []))
    (dest / "card.json").write_text(json.dumps(card, indent=2, default=str))
    (dest / "MODEL_CARD.md").write_text(render_card(card))
    size = sum(p.stat().st_size for p in dest.rglob("*") if p.is_file())
    echo(f"install: {dest} ({size / 1e6:.1f} MB)")
    return {"dest": str(dest), "bytes": size}


def code_commit() -> str:
    """The commit of the code that runs, "+changes" when its code or recipes differ from it."""
    here = Path(__file__).parent
    try:
        head = subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=here,
                              check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "harmony_ops/*.py", "harmony_ops/training",
                                "pipelines", "schemas", "configs"], capture_output=True, text=True,
                               cwd=here.parents[2], check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return head + ("+changes" if dirty else "")
