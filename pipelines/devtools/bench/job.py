"""`harmony bench --sections job`: the whole harmonize job against the plainest loop that does its I/O.

Rows are small composites with ground truth (`make_images`). The loop is one Python process doing
only what any harmonizer must: read and decode composite and mask, shift the foreground's colour,
paste, encode a PNG (Pillow's default settings, the plain choice; a second run at compress_level=1,
the job's own PNG level, is reported beside it) and write. The job is `harmony harmonize --engine
baseline` over the same manifest: validation, leases, Ray start, decode guards, the colour-statistics
transfer, every metric against the ground truth, journal, consolidation, summary and report. Both
run as fresh subprocesses, so start-up (interpreter, imports, Ray) is inside both wall times.
"""

from __future__ import annotations

import csv
import io
import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

# A fixed shift of the foreground: the loop's stand-in for harmonization (no model, no statistics).
SHIFT = (10, -5, 3)


def loop(manifest: Path, out: Path, compress_level: int | None = None) -> int:
    """The single-process loop over `manifest`'s rows (paths relative to it); returns rows written."""
    from PIL import Image

    root = manifest.parent
    out.mkdir(parents=True, exist_ok=True)
    shift = np.array(SHIFT, np.int16)
    save = {} if compress_level is None else {"compress_level": compress_level}
    n = 0
    with open(manifest, newline="") as f:
        for r in csv.DictReader(f):
            comp = np.asarray(Image.open(io.BytesIO((root / r["composite"]).read_bytes())).convert("RGB"))
            mask = np.asarray(Image.open(io.BytesIO((root / r["mask"]).read_bytes())).convert("L")) >= 128
            shifted = np.clip(comp.astype(np.int16) + shift, 0, 255).astype(np.uint8)
            res = comp.copy()
            res[mask] = shifted[mask]
            buf = io.BytesIO()
            Image.fromarray(res).save(buf, format="PNG", **save)
            (out / f"{r['id']}.png").write_bytes(buf.getvalue())
            n += 1
    return n


def _timed_subprocess(argv: list[str], log: Path) -> float:
    t = time.perf_counter()
    with open(log, "w") as f:
        proc = subprocess.run(argv, stdout=f, stderr=subprocess.STDOUT, env=os.environ.copy())
    wall = time.perf_counter() - t
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(argv[:3])} ... exited {proc.returncode}; its output: {log}")
    return wall


def bench_job(rows: int, size: int, work: Path, echo=print) -> dict[str, Any]:
    from pipelines.devtools.bench.pipeline import make_images

    work.mkdir(parents=True, exist_ok=True)
    manifest = make_images(work / "data", rows, size, with_real=True)
    me = [sys.executable, "-c", "import sys; from pathlib import Path; from pipelines.devtools.bench.job import loop; "
          "loop(Path(sys.argv[1]), Path(sys.argv[2]), None if sys.argv[3] == 'default' else int(sys.argv[3]))"]
    result: dict[str, Any] = {"rows": rows, "size": size}
    for label, level in (("default", "default"), ("level1", "1")):
        wall = _timed_subprocess(me + [str(manifest), str(work / f"loop-{label}"), level], work / f"loop-{label}.log")
        result[f"loop_{label}_seconds"] = wall
        echo(f"  job: single-process loop (PNG {label}) {rows} rows in {wall:.1f} s ({rows / wall:.1f} rows/s)")
    out = work / "job-out"
    harmony = [sys.executable, "-m", "pipelines.cli", "harmonize", "--engine", "baseline", "--manifest", str(manifest),
               "--output", str(out), "--image-format", "png", "--no-resume"]
    wall = _timed_subprocess(harmony, work / "job.log")
    summary = json.loads((out / "summary.json").read_text())
    result.update({
        "job_seconds": wall, "job_ok": summary["counts"]["ok"],
        "job_mean_seconds_per_stage": summary["throughput"]["mean_seconds_per_stage"],
        "job_vs_loop_default": result["loop_default_seconds"] / wall,
        "job_vs_loop_level1": result["loop_level1_seconds"] / wall,
    })
    echo(f"  job: harmony harmonize --engine baseline {rows} rows in {wall:.1f} s ({rows / wall:.1f} rows/s), "
         f"{result['job_vs_loop_default']:.2f}x the loop's speed")
    return result


def job_markdown(r: dict) -> list[str]:
    stages = ", ".join(f"{k} {v:.3f}" for k, v in r["job_mean_seconds_per_stage"].items() if v)
    return [f"Job throughput ({r['rows']} rows of {r['size']}x{r['size']} with ground truth; wall time, start-up included)", "",
            "| single-process loop s (PNG default) | loop s (PNG level 1) | `harmony harmonize --engine baseline` s | rows ok | "
            "job speed / loop speed (default) | (level 1) | job's mean s per row and stage |",
            "|---|---|---|---|---|---|---|",
            f"| {r['loop_default_seconds']:.1f} | {r['loop_level1_seconds']:.1f} | {r['job_seconds']:.1f} | {r['job_ok']} | "
            f"{r['job_vs_loop_default']:.2f}x | {r['job_vs_loop_level1']:.2f}x | {stages} |", ""]
