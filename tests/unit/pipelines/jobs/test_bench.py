"""Benchmark building blocks (the figures themselves come from `harmony bench`, never from tests)."""

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.devtools.bench.measure import count_flops, median_time
from pipelines.devtools.bench.run import to_markdown


def test_flops_are_counted_per_part_and_scale_with_pixels():
    a = count_flops("tiny", 256, 256, steps=5)
    b = count_flops("tiny", 512, 512, steps=5)
    assert all(v > 0 for v in a.values())
    assert a["stage1"] == pytest.approx(a["vae_encode"] + 5 * a["unet_step"] + a["vae_decode"])
    assert 3.9 < b["vae_decode"] / a["vae_decode"] < 5.0  # convolutions linear in pixels, plus mid-block attention
    assert b["unet_step"] / a["unet_step"] > 3.5  # attention grows faster than linear
    # the Harmony-VAE's conditional encoder: the VAE encoder plus its extra input conv and skip convs
    assert a["harmony_cond_encoder"] > a["vae_encode"] * 0.9
    assert b["harmony_cond_encoder"] / a["harmony_cond_encoder"] > 3.9  # linear convolutions, quadratic mid-block attention


def test_sd15_inpaint_unet_costs_what_the_published_architecture_costs():
    f = count_flops("sd15-inpaint", 512, 512, steps=5)
    assert 0.75e12 < f["unet_step"] < 0.85e12  # ~0.8 TFLOP per UNet step at 512 px


class FakeClock:
    """A perf_counter that only moves when the code under test "works": each call of `fn`
    takes the next of `durations` seconds, each `sync` takes `sync_cost`."""

    def __init__(self, durations, sync_cost=0.0):
        self.now = 1000.0
        self.durations = list(durations)
        self.sync_cost = sync_cost
        self.events = []

    def perf_counter(self):
        self.events.append("clock")
        return self.now

    def fn(self):
        self.events.append("fn")
        self.now += self.durations.pop(0)

    def sync(self):
        self.events.append("sync")
        self.now += self.sync_cost


@pytest.fixture
def clock(monkeypatch):
    import types

    from pipelines.devtools.bench import measure as bench

    def install(durations, sync_cost=0.0):
        c = FakeClock(durations, sync_cost)
        monkeypatch.setattr(bench, "time", types.SimpleNamespace(perf_counter=c.perf_counter))
        return c

    return install


def test_median_time_runs_warmup_then_repeats(clock):
    c = clock([100.0, 100.0, 1.0, 5.0, 2.0])  # two slow warm-up calls, then three timed ones
    assert median_time(c.fn, repeats=3, warmup=2) == 2.0  # median of 1, 5, 2: warm-up excluded
    assert c.durations == [] and c.events[:2] == ["fn", "fn"]  # warm-up first, untimed
    assert c.events[2:] == ["clock", "fn", "clock"] * 3


def test_median_time_syncs_around_each_timed_call(clock):
    # the sync before starting the clock is not timed (earlier work), the one after is (the call's own work)
    c = clock([50.0, 4.0, 1.0, 3.0, 2.0], sync_cost=0.5)
    assert median_time(c.fn, repeats=4, warmup=1, sync=c.sync) == 3.0  # median of 4.5, 1.5, 3.5, 2.5
    assert c.events[1:] == ["sync", "clock", "fn", "sync", "clock"] * 4


def test_markdown_has_every_section():
    r = {"arch": "tiny", "steps": 5, "dtype": "float32", "command": "harmony bench", "date": "d",
         "machine": {"processor": "x86_64", "device": "cpu", "cpus": 2, "versions": {"torch": "2"}},
         "model": [{"resolution": 512, "batch_size": 1, "stage1_images_per_s": 1.0, "stage1_s_per_image": 1.0,
                    "stage1_gflop_per_image": 27.0, "stage1_tflops": 0.03, "stage1_utilisation": 0.5,
                    "peak_tflops": 0.06, "peak_note": "measured"}],
         "pipeline": {"images": 8, "resolution": 512, "batch_size": 2, "bare_loop_images_per_s": 1.0, "pipeline_streaming_images_per_s": 0.95, "streaming_efficiency_vs_bare": 0.95, "pipeline_fixed_seconds": 2.0,
                      "pipeline_images_per_s": 0.9, "efficiency_vs_bare": 0.9, "reference_loop_images_per_s": 0.5,
                      "speedup_vs_reference": 1.8},
         "adaptive": [{"mode": m, "photo_size": 1024, "images_per_s": 1.0, "stage1_tflop_total": 1.0, "compute_saved_vs_1024": 0.0,
                       "crops": 0, "sizes": ["512x512"]} for m in ("1024", "512", "auto")],
         "scaling": [{"model_actors": 1, "images_per_s": 1.0, "peak_host_mib_per_actor": 900.0,
                      "peak_device_mib_per_actor": None}]}
    md = to_markdown(r)
    for needle in ("Model throughput", "Pipeline efficiency", "90%", "1024 px photos", "Scaling", "50.0%"):
        assert needle in md


