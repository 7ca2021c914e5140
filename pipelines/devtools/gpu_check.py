"""The GPU check: the model section over a grid of precisions and optimisations, then training samples/s
(the train section), in one short call.

`bench/gpu-check.sh` runs it on a lent GPU machine, where torch and CUDA are installed, diffusers comes as a
carried wheel, and Ray, pandera, s3fs and pydantic are absent: nothing this module imports needs them (its
flags are derived from a dataclass with the standard library, not from a pydantic model as `harmony`'s are). With
`--dry-run` it runs the same grid logic on the CPU with the tiny architecture, in seconds.

The grid, most important figures first, so that a stop at the time limit still leaves them:
1. base: fp16, SDPA, eager (what `harmony harmonize` runs on CUDA today), every size and batch;
2. bf16, same sizes;
3. channels-last, same sizes;
4. classic attention (no SDPA): every batch of the first size, batch 1 of the others (at 1024 px and
   batch 8 its attention matrices alone would take ~100 GB);
5. torch.compile of the UNet at the largest batch of each size (compile time reported apart): last but
   one, as each compile costs a minute or two on an H100-class GPU, the rest of the grid seconds;
6. compile + channels-last, largest batch of the first size.
The train section (pipelines/devtools/bench/train.py, model-level, no Ray) follows: one optimisation step of
stage 1 (online VAE encodes) and of the refiner (its frozen stage-1 sampler included), bf16 autocast as
`harmony train` runs on a GPU, at every train size and batch; then fp32 at the largest batch of the first
size. It has `--train-share` of the budget to itself: the model section stops planning rows at
(1 - share) x budget, the train section at the budget.
Each finished row is appended to gpu-bench.jsonl, and gpu-bench.json and gpu-bench.md are rewritten
after it. A row whose estimated time exceeds what is left of its section's time budget is recorded as
skipped.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import shlex
import signal
import statistics
import sys
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

from pipelines.devtools.bench.measure import SECTIONS_NOT_YET, _f, flops_per_image, machine, matmul_tflops, peak_tflops
from pipelines.devtools.bench.model import ModelOptions, TunedModels, build_engine, model_row
from pipelines.devtools.flags import add_dataclass_flags, dataclass_of, opt
from pipelines.devtools.bench.train import TRAIN_TASKS, TrainModels, train_flops_per_sample, train_row

# The sections of `harmony bench` this check runs on the bare GPU machine, in this order.
SECTIONS = ("model", "train")

GPU_DEFAULTS = dict(arch="sd15-inpaint", device="cuda", resolution="512,1024", batch_size="1,4,8", dtypes="fp16,bf16",
                    repeats=3, steps=5, budget_s=420.0, compile_backend="inductor", assumed_tflops=50.0,
                    compile_estimate_s=120.0, threads=None, train_resolution="512", train_batch_size="1,4",
                    train_precisions="bf16,fp32", train_share=0.15)
# The same grid logic on the CPU, in seconds: tiny model, one small size, dynamo tracing without inductor's
# code generation (each compile row still traces the UNet: the costliest rows here too).
DRY_DEFAULTS = dict(arch="tiny", device="cpu", resolution="32", batch_size="1,2", dtypes="fp16,bf16",
                    repeats=1, steps=1, budget_s=120.0, compile_backend="eager", assumed_tflops=0.005,
                    compile_estimate_s=20.0, threads=1, train_resolution="32", train_batch_size="1,2",
                    train_precisions="fp32", train_share=0.15)

# A change "pays" when it is at least this much faster than the base row of the same size (and more than
# the run-to-run spread of the rows compared).
PAYS_AT = 1.03


@dataclass(frozen=True)
class Config:
    block: str  # base, bf16, channels-last, compile, compile+channels-last, no-sdpa
    resolution: int
    batch_size: int
    dtype: str  # fp16 | bf16 (| fp32)
    options: ModelOptions

    @property
    def id(self) -> str:
        return f"{self.block}-{self.resolution}px-b{self.batch_size}"


def plan_grid(resolutions, batch_sizes, dtypes=("fp16", "bf16"), compile_mode="default",
              compile_backend="inductor") -> list[Config]:
    """Every configuration the check runs, in the order it runs them (see the module docstring)."""
    base_dt, *other_dts = dtypes
    shapes = [(r, b) for r in resolutions for b in batch_sizes]
    largest = [(r, max(batch_sizes)) for r in resolutions]
    compiled = ModelOptions(compile=True, compile_mode=compile_mode, compile_backend=compile_backend)
    no_sdpa = [(resolutions[0], b) for b in batch_sizes] + [(r, min(batch_sizes)) for r in resolutions[1:]]
    blocks = [("base", base_dt, ModelOptions(), shapes)]
    blocks += [(dt, dt, ModelOptions(), shapes) for dt in other_dts]
    blocks += [
        ("channels-last", base_dt, ModelOptions(channels_last=True), shapes),
        ("no-sdpa", base_dt, ModelOptions(sdpa=False), no_sdpa),
        ("compile", base_dt, compiled, largest),
        ("compile+channels-last", base_dt, replace(compiled, channels_last=True), largest[:1]),
    ]
    return [Config(block, r, b, dt, opts) for block, dt, opts, sizes in blocks for r, b in sizes]


@dataclass(frozen=True)
class TrainConfig:
    task: str  # stage1 | refiner
    resolution: int
    batch_size: int
    precision: str  # bf16 | fp16 | fp32: the autocast of the step (fp32 master weights in every case)

    @property
    def id(self) -> str:
        return f"train-{self.task}-{self.precision}-{self.resolution}px-b{self.batch_size}"


def plan_train(resolutions, batch_sizes, precisions=("bf16", "fp32"), tasks=TRAIN_TASKS) -> list[TrainConfig]:
    """The train section's rows in order: the first precision (what training runs) at every size and batch
    of both tasks, then each other precision at the largest batch of the first size."""
    base, *others = precisions
    rows = [TrainConfig(t, r, b, base) for t in tasks for r in resolutions for b in batch_sizes]
    return rows + [TrainConfig(t, resolutions[0], max(batch_sizes), p) for p in others for t in tasks]


def estimate_seconds(cfg: Config, work_tflop: float, rate_tflops: float, compile_s: float) -> float:
    """How long a row should take: its work (warm-up and timed calls of stage 1 and the refiner) at the
    slowest rate seen so far, plus the compile time when it compiles."""
    return work_tflop / rate_tflops + (compile_s if cfg.options.compile else 0.0)


def row_work_tflop(cfg: Config, arch: str, steps: int, repeats: int) -> float:
    fl = flops_per_image(arch, cfg.resolution, cfg.resolution, steps)
    return (1 + repeats) * cfg.batch_size * (fl["stage1"] + fl["refiner"]) / 1e12


def what_paid(rows: list[dict]) -> list[dict]:
    """Each change against the base row of the same size and batch: speed-ups of stage 1 and the refiner
    (> 1 is faster) and a verdict. Only rows that ran are compared."""
    ok = [r for r in rows if r.get("status") == "ok" and r.get("section", "model") == "model"]
    base = {(r["resolution"], r["batch_size"]): r for r in ok if r["block"] == "base"}
    out = []
    for block in dict.fromkeys(r["block"] for r in ok if r["block"] != "base"):
        pairs = [(r, base[(r["resolution"], r["batch_size"])]) for r in ok
                 if r["block"] == block and (r["resolution"], r["batch_size"]) in base]
        if not pairs:
            continue
        entry: dict[str, Any] = {"change": block, "compared": [f"{r['resolution']}px b{r['batch_size']}" for r, _ in pairs]}
        verdicts = []
        for part, label in (("stage1", "stage 1"), ("refiner", "the refiner")):
            key = f"{part}_images_per_s"
            ups = [r[key] / b[key] for r, b in pairs if r.get(key) and b.get(key)]
            if not ups:
                continue
            # the noise of a comparison: the larger run-to-run spread of its two rows
            spread = statistics.median([max(r.get(f"{part}_spread") or 0.0, b.get(f"{part}_spread") or 0.0) for r, b in pairs])
            med = statistics.median(ups)
            entry[f"{part}_speedup"] = med
            entry[f"{part}_speedup_range"] = (min(ups), max(ups))
            threshold = max(PAYS_AT, 1 + spread)
            verdicts.append((label, "pays" if med >= threshold else "slower" if med <= 1 / threshold else "same"))
        paying = [label for label, v in verdicts if v == "pays"]
        if paying:
            entry["verdict"] = "pays for " + " and ".join(paying)
        elif verdicts and all(v == "slower" for _, v in verdicts):
            entry["verdict"] = "slower"
        else:
            entry["verdict"] = "no clear gain"
        out.append(entry)
    return out


def _tf(v) -> str:
    """TFLOP/s: one decimal on a GPU, three on a CPU (where rates are below 1)."""
    return "-" if v is None else f"{v:.1f}" if v >= 1 else f"{v:.3f}"


def _pct(v) -> str:
    return "-" if v is None else f"{v:.1%}"


def to_markdown(doc: dict) -> str:
    m, peak = doc["machine"], doc.get("peak", {})
    v = m.get("versions", {})
    rows = [r for r in doc["rows"] if r.get("section", "model") == "model"]
    train = [r for r in doc["rows"] if r.get("section") == "train"]
    done = sum(r.get("status") == "ok" for r in doc["rows"])
    state = "complete" if doc.get("complete") else f"incomplete ({doc.get('stopped') or 'running'})"
    lines = [f"### GPU check: {doc['arch']} on {m.get('gpu', m.get('processor'))} ({m['device']})", "",
             f"Command: `{doc['command']}` ({doc['date']}); torch {v.get('torch')} (CUDA {m.get('cuda') or '-'}), "
             f"diffusers {v.get('diffusers')}, Python {v.get('python')}.", "",
             f"{doc['steps']} denoising steps; per row, one warm-up call then the median of {doc['repeats']} timed calls. "
             f"Utilisation: achieved TFLOP/s (model FLOPs from torch's FLOP counter) over {_tf(peak.get('tflops'))} "
             f"TFLOP/s ({peak.get('note', '')}); 'vs matmul': over a measured {_tf(peak.get('measured_tflops'))} "
             f"TFLOP/s ({peak.get('measured_note', '')}).", "",
             f"Status: {state}; {done} of {len(doc['plan'])} rows measured in {_f(doc.get('elapsed_s'), 0)} s "
             f"(budget {_f(doc.get('budget_s'), 0)} s{_budgets(doc)}).", ""]
    if "model" not in doc.get("sections", ["model"]):
        return "\n".join(lines + train_lines(doc, train)) + "\n"
    lines += [
             "| row | dtype | options | stage 1 img/s | s/img | TFLOP/s | util | util vs matmul | refiner img/s | "
             "refiner s/img | refiner TFLOP/s | refiner util | first call s | compile s | peak GiB | status |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r.get("status") != "ok":
            lines.append(f"| {r['id']} | {r['dtype']} | {r['options']} |" + " - |" * 12 + f" {r['status']}: {r.get('reason', '')} |")
            continue
        lines.append(
            f"| {r['id']} | {r['dtype']} | {r['options']} | {_f(r['stage1_images_per_s'])} | {_f(r['stage1_s_per_image'])} | "
            f"{_tf(r['stage1_tflops'])} | {_pct(r.get('stage1_utilisation'))} | {_pct(r.get('stage1_utilisation_vs_matmul'))} | "
            f"{_f(r.get('refiner_images_per_s'))} | {_f(r.get('refiner_s_per_image'))} | {_tf(r.get('refiner_tflops'))} | "
            f"{_pct(r.get('refiner_utilisation'))} | {_f(r.get('stage1_first_call_s'), 1)} | {_f(r.get('compile_s'), 1)} | "
            f"{_f(r.get('peak_memory_gib'), 1)} | ok |")
    paid = what_paid(rows)
    if paid:
        lines += ["", "What paid (img/s against the base row of the same size and batch; > 1 is faster)", "",
                  "| change | rows compared | stage 1 speed-up (median, range) | refiner speed-up (median, range) | verdict |",
                  "|---|---|---|---|---|"]
        for p in paid:
            cells = []
            for part in ("stage1", "refiner"):
                if f"{part}_speedup" in p:
                    lo, hi = p[f"{part}_speedup_range"]
                    cells.append(f"{p[f'{part}_speedup']:.3f} ({lo:.3f}–{hi:.3f})")
                else:
                    cells.append("-")
            lines.append(f"| {p['change']} | {', '.join(p['compared'])} | {cells[0]} | {cells[1]} | {p['verdict']} |")
    if "train" in doc.get("sections", []):
        lines += [""] + train_lines(doc, train)
    return "\n".join(lines) + "\n"


def _budgets(doc: dict) -> str:
    b = doc.get("section_budgets_s") or {}
    return "".join(f"; {name} until {_f(v, 0)} s" for name, v in b.items()) if len(b) > 1 else ""


def train_lines(doc: dict, rows: list[dict]) -> list[str]:
    """The train section's table: one optimisation step per row (see pipelines/devtools/bench/train.py)."""
    peak = doc.get("peak", {})
    lines = ["#### Training: one worker, one optimisation step (loss, backward, clip, AdamW)", "",
             f"Per row, one warm-up step then the median of {doc['repeats']} timed steps; fp32 master weights, the "
             f"precision is the step's autocast (bf16: what `harmony train` runs on a GPU; the CPU runs fp32). "
             f"FLOPs per sample: the trained model's forward and backward counted by torch's FLOP counter on meta "
             f"tensors, plus the frozen parts' forward (stage 1: VAE encodes of real and composite; refiner: the "
             f"frozen {doc['steps']}-step stage-1 sampler); the optimiser step is not counted. Utilisation is against "
             f"the same {_tf(peak.get('tflops'))} TFLOP/s as above.", "",
             "| row | task | precision | side | batch | samples/s per worker | s/step | GFLOP/sample | TFLOP/s | util | "
             "util vs matmul | first step s | peak GiB | status |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        head = f"| {r['id']} | {r['task']} | {r['precision']} | {r['resolution']} | {r['batch_size']} |"
        if r.get("status") != "ok":
            lines.append(head + " - |" * 8 + f" {r['status']}: {r.get('reason', '')} |")
            continue
        lines.append(f"{head} {_f(r['samples_per_s_per_worker'])} | {_f(r['seconds_per_step'])} | {_f(r['gflop_per_sample'], 1 if r['gflop_per_sample'] >= 10 else 3)} | "
                     f"{_tf(r['tflops'])} | {_pct(r.get('utilisation'))} | {_pct(r.get('utilisation_vs_matmul'))} | "
                     f"{_f(r['first_step_s'], 1)} | {_f(r.get('peak_memory_gib'), 1)} | ok |")
    if not rows:
        lines.append("| (no row yet) |" + " - |" * 13)
    return lines


class Recorder:
    """Writes the results after every row: gpu-bench.jsonl (one line per row), gpu-bench.json (the whole
    document, replaced atomically) and gpu-bench.md, so a run stopped at its time limit keeps its figures."""

    def __init__(self, out: Path, doc: dict, start: float):
        self.out, self.doc, self.start = out, doc, start
        out.mkdir(parents=True, exist_ok=True)
        doc.setdefault("rows", [])
        (out / "gpu-bench.jsonl").write_text("")
        self.flush()

    def running(self, cfg: Config | TrainConfig) -> None:
        self.doc["running"] = cfg.id
        self.flush()

    def add(self, row: dict) -> None:
        self.doc.pop("running", None)
        self.doc["rows"].append(row)
        with open(self.out / "gpu-bench.jsonl", "a") as f:
            f.write(json.dumps(row, default=str) + "\n")
        self.flush()

    def flush(self) -> None:
        self.doc["elapsed_s"] = time.monotonic() - self.start
        tmp = self.out / "gpu-bench.json.tmp"
        tmp.write_text(json.dumps(self.doc, indent=2, default=str))
        tmp.replace(self.out / "gpu-bench.json")
        (self.out / "gpu-bench.md").write_text(to_markdown(self.doc))


def _first_line(exc: BaseException) -> str:
    text = str(exc)
    return text.splitlines()[0][:200] if text else ""


def _header(cfg: Config) -> dict:
    return {"id": cfg.id, "section": "model", "block": cfg.block, "resolution": cfg.resolution, "batch_size": cfg.batch_size,
            "dtype": {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}[cfg.dtype], "options": cfg.options.label()}


def device_info(a: argparse.Namespace, rec: Recorder):
    """The device, its peak (the bf16 dense datasheet peak on a GPU, a measured matmul on a CPU) and a
    measured bf16 matmul, recorded once for every section; returns (device, peak, note, measured)."""
    import torch

    from harmony_ops.loader import pick_device

    if a.threads:
        torch.set_num_threads(a.threads)
    dev = pick_device(a.device)
    cuda = dev.type == "cuda"
    peak, note = peak_tflops(dev, torch.bfloat16 if cuda else torch.float32)
    if cuda:
        n = 8192
        measured, mnote = matmul_tflops(dev, torch.bfloat16, n, repeats=10), f"{n}x{n}x{n} bf16 matmul, random data"
    else:
        measured, mnote = peak, note
    rec.doc["machine"] = machine(dev)
    rec.doc["peak"] = {"tflops": peak, "note": note, "measured_tflops": measured, "measured_note": mnote}
    rec.flush()
    print(f"gpu-check: {a.arch} on {rec.doc['machine'].get('gpu', dev)}; peak {_f(peak, 1)} TFLOP/s ({note}); "
          f"measured {_f(measured, 1)} TFLOP/s", file=sys.stderr)
    return dev, peak, note, measured


def _free(cuda: bool) -> None:
    import torch

    gc.collect()
    if cuda:
        torch.cuda.empty_cache()


def run_model_section(a: argparse.Namespace, rec: Recorder, plan: list[Config], start: float, info,
                      budget_s: float) -> None:
    """The model grid; a row that would end past `budget_s` (seconds from `start`) is skipped."""
    import torch

    from harmony_ops.loader import torch_dtypes

    dev, peak, note, measured = info
    engine = build_engine(a.arch, str(dev), plan[0].dtype, a.steps)
    cuda = dev.type == "cuda"
    rec.doc["flops_per_image"] = {str(r): flops_per_image(a.arch, r, r, a.steps) for r in sorted({c.resolution for c in plan})}
    rec.flush()

    tuned = TunedModels(engine)
    rates: dict[tuple[int, int], list[float]] = {}  # achieved TFLOP/s of stage 1 + refiner, per size and batch
    compiles: list[float] = []  # compile seconds, per compiled row that ran
    for cfg in plan:
        left = budget_s - (time.monotonic() - start)
        # The slowest rate seen at this size and batch, else the slowest seen at all, else the assumed one.
        seen = rates.get((cfg.resolution, cfg.batch_size)) or [x for v in rates.values() for x in v]
        rate = min(seen) if seen else a.assumed_tflops
        compile_est = 1.25 * max(compiles) if compiles else a.compile_estimate_s
        need = estimate_seconds(cfg, row_work_tflop(cfg, a.arch, a.steps, a.repeats), rate, compile_est)
        if need > left:
            rec.add({**_header(cfg), "status": "skipped", "reason": f"time budget: needs ~{need:.0f} s, {max(left, 0):.0f} s left"})
            print(f"  {cfg.id}: skipped (needs ~{need:.0f} s, {max(left, 0):.0f} s left)", file=sys.stderr)
            continue
        rec.running(cfg)
        try:
            tuned.apply(cfg.options, torch_dtypes()[cfg.dtype])
            row = model_row(engine, a.arch, cfg.resolution, cfg.batch_size, a.repeats, a.steps, peak, cfg.options, note)
        except torch.cuda.OutOfMemoryError as exc:
            row = {**_header(cfg), "status": "oom", "reason": _first_line(exc)}
        except Exception as exc:  # noqa: BLE001 - one configuration failing (a compile error, say) must not lose the rest
            row = {**_header(cfg), "status": "error", "reason": f"{type(exc).__name__}: {_first_line(exc)}"}
        else:
            row = {**row, **_header(cfg), "status": "ok"}
            if measured:
                row["stage1_utilisation_vs_matmul"] = row["stage1_tflops"] / measured
            seconds = row["stage1_s_per_image"] + row.get("refiner_s_per_image", 0.0)
            rates.setdefault((cfg.resolution, cfg.batch_size), []).append(
                (row["stage1_gflop_per_image"] + row.get("refiner_gflop_per_image", 0.0)) / 1e3 / seconds)
            if row.get("compile_s") is not None:
                compiles.append(row["compile_s"])
        if row["status"] != "ok":
            _free(cuda)
        rec.add(row)
        print(f"  {cfg.id} ({cfg.dtype}, {cfg.options.label()}): " + (
            f"stage 1 {row['stage1_images_per_s']:.3f} img/s {_tf(row['stage1_tflops'])} TFLOP/s, refiner "
            f"{row.get('refiner_images_per_s', float('nan')):.3f} img/s" + (f", compile {row['compile_s']:.1f} s" if row.get("compile_s") is not None else "")
            if row["status"] == "ok" else f"{row['status']}: {row['reason']}"), file=sys.stderr)
    tuned.reset()
    del tuned, engine
    _free(cuda)


def _train_header(cfg: TrainConfig) -> dict:
    return {"id": cfg.id, "section": "train", "task": cfg.task, "resolution": cfg.resolution, "batch_size": cfg.batch_size,
            "precision": cfg.precision}


def run_train_section(a: argparse.Namespace, rec: Recorder, plan: list[TrainConfig], start: float, info,
                      budget_s: float) -> None:
    """Training steps (pipelines/devtools/bench/train.py) row by row, each skipped when its estimated time
    (warm-up and timed steps at the slowest rate seen for its precision, else the assumed rate) exceeds
    what is left until `budget_s`."""
    import torch

    dev, peak, _, measured = info
    cuda = dev.type == "cuda"
    left = lambda: budget_s - (time.monotonic() - start)  # noqa: E731
    models = None
    rates: dict[str, list[float]] = {}  # achieved TFLOP/s per precision
    for cfg in plan:
        # FLOPs counted on meta tensors (seconds at SD-1.5 size, once per size), unless no time is left at all.
        fl = train_flops_per_sample(a.arch, cfg.resolution, a.steps)[cfg.task] if left() > 0 else None
        rate = min(rates.get(cfg.precision) or [a.assumed_tflops])
        need = float("inf") if fl is None else (1 + a.repeats) * cfg.batch_size * fl / 1e12 / rate
        if need > left():
            reason = "time budget: none left" if fl is None else f"time budget: needs ~{need:.0f} s, {max(left(), 0):.0f} s left"
            rec.add({**_train_header(cfg), "status": "skipped", "reason": reason})
            print(f"  {cfg.id}: skipped ({reason})", file=sys.stderr)
            continue
        rec.running(cfg)
        try:
            if models is None:
                models = TrainModels(a.arch, str(dev))
            r = train_row(models, cfg.task, cfg.resolution, cfg.batch_size, a.repeats, a.steps, cfg.precision)
        except torch.cuda.OutOfMemoryError as exc:
            row = {**_train_header(cfg), "status": "oom", "reason": _first_line(exc)}
        except Exception as exc:  # noqa: BLE001 - one row failing must not lose the rest
            row = {**_train_header(cfg), "status": "error", "reason": f"{type(exc).__name__}: {_first_line(exc)}"}
        else:
            tflops = fl * cfg.batch_size / r["seconds_per_step"] / 1e12
            row = {**r, **_train_header(cfg), "precision": r["precision"], "status": "ok", "gflop_per_sample": fl / 1e9,
                   "tflops": tflops, "s_per_sample": r["seconds_per_step"] / cfg.batch_size,
                   "utilisation": tflops / peak if peak else None,
                   "utilisation_vs_matmul": tflops / measured if measured else None}
            rates.setdefault(cfg.precision, []).append(tflops)
        if row["status"] != "ok":
            _free(cuda)
        rec.add(row)
        print(f"  {cfg.id}: " + (f"{row['samples_per_s_per_worker']:.3f} samples/s, {row['seconds_per_step']:.3f} s/step, "
                                 f"{_tf(row['tflops'])} TFLOP/s" if row["status"] == "ok" else f"{row['status']}: {row['reason']}"),
              file=sys.stderr)
    del models
    _free(cuda)


@dataclass
class GpuCheckOptions:
    """The check's flags, one per field (`--budget-s` for budget_s); unset fields take GPU_DEFAULTS, or
    DRY_DEFAULTS with --dry-run."""

    dry_run: bool = opt("the same grid on the CPU with the tiny architecture, in seconds", False)
    arch: str | None = opt("architecture (default sd15-inpaint; tiny with --dry-run)", choices=("tiny", "sd15-inpaint"))
    device: str | None = opt("cuda (default), cpu with --dry-run")
    resolution: str | None = opt("comma-separated square sizes (default 512,1024)")
    batch_size: str | None = opt("comma-separated batch sizes (default 1,4,8)")
    dtypes: str | None = opt("comma-separated, the first is the base of every comparison (default fp16,bf16)")
    repeats: int | None = opt("timed calls per row after the warm-up (default 3)")
    steps: int | None = opt("denoising steps (default 5)")
    budget_s: float | None = opt("seconds for the whole check from its start (default 420)")
    compile_mode: str = opt("torch.compile mode", "default")
    compile_backend: str | None = opt("torch.compile backend (inductor; eager with --dry-run)")
    assumed_tflops: float | None = opt("rate assumed for the time estimate before any row ran")
    compile_estimate_s: float | None = opt("compile time assumed before any compiled row ran")
    threads: int | None = opt("torch CPU threads (default: torch's; 1 with --dry-run, which checks logic, not speed)")
    train_resolution: str | None = opt("train section: comma-separated square sizes (default 512; 32 with --dry-run)")
    train_batch_size: str | None = opt("train section: comma-separated batch sizes (default 1,4; 1,2 with --dry-run)")
    train_precisions: str | None = opt("train section: comma-separated autocast precisions, the first at every size "
                                        "and batch (default bf16,fp32; fp32 with --dry-run: the CPU runs fp32)")
    train_share: float | None = opt("share of the budget kept for the train section when both run (default 0.15)")
    sections: str = opt(f"comma-separated, from {', '.join(SECTIONS)} (default: all)", ",".join(SECTIONS))
    out: str | None = opt("output folder (default: $OUT, else bench-results/gpu)")

    def check(self) -> str | None:
        """Fill the defaults; the first thing wrong, or None."""
        for key, value in (DRY_DEFAULTS if self.dry_run else GPU_DEFAULTS).items():
            if getattr(self, key) is None:
                setattr(self, key, value)
        self.out = self.out or os.environ.get("OUT") or "bench-results/gpu"
        self.sections = tuple(s for s in self.sections.split(",") if s)
        if not 0 <= self.train_share <= 1:
            return f"--train-share must be between 0 and 1, got {self.train_share}"
        for s in self.train_precisions.split(","):
            if s not in ("bf16", "fp16", "fp32"):
                return f"train precision {s!r}: choose from bf16, fp16, fp32"
        for s in self.sections:
            if s in SECTIONS_NOT_YET:
                return f"section {s}: {SECTIONS_NOT_YET[s]}"
            if s not in SECTIONS:
                return f"unknown section {s!r}; choose from {', '.join(SECTIONS)}"
        return None


def parse_args(argv: list[str] | None) -> GpuCheckOptions:
    p = argparse.ArgumentParser(prog="python -m pipelines.devtools.gpu_check", description=__doc__.split("\n\n")[0])
    add_dataclass_flags(p, GpuCheckOptions)
    a = dataclass_of(GpuCheckOptions, p.parse_args(argv))
    if (problem := a.check()) is not None:
        p.error(problem)
    return a


def main(argv: list[str] | None = None) -> int:
    start = time.monotonic()
    a = parse_args(argv)
    ints = lambda v: tuple(int(x) for x in v.split(","))  # noqa: E731
    plan = plan_grid(ints(a.resolution), ints(a.batch_size), tuple(a.dtypes.split(",")), a.compile_mode,
                     a.compile_backend) if "model" in a.sections else []
    train_plan = plan_train(ints(a.train_resolution), ints(a.train_batch_size),
                            tuple(a.train_precisions.split(","))) if "train" in a.sections else []
    # Each section plans rows until its own end (seconds from the start); the train section has the last share.
    model_until = a.budget_s * (1 - a.train_share) if train_plan else a.budget_s
    budgets = {**({"model": model_until} if plan else {}), **({"train": a.budget_s} if train_plan else {})}
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # in-place dtype casts of random-weight models warn once per cast
    command = "python -m pipelines.devtools.gpu_check " + " ".join(shlex.quote(x) for x in (sys.argv[1:] if argv is None else argv))
    doc: dict[str, Any] = {
        "command": command.strip(), "date": time.strftime("%Y-%m-%d %H:%M:%S"), "arch": a.arch, "steps": a.steps,
        "repeats": a.repeats, "budget_s": a.budget_s, "complete": False, "machine": {"device": a.device},
        "sections": list(a.sections), "section_budgets_s": budgets,
        "plan": [{"id": c.id, "section": "model", "dtype": c.dtype, **asdict(c.options)} for c in plan]
        + [{"id": c.id, "section": "train", **asdict(c)} for c in train_plan],
    }
    rec = Recorder(Path(a.out), doc, start)

    def stop(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)  # `timeout` stops us: record that before going
    try:
        info = device_info(a, rec)
        if plan:
            run_model_section(a, rec, plan, start, info, budgets["model"])
        if train_plan:
            run_train_section(a, rec, train_plan, start, info, budgets["train"])
        doc["complete"] = True
    except BaseException as exc:
        doc["stopped"] = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
        raise
    finally:
        rec.flush()
        print(to_markdown(doc))
    return 0


if __name__ == "__main__":
    sys.exit(main())
