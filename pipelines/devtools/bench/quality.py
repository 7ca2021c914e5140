"""`harmony bench --sections quality`: how the embedded model does on images unlike its training data.

Composites from quality_set.py (a photograph source and perturbation kinds its recipe never trains on, and two
kinds it does), each harmonized in this process, with the job's own functions, by: nothing (the composite), the
baseline engine, stage 1 alone and stage 1 + refiner; scored on the iHarmony4 protocol (256 px) per perturbation
kind and overall. The bound of item 3 of issue 27: the model's fMSE at most 0.8x the composite's on every kind
and overall; `--record` stores the figures beside the shipped weights, where harmony_ops/defaults.py reads them
to choose the default engine.
"""

from __future__ import annotations

import json
import statistics
import time
from pathlib import Path

import numpy as np

from harmony_ops.defaults import EMBEDDED_MODEL_DIR, QUALITY_BOUND, QUALITY_FILE, meets_bound

VARIANTS = ("composite", "baseline", "stage1", "stage1+refiner")
MODEL_VARIANT = "stage1+refiner"
SCORES = ("fmse", "mse", "psnr")


def _engines(model: str) -> dict:
    from harmony_ops.loader import load_engine
    from pipelines.config import ModelConfig

    return {"baseline": load_engine("baseline"),
            "stage1": load_engine("diffharmony", **ModelConfig(model=model, refiner="none").engine_kwargs({})),
            MODEL_VARIANT: load_engine("diffharmony", **ModelConfig(model=model).engine_kwargs({}))}


def harmonize(engine, comp: np.ndarray, mask: np.ndarray, seed: int) -> np.ndarray:
    """One composite through an engine as `harmony image` runs it (plan, engine, paste back)."""
    from harmony_ops.regions import finish, prepare
    from pipelines.config import ResolutionConfig

    policy = ResolutionConfig().adopted(getattr(engine, "class_sizes", None)).policy()
    item = prepare(comp, mask, policy, resize=engine.needs_resize)
    region = engine.run([item], [seed]).regions[0]
    return finish(comp, mask, item.plan.region, region)


def summarise(rows: list[dict]) -> dict:
    """{variant: {fmse, mse, psnr (means), n}} over `rows` (one dict per composite and variant)."""
    out = {}
    for v in VARIANTS:
        mine = [r for r in rows if r["variant"] == v]
        out[v] = {m: statistics.fmean(r[m] for r in mine) for m in SCORES} | {"n": len(mine)}
    return out


def bench_quality(model: str | None = None, per_kind: int = 2, seed: int = 0, echo=print,
                  photos: tuple[str, ...] | None = None) -> dict:
    """The section's result: per-row scores, means per kind and overall, and whether the model meets the bound.
    `photos`: a subset of the source's photographs (tests)."""
    from harmony_ops.metrics import evaluate_arrays
    from pipelines.devtools.bench.quality_set import KINDS, PHOTOS, SOURCE_PACKAGE, UNSEEN, make_set

    model = str(model or EMBEDDED_MODEL_DIR)
    t0 = time.perf_counter()
    images = None
    if photos is not None:
        from pipelines.devtools.bench.quality_set import load_rgb, photo_paths

        images = {k: load_rgb(p) for k, p in photo_paths().items() if k in photos}
    composites = make_set(per_kind, seed, images)
    engines = _engines(model)
    echo(f"  quality: {len(composites)} composites ({per_kind} per kind and photograph), model {model}")
    rows = []
    for k, c in enumerate(composites):
        outputs = {"composite": c.composite}
        outputs.update({v: harmonize(e, c.composite, c.mask, seed + k) for v, e in engines.items()})
        for v, out in outputs.items():
            m = evaluate_arrays(out, c.real, c.mask)
            rows.append({"id": c.id, "photo": c.photo, "kind": c.kind, "variant": v, "fg_ratio": float(c.mask.mean()),
                         "fmse": m.fmse, "mse": m.mse, "psnr": m.psnr})
    by_kind = {kind: summarise([r for r in rows if r["kind"] == kind]) for kind in KINDS}
    result = {"model": model, "model_id": engines[MODEL_VARIANT].model_id, "bound": QUALITY_BOUND,
              "photos": {"package": SOURCE_PACKAGE,
              "files": {k: v for k, v in PHOTOS.items() if photos is None or k in photos}}, "kinds": list(KINDS), "unseen_kinds": list(UNSEEN),
              "per_kind": per_kind, "seed": seed, "by_kind": by_kind, "overall": summarise(rows), "rows": rows,
              "seconds": time.perf_counter() - t0}
    result["meets_bound"] = meets_bound(result)
    return result