def test_timed_runs_times_the_first_call_apart_and_syncs_each(clock):
    from pipelines.devtools.bench.measure import timed_runs

    c = clock([60.0, 2.0, 1.0, 3.0], sync_cost=0.5)  # a compiling first call, then three steady ones
    first, times = timed_runs(c.fn, repeats=3, sync=c.sync)
    assert first == 60.5 and times == [2.5, 1.5, 3.5]
    assert c.events == ["sync", "clock", "fn", "sync", "clock"] * 4


# --- the cpu section ---------------------------------------------------------------------


def test_cpu_section_reports_every_step_per_size_and_format(tmp_path):
    from pipelines.devtools.bench.cpu import FORMATS, STEPS, bench_cpu, cpu_markdown

    r = bench_cpu(megapixels=(0.02, 0.05), repeats=2, work=tmp_path, echo=lambda m: None)
    rows = r["rows"]
    assert [(x["megapixels"], x["format"]) for x in rows] == [(mp, f) for mp in (0.02, 0.05) for f in FORMATS]
    for x in rows:
        assert set(x["steps_cpu_s"]) == set(STEPS)
        assert all(v >= 0 for v in x["steps_cpu_s"].values())
        # the work each step names happened: the right inputs were read, the output was written
        assert x["inputs"] == ("png" if x["format"] == "png" else "jpeg")
        assert x["input_bytes"]["composite"] > 0 and x["output_bytes"] > 0
        assert x["width"] * x["height"] == pytest.approx(x["megapixels"] * 1e6, rel=0.1)
        assert 1 <= x["runs"] <= 2 and x["total_cpu_s"] > 0
        assert ("codec_floor_cpu_s" in x) == (x["format"] == "png")
    assert r["pinned"]["cv2_threads"] == 1
    out = Image.open(tmp_path / "0.05mp" / "out.webp")
    assert out.size == (rows[-1]["width"], rows[-1]["height"])
    md = "\n".join(cpu_markdown(r))
    for needle in ("read", "decode (finish)", "plan+crop+resize", "paste", "encode", "write", "metrics", "total",
                   "PNG codec floor", "above the floor", "| 0.05 MP | webp |"):
        assert needle in md
    json.dumps(r)  # bench.json


def test_cpu_rows_score_the_pasted_output(tmp_path):
    """run_row goes through both stages: the metrics it returns are those of the image it wrote."""
    from harmony_ops.inputs import load_sample
    from pipelines.devtools.bench.cpu import StepClock, make_inputs, run_row
    from pipelines.jobs.row_metrics import row_metrics

    paths = make_inputs(tmp_path, 160, 120, 0.2, kinds=("png",))["png"]
    values = run_row(paths, str(tmp_path / "out.png"), "png", StepClock())
    sample = load_sample(*(paths[k].read_bytes() for k in ("composite", "mask", "real")))
    written = np.asarray(Image.open(tmp_path / "out.png").convert("RGB"))
    assert values == row_metrics(sample, written)
    assert values["delta_e_fg"] > 0 and not np.array_equal(written, sample.composite)


def test_cpu_section_runs_without_torch_or_ray(tmp_path):
    code = ("import sys\nfrom pipelines.devtools.bench.run import run_bench\n"
            f"run_bench(sections=('cpu',), cpu_megapixels=(0.02,), out={str(tmp_path)!r}, argv=['--sections', 'cpu'])\n"
            "loaded = sorted(m for m in ('torch', 'ray', 'diffusers') if m in sys.modules)\nassert not loaded, loaded\n")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=Path(__file__).resolve().parents[4], timeout=300)
    r = json.loads((tmp_path / "bench.json").read_text())
    assert [x["format"] for x in r["cpu"]["rows"]] == ["jpg", "webp", "png"]
    assert r["command"] == "harmony bench --sections cpu"
    assert "CPU seconds per image" in (tmp_path / "bench.md").read_text()


def test_unknown_section_is_refused(tmp_path):
    from pipelines.devtools.bench.run import run_bench

    with pytest.raises(ValueError, match="unknown section"):
        run_bench(sections=("cpu", "gpu"), out=str(tmp_path))


def test_train_section_measures_both_tasks(tmp_path):
    from pipelines.devtools.bench.run import run_bench

    r = run_bench(arch="tiny", resolutions=(32,), batch_sizes=(1,), device="cpu", repeats=1, steps=1,
                  sections=("train",), out=str(tmp_path))
    assert [x["task"] for x in r["train"]] == ["stage1", "refiner"]
    assert all(x["samples_per_s_per_worker"] > 0 for x in r["train"])
    assert "samples/s per worker" in (tmp_path / "bench.md").read_text()


def test_bench_flags_reach_run_bench(monkeypatch):
    from pipelines.cli import main
    from pipelines.devtools.bench import run as bench

    seen = {}
    monkeypatch.setattr(bench, "run_bench", lambda **kw: seen.update(kw))
    assert main(["bench", "--sections", "adaptive", "--adaptive-photo-size", "1536", "--job-rows", "64"]) == 0
    assert seen["adaptive_size"] == 1536 and seen["job_rows"] == 64 and seen["sections"] == ("adaptive",)
    seen.clear()
    assert main(["bench"]) == 0 and "adaptive_size" not in seen  # run_bench's own default
    assert bench.ADAPTIVE_PHOTO_SIZE == 1024  # the default that keeps `harmony bench` short
