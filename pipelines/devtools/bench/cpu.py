"""`harmony bench --sections cpu`: CPU seconds per image outside the model, per step.

The harmonize job's CPU work for one row, with the job's own functions, in the order the stages
run it: the decode stage (read the three files, decode them with the input guards, plan the
region, crop and resize it for the engine, pack it for the hand-off) and the finish stage
(decode again, paste the harmonized region back, encode, write, every metric, the report's review images). The model's
result is stood in for by a shifted copy of the region (the model is not this section's subject).

Inputs are synthetic photographs (scikit-image's bundled astronaut upscaled to the size, plus
sensor-like noise so the files compress like camera pictures), with an elliptical foreground of
`fg_ratio` and a colour-cast composite; with ground truth, so the metrics include the iHarmony4
protocol. Formats: "jpg" and "webp" read JPEG composite and
ground truth (quality 90) and write that format; "png" reads and writes PNG. The mask is a
PNG in every case.

Figures are CPU seconds (`time.process_time`, all threads of the process) of each step, the
median of up to `repeats` runs after one warm-up (fewer where a run takes over a second or two:
`_runs`). The measurement runs on one core: the process is
pinned to a single CPU (`os.sched_setaffinity`, where the OS has it) and OpenCV to one thread,
so a figure is what one worker core spends per image; the allocator is tuned as the CPU stages tune
it (`harmony_ops.worker.keep_freed_memory`). The PNG line's codec floor is the time
plain Pillow needs for the same PNG decodes and the encode at compress_level=1.
"""

from __future__ import annotations

import io
import os
import statistics
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import numpy as np

# 4:3 sizes of about 1, 4 and 12 megapixels.
SIZES = {1: (1152, 864), 4: (2304, 1728), 12: (4032, 3024)}
FORMATS = ("jpg", "webp", "png")
STEPS = ("read", "decode", "plan_crop_resize", "decode_finish", "paste", "encode", "write", "metrics", "review")
# How often the path decodes each input (decode stage + finish stage): the codec floor counts the same.
DECODES_PER_ROW = {"composite": 2, "real": 2}
# CPU seconds per image the issue sets for JPEG inputs and jpg/webp output (PNG: on top of its codec floor).
BUDGET_S = {1: 0.05, 4: 0.2, 12: 0.6}
INPUT_JPEG_QUALITY = 90
# Timed runs per size and format stop at about this many CPU seconds (`_runs`).
RUN_CPU_BUDGET_S = 2.0


def size_of(megapixels: float) -> tuple[int, int]:
    """The 4:3 size of about `megapixels` (the named sizes exactly), multiples of 8."""
    for mp, wh in SIZES.items():
        if mp == megapixels:
            return wh
    w = max(8, int(round((megapixels * 1e6 * 4 / 3) ** 0.5 / 8)) * 8)
    return w, max(8, int(round(w * 3 / 4 / 8)) * 8)


def bench_photo(width: int, height: int, rng: np.random.Generator) -> np.ndarray:
    """A photograph-like uint8 image: a bundled photo upscaled, plus fine noise (as a sensor adds)."""
    from PIL import Image

    from pipelines.devtools.demo.scenes import sample_photos

    _, photo = next(iter(sample_photos()))
    img = np.asarray(Image.fromarray(photo).resize((width, height), Image.Resampling.BICUBIC), dtype=np.float32)
    img += 6.0 * rng.standard_normal(img.shape, dtype=np.float32)
    return np.clip(np.rint(img), 0, 255).astype(np.uint8)


