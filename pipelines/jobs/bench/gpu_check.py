"""The GPU check: the model section over a grid of precisions and optimisations, in one short call.

`bench/gpu-check.sh` runs it on a lent GPU machine, where torch and CUDA are installed, diffusers comes as a
carried wheel, and Ray, pandera, s3fs and pydantic are absent: nothing this module imports needs them. With
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
Each finished row is appended to gpu-bench.jsonl, and gpu-bench.json and gpu-bench.md are rewritten
after it. A row whose estimated time exceeds what is left of the time budget is recorded as skipped.
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

from pipelines.jobs.bench.bench import (
    _f,
    SECTIONS_NOT_YET,
    ModelOptions,
    TunedModels,
    build_engine,
    flops_per_image,
    machine,
    matmul_tflops,
    model_row,
    peak_tflops,
)

# The sections of `harmony bench` this check runs on the bare GPU machine. "train" (training samples/s,
# `harmony bench --sections train`, pipelines/jobs/bench/train.py) is not wired in here yet.
SECTIONS = ("model",)

GPU_DEFAULTS = dict(arch="sd15-inpaint", device="cuda", resolution="512,1024", batch_size="1,4,8", dtypes="fp16,bf16",
                    repeats=3, steps=5, budget_s=420.0, compile_backend="inductor", assumed_tflops=50.0,
                    compile_estimate_s=120.0, threads=None)
# The same grid logic on the CPU, in seconds: tiny model, one small size, dynamo tracing without inductor's
# code generation (each compile row still traces the UNet: the costliest rows here too).
DRY_DEFAULTS = dict(arch="tiny", device="cpu", resolution="32", batch_size="1,2", dtypes="fp16,bf16",
                    repeats=1, steps=1, budget_s=120.0, compile_backend="eager", assumed_tflops=0.005,
                    compile_estimate_s=20.0, threads=1)

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
    ok = [r for r in rows if r.get("status") == "ok"]
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
    rows = doc["rows"]
    done = sum(r.get("status") == "ok" for r in rows)
    state = "complete" if doc.get("complete") else f"incomplete ({doc.get('stopped') or 'running'})"
    lines = [f"### GPU check: {doc['arch']} on {m.get('gpu', m.get('processor'))} ({m['device']})", "",
             f"Command: `{doc['command']}` ({doc['date']}); torch {v.get('torch')} (CUDA {m.get('cuda') or '-'}), "
             f"diffusers {v.get('diffusers')}, Python {v.get('python')}.", "",
             f"{doc['steps']} denoising steps; per row, one warm-up call then the median of {doc['repeats']} timed calls. "
             f"Utilisation: achieved TFLOP/s (model FLOPs from torch's FLOP counter) over {_tf(peak.get('tflops'))} "
             f"TFLOP/s ({peak.get('note', '')}); 'vs matmul': over a measured {_tf(peak.get('measured_tflops'))} "
             f"TFLOP/s ({peak.get('measured_note', '')}).", "",
             f"Status: {state}; {done} of {len(doc['plan'])} rows measured in {_f(doc.get('elapsed_s'), 0)} s "
             f"(budget {_f(doc.get('budget_s'), 0)} s).", "",
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
    return "\n".join(lines) + "\n"


class Recorder:
    """Writes the results after every row: gpu-bench.jsonl (one line per row), gpu-bench.json (the whole
    document, replaced atomically) and gpu-bench.md, so a run stopped at its time limit keeps its figures."""

    def __init__(self, out: Path, doc: dict, start: float):
        self.out, self.doc, self.start = out, doc, start
        out.mkdir(parents=True, exist_ok=True)
        doc.setdefault("rows", [])
        (out / "gpu-bench.jsonl").write_text("")
        self.flush()

    def running(self, cfg: Config) -> None:
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
    return {"id": cfg.id, "block": cfg.block, "resolution": cfg.resolution, "batch_size": cfg.batch_size,
            "dtype": {"fp16": "float16", "bf16": "bfloat16", "fp32": "float32"}[cfg.dtype], "options": cfg.options.label()}


def run_model_section(a: argparse.Namespace, rec: Recorder, plan: list[Config], start: float) -> None:
    import torch

    from harmony_ops.loader import DTYPES

    if a.threads:
        torch.set_num_threads(a.threads)
    engine = build_engine(a.arch, a.device, plan[0].dtype, a.steps)
    dev = engine.device
    cuda = dev.type == "cuda"
    # Utilisation against the bf16 dense peak on a GPU (datasheet), a measured matmul on a CPU.
    peak, note = peak_tflops(dev, torch.bfloat16 if cuda else torch.float32)
    if cuda:
        n = 8192
        measured, mnote = matmul_tflops(dev, torch.bfloat16, n, repeats=10), f"{n}x{n}x{n} bf16 matmul, random data"
    else:
        measured, mnote = peak, note
    rec.doc["machine"] = machine(dev)
    rec.doc["peak"] = {"tflops": peak, "note": note, "measured_tflops": measured, "measured_note": mnote}
    rec.doc["flops_per_image"] = {str(r): flops_per_image(a.arch, r, r, a.steps) for r in sorted({c.resolution for c in plan})}
    rec.flush()
    print(f"gpu-check: {a.arch} on {rec.doc['machine'].get('gpu', dev)}; peak {_f(peak, 1)} TFLOP/s ({note}); "
          f"measured {_f(measured, 1)} TFLOP/s", file=sys.stderr)

    tuned = TunedModels(engine)
    rates: dict[tuple[int, int], list[float]] = {}  # achieved TFLOP/s of stage 1 + refiner, per size and batch
    compiles: list[float] = []  # compile seconds, per compiled row that ran
    for cfg in plan:
        left = a.budget_s - (time.monotonic() - start)
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
            tuned.apply(cfg.options, DTYPES[cfg.dtype])
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
            gc.collect()
            if cuda:
                torch.cuda.empty_cache()
        rec.add(row)
        print(f"  {cfg.id} ({cfg.dtype}, {cfg.options.label()}): " + (
            f"stage 1 {row['stage1_images_per_s']:.3f} img/s {_tf(row['stage1_tflops'])} TFLOP/s, refiner "
            f"{row.get('refiner_images_per_s', float('nan')):.3f} img/s" + (f", compile {row['compile_s']:.1f} s" if row.get("compile_s") is not None else "")
            if row["status"] == "ok" else f"{row['status']}: {row['reason']}"), file=sys.stderr)
    tuned.reset()


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m pipelines.jobs.bench.gpu_check", description=__doc__.split("\n\n")[0])
    p.add_argument("--dry-run", action="store_true", help="the same grid on the CPU with the tiny architecture, in seconds")
    p.add_argument("--arch", choices=["tiny", "sd15-inpaint"])
    p.add_argument("--device", help="cuda (default), cpu with --dry-run")
    p.add_argument("--resolution", help="comma-separated square sizes (default 512,1024)")
    p.add_argument("--batch-size", help="comma-separated batch sizes (default 1,4,8)")
    p.add_argument("--dtypes", help="comma-separated, the first is the base of every comparison (default fp16,bf16)")
    p.add_argument("--repeats", type=int, help="timed calls per row after the warm-up (default 3)")
    p.add_argument("--steps", type=int, help="denoising steps (default 5)")
    p.add_argument("--budget-s", type=float, help="seconds for the whole check from its start (default 420)")
    p.add_argument("--compile-mode", default="default", help="torch.compile mode (default: default)")
    p.add_argument("--compile-backend", help="torch.compile backend (inductor; eager with --dry-run)")
    p.add_argument("--assumed-tflops", type=float, help="rate assumed for the time estimate before any row ran")
    p.add_argument("--compile-estimate-s", type=float, help="compile time assumed before any compiled row ran")
    p.add_argument("--threads", type=int, help="torch CPU threads (default: torch's; 1 with --dry-run, which checks logic, not speed)")
    p.add_argument("--sections", default="model", help=f"comma-separated: {', '.join(SECTIONS)} ({', '.join(SECTIONS_NOT_YET)}: not yet)")
    p.add_argument("--out", help="output folder (default: $OUT, else bench-results/gpu)")
    a = p.parse_args(argv)
    for key, value in (DRY_DEFAULTS if a.dry_run else GPU_DEFAULTS).items():
        if getattr(a, key) is None:
            setattr(a, key, value)
    a.out = a.out or os.environ.get("OUT") or "bench-results/gpu"
    a.sections = tuple(s for s in a.sections.split(",") if s)
    for s in a.sections:
        if s in SECTIONS_NOT_YET:
            p.error(f"section {s}: {SECTIONS_NOT_YET[s]}")
        if s not in SECTIONS:
            p.error(f"unknown section {s!r}; choose from {', '.join(SECTIONS)}")
    return a


def main(argv: list[str] | None = None) -> int:
    start = time.monotonic()
    a = parse_args(argv)
    ints = lambda v: tuple(int(x) for x in v.split(","))  # noqa: E731
    plan = plan_grid(ints(a.resolution), ints(a.batch_size), tuple(a.dtypes.split(",")), a.compile_mode, a.compile_backend)
    from diffusers.utils import logging as diffusers_logging

    diffusers_logging.set_verbosity_error()  # in-place dtype casts of random-weight models warn once per cast
    command = "python -m pipelines.jobs.bench.gpu_check " + " ".join(shlex.quote(x) for x in (sys.argv[1:] if argv is None else argv))
    doc: dict[str, Any] = {
        "command": command.strip(), "date": time.strftime("%Y-%m-%d %H:%M:%S"), "arch": a.arch, "steps": a.steps,
        "repeats": a.repeats, "budget_s": a.budget_s, "complete": False, "machine": {"device": a.device},
        "sections": list(a.sections), "plan": [{"id": c.id, "dtype": c.dtype, **asdict(c.options)} for c in plan],
    }
    rec = Recorder(Path(a.out), doc, start)

    def stop(signum, _frame):
        raise SystemExit(128 + signum)

    signal.signal(signal.SIGTERM, stop)  # `timeout` stops us: record that before going
    try:
        if "model" in a.sections:
            run_model_section(a, rec, plan, start)
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