CARD_START, CARD_END = "<!-- quality benchmark -->", "<!-- /quality benchmark -->"


def record(result: dict, folder: Path = EMBEDDED_MODEL_DIR, command: str = "harmony bench --sections quality --record"
           ) -> Path:
    """Store the figures beside the weights they measured (without the per-row scores), and their table in the
    model card (MODEL_CARD.md, where there is one: its section between CARD_START and CARD_END, replaced)."""
    folder = Path(folder)
    path = folder / QUALITY_FILE
    keep = {k: v for k, v in result.items() if k not in ("rows", "model", "seconds")}
    path.write_text(json.dumps(keep, indent=1, sort_keys=True) + "\n")
    card = folder / "MODEL_CARD.md"
    if card.exists():
        text = card.read_text()
        section = "\n".join([CARD_START, "## On images unlike its training data", "",
                             f"`{command}` ({time.strftime('%Y-%m-%d')}):", "", *quality_markdown(result), CARD_END])
        if CARD_START in text:
            head, _, rest = text.partition(CARD_START)
            text = head + section + rest.partition(CARD_END)[2]
        else:
            text = text.rstrip("\n") + "\n\n" + section + "\n"
        card.write_text(text)
    return path


def verdicts(q: dict) -> dict[str, list[str]]:
    """The kinds where the model helps (within the bound), barely helps (below the composite, over the bound) and
    hurts (above the composite)."""
    out: dict[str, list[str]] = {"helps": [], "barely helps": [], "hurts": []}
    for kind, b in q["by_kind"].items():
        share = b[MODEL_VARIANT]["fmse"] / b["composite"]["fmse"]
        out["helps" if share <= q["bound"] else "barely helps" if share < 1 else "hurts"].append(kind)
    return out


def quality_markdown(q: dict) -> list[str]:
    """fMSE (PSNR) per kind and overall for each variant, the model's share of the composite's fMSE, the bound."""
    lines = [f"Composites: {q['per_kind']} per perturbation kind and photograph ({q['photos']['package']}'s photographs: "
             f"{', '.join(q['photos']['files'])}; blob masks 2-40% foreground; 256 px, iHarmony4 protocol); model "
             f"`{q['model_id']}`. fMSE (PSNR dB), means over the composites; unseen: a kind the recipe's generator "
             f"never makes.", "",
             "| kind | n | composite | baseline | stage 1 | stage 1 + refiner | model / composite fMSE |",
             "|---|---|---|---|---|---|---|"]
    for name, block in [*q["by_kind"].items(), ("overall", q["overall"])]:
        cells = " | ".join(f"{block[v]['fmse']:.1f} ({block[v]['psnr']:.2f})" for v in VARIANTS)
        share = block[MODEL_VARIANT]["fmse"] / block["composite"]["fmse"]
        ok = "within" if share <= q["bound"] else "over"
        label = f"{name}{' (unseen)' if name in q['unseen_kinds'] else ''}"
        lines.append(f"| {label} | {block['composite']['n']} | {cells} | {share:.2f} ({ok} {q['bound']}) |")
    verdict = ("meets" if q["meets_bound"] else "does not meet")
    v = verdicts(q)
    lines += ["", f"The model {verdict} the bound (stage 1 + refiner fMSE at most {q['bound']}x the composite's on every "
              f"kind and overall). Helps (within the bound): {', '.join(v['helps']) or 'none'}; barely (below the "
              f"composite, over the bound): {', '.join(v['barely helps']) or 'none'}; hurts (worse than leaving the "
              f"composite alone): {', '.join(v['hurts']) or 'none'}.", ""]
    return lines