def bench_scene(width: int, height: int, fg_ratio: float, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(composite, 0/255 mask, real): an off-centre ellipse covering `fg_ratio`, its colours cast
    (per-channel gain and offset, as `lab_shift` would, at a fraction of its cost on 12 MP)."""
    real = bench_photo(width, height, rng)
    # Semi-axes a (x), b (y) with a/b = 4/3 and pi*a*b = fg_ratio * W * H.
    b = (fg_ratio * width * height * 3 / (4 * np.pi)) ** 0.5
    a = 4 * b / 3
    cx, cy = 0.45 * width, 0.55 * height
    yy, xx = np.ogrid[:height, :width]
    fg = ((xx - cx) / a) ** 2 + ((yy - cy) / b) ** 2 <= 1.0
    comp = real.copy()
    comp[fg] = np.clip(real[fg] * np.float32([1.15, 0.95, 0.8]) + np.float32([12, 0, -10]), 0, 255).astype(np.uint8)
    return comp, fg.astype(np.uint8) * 255, real


def _encode(arr: np.ndarray, fmt: str) -> bytes:
    from PIL import Image

    buf = io.BytesIO()
    if fmt == "png":
        Image.fromarray(arr).save(buf, format="PNG", compress_level=1)
    else:
        Image.fromarray(arr).save(buf, format="JPEG", quality=INPUT_JPEG_QUALITY)
    return buf.getvalue()


def make_inputs(folder: Path, width: int, height: int, fg_ratio: float, kinds=("jpeg", "png"), seed: int = 0) -> dict[str, dict[str, Path]]:
    """Composite, mask and ground truth files for each input kind ("jpeg", "png") under `folder`."""
    from PIL import Image

    comp, mask, real = bench_scene(width, height, fg_ratio, np.random.default_rng(seed))
    folder.mkdir(parents=True, exist_ok=True)
    mask_path = folder / "mask.png"
    Image.fromarray(mask).save(mask_path)
    out = {}
    for kind in kinds:
        ext = {"jpeg": "jpg", "png": "png"}[kind]
        paths = {"composite": folder / f"composite.{ext}", "mask": mask_path, "real": folder / f"real.{ext}"}
        paths["composite"].write_bytes(_encode(comp, ext))
        paths["real"].write_bytes(_encode(real, ext))
        out[kind] = paths
    return out


class StepClock:
    """CPU (process) and wall seconds of named steps of one run."""

    def __init__(self):
        self.cpu: dict[str, float] = {}
        self.wall: dict[str, float] = {}

    @contextmanager
    def step(self, name: str):
        c, w = time.process_time(), time.perf_counter()
        try:
            yield
        finally:
            self.cpu[name] = self.cpu.get(name, 0.0) + time.process_time() - c
            self.wall[name] = self.wall.get(name, 0.0) + time.perf_counter() - w


def run_row(paths: dict[str, Path], out_uri: str, fmt: str, clock: StepClock) -> dict[str, float]:
    """One row through the decode and finish stages' work, each step timed; returns the metrics."""
    from harmony_ops.imageio import encode_image
    from harmony_ops.inputs import load_sample
    from harmony_ops.regions import finish, plan_from_columns, prepare, unpack
    from harmony_ops.resolution import ResolutionPolicy
    from pipelines.io.storage import read_with_retries, write_with_retries
    from pipelines.config import FetchSettings
    from pipelines.jobs.review_images import review_mask, sources, write_review
    from pipelines.jobs.row_metrics import row_metrics

    # decode stage
    with clock.step("read"):
        comp_b = read_with_retries(str(paths["composite"]), None, 0)
        mask_b = read_with_retries(str(paths["mask"]), None, 0)
        real_b = read_with_retries(str(paths["real"]), None, 0)
    with clock.step("decode"):
        sample = load_sample(comp_b, mask_b, real_b)
    with clock.step("plan_crop_resize"):
        columns = prepare(sample.composite, sample.mask, ResolutionPolicy(), resize=True).to_columns()
    # the model stage's output: the region, changed (outside the measurement)
    box = plan_from_columns(columns).region
    region = unpack(columns["region_rgb"], box[3] - box[1], box[2] - box[0])
    result = (region // 2 + 40).astype(np.uint8).tobytes()
    # finish stage
    with clock.step("decode_finish"):
        sample = load_sample(comp_b, mask_b, real_b)
        box = plan_from_columns(columns).region
        region = unpack(result, box[3] - box[1], box[2] - box[0])
    with clock.step("paste"):
        out = finish(sample.composite, sample.mask, box, region)
    with clock.step("encode"):
        data = encode_image(out, fmt)
    with clock.step("write"):
        write_with_retries(out_uri, data, None, 0)
    with clock.step("metrics"):
        values = row_metrics(sample, out)
    with clock.step("review"):  # the report's per-row images, as the finish stage writes them by default
        write_review(str(Path(out_uri).parent), 0, FetchSettings(retries=0), sample.composite, out,
                     review_mask(sample), sample.real, with_harmonized=False, **sources(sample, comp_b, real_b))
    return values


def codec_floor(paths: dict[str, Path], out: np.ndarray, repeats: int) -> float:
    """CPU seconds plain Pillow spends on the PNG codec work of one row: the decodes the path does
    (`DECODES_PER_ROW`) and one encode at compress_level=1."""
    from PIL import Image

    blobs = {k: paths[k].read_bytes() for k in DECODES_PER_ROW}

    def once() -> None:
        for k, n in DECODES_PER_ROW.items():
            for _ in range(n):
                Image.open(io.BytesIO(blobs[k])).load()
        Image.fromarray(out).save(io.BytesIO(), format="PNG", compress_level=1)

    once()
    times = []
    for _ in range(repeats):
        c = time.process_time()
        once()
        times.append(time.process_time() - c)
    return statistics.median(times)


@contextmanager
def one_core():
    """Pin this process to one CPU and OpenCV to one thread for the measurement; restore after."""
    import cv2

    threads = cv2.getNumThreads()
    affinity = os.sched_getaffinity(0) if hasattr(os, "sched_getaffinity") else None
    cv2.setNumThreads(1)
    if affinity:
        os.sched_setaffinity(0, {min(affinity)})
    try:
        yield {"cpu": min(affinity) if affinity else None, "cv2_threads": cv2.getNumThreads()}
    finally:
        cv2.setNumThreads(threads)
        if affinity:
            os.sched_setaffinity(0, affinity)


def _runs(first_cpu_s: float, repeats: int) -> int:
    """Timed runs after the warm-up: `repeats`, fewer where a run takes long (at least one), so the
    section stays well under a minute; slow runs are also the least noisy."""
    return max(1, min(repeats, int(RUN_CPU_BUDGET_S / max(first_cpu_s, 1e-9))))


def bench_cpu(megapixels=(1, 4, 12), formats=FORMATS, repeats: int = 3, fg_ratio: float = 0.2, work: Path | None = None,
              echo=print) -> dict[str, Any]:
    """Per size and format: CPU seconds of each step (median of the timed runs after a warm-up), the
    total, and for PNG the codec floor and the total above it."""
    import cv2
    from PIL import Image

    from harmony_ops.worker import keep_freed_memory

    work = Path(work or tempfile.mkdtemp(prefix="harmony-bench-cpu-"))
    rows = []
    allocator = keep_freed_memory()  # what the CPU stages' setup() does in each worker
    with one_core() as pinned:
        for mp in megapixels:
            w, h = size_of(mp)
            kinds = tuple(k for k, need in (("jpeg", {"jpg", "webp"} & set(formats)), ("png", "png" in formats)) if need)
            inputs = make_inputs(work / f"{mp}mp", w, h, fg_ratio, kinds)
            for fmt in formats:
                kind = "png" if fmt == "png" else "jpeg"
                paths = inputs[kind]
                out_uri = str(work / f"{mp}mp" / f"out.{fmt}")
                warm = StepClock()
                run_row(paths, out_uri, fmt, warm)  # warms caches and allocators; sets the number of runs
                runs = []
                for _ in range(_runs(sum(warm.cpu.values()), repeats)):
                    clock = StepClock()
                    run_row(paths, out_uri, fmt, clock)
                    runs.append(clock)
                # r.cpu[s], not .get: a step that was not timed is an error, not a zero
                steps = {s: statistics.median(r.cpu[s] for r in runs) for s in STEPS}
                row = {"megapixels": mp, "width": w, "height": h, "format": fmt, "inputs": kind, "runs": len(runs),
                       "steps_cpu_s": steps, "total_cpu_s": statistics.median(sum(r.cpu.values()) for r in runs),
                       "total_wall_s": statistics.median(sum(r.wall.values()) for r in runs),
                       "input_bytes": {k: p.stat().st_size for k, p in paths.items()},
                       "output_bytes": Path(out_uri).stat().st_size, "budget_s": BUDGET_S.get(mp)}
                if fmt == "png":
                    out = np.asarray(Image.open(out_uri).convert("RGB"))
                    row["codec_floor_cpu_s"] = codec_floor(paths, out, len(runs))
                    row["above_floor_cpu_s"] = row["total_cpu_s"] - row["codec_floor_cpu_s"]
                rows.append(row)
                extra = f", codec floor {row['codec_floor_cpu_s']:.3f}" if fmt == "png" else ""
                echo(f"  cpu {mp} MP {fmt}: {row['total_cpu_s']:.3f} CPU s/image ({len(runs)} runs){extra}")
    return {"rows": rows, "repeats": repeats, "fg_ratio": fg_ratio, "pinned": pinned, "allocator": allocator, "opencv": cv2.__version__,
            "pillow": Image.__version__, "steps": list(STEPS), "decodes_per_row": DECODES_PER_ROW}


def cpu_markdown(c: dict) -> list[str]:
    """The section's tables: steps per size and format, then the PNG codec floor."""
    head = ["read", "decode", "plan+crop+resize", "decode (finish)", "paste", "encode", "write", "metrics", "review images"]
    alloc = "freed memory kept (keep_freed_memory)" if c.get("allocator") else "glibc defaults"
    lines = [f"CPU seconds per image outside the model (one core, median of up to {c['repeats']} runs; foreground {c['fg_ratio']:.0%}; "
             f"allocator: {alloc}; OpenCV {c['opencv']}, Pillow {c['pillow']})", "",
             "| size | format | " + " | ".join(head) + " | total | budget |", "|---" * (len(head) + 4) + "|"]
    for r in c["rows"]:
        cells = " | ".join(f"{r['steps_cpu_s'][s]:.4f}" for s in c["steps"])
        budget = "-" if r.get("budget_s") is None else f"{r['budget_s']:.2f}" + (" + codec" if r["format"] == "png" else "")
        lines.append(f"| {r['megapixels']} MP | {r['format']} | {cells} | {r['total_cpu_s']:.4f} | {budget} |")
    png = [r for r in c["rows"] if r["format"] == "png"]
    if png:
        lines += ["", "PNG codec floor (plain Pillow: the row's PNG decodes and one encode at compress_level=1)", "",
                  "| size | png total | codec floor | above the floor | budget |", "|---|---|---|---|---|"]
        for r in png:
            lines.append(f"| {r['megapixels']} MP | {r['total_cpu_s']:.4f} | {r['codec_floor_cpu_s']:.4f} | "
                         f"{r['above_floor_cpu_s']:.4f} | {'-' if r.get('budget_s') is None else format(r['budget_s'], '.2f')} |")
    lines.append("")
    return lines
