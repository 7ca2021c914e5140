"""The GPU check (bench/gpu-check.sh, pipelines.devtools.gpu_check) on the CPU: its grid, its budget
guard, its outputs, and that the model and train sections run where Ray, pandera, s3fs and pydantic are
absent (as on the lent GPU machine). No figure is asserted: these check the logic a device run depends on."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import zipfile
from pathlib import Path

import pytest

from pipelines.devtools.bench.model import ModelOptions, TunedModels, build_engine
from pipelines.devtools.bench.run import run_bench
from pipelines.devtools.gpu_check import TrainConfig, main, plan_grid, plan_train, what_paid

ROOT = Path(__file__).resolve().parents[4]
# Absent on the GPU machine's image (KINDS.md): the model section must not import them.
ABSENT_ON_GPU = ("ray", "pandera", "s3fs", "pydantic", "pydantic_core", "boto3", "botocore", "aiobotocore", "moto")


def blocked_env(tmp_path: Path, also: tuple[str, ...] = ()) -> dict[str, str]:
    """An environment whose Python refuses to import the packages the GPU machine lacks (and `also`)."""
    block = tmp_path / "block"
    block.mkdir()
    (block / "sitecustomize.py").write_text(textwrap.dedent(f"""
        import sys

        BLOCKED = {set(ABSENT_ON_GPU + also)!r}

        class Blocker:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in BLOCKED:
                    raise ModuleNotFoundError(f"No module named {{name!r}} (blocked: absent on the GPU machine)", name=name)
                return None

        sys.meta_path.insert(0, Blocker())
    """))
    env = {k: v for k, v in os.environ.items() if k not in ("OUT", "BUDGET_S", "SECTIONS")}
    env["PYTHONPATH"] = f"{block}{os.pathsep}{ROOT}"
    return env


def fake_wheel(folder: Path) -> Path:
    """A minimal pure-Python wheel, standing in for the carried diffusers wheel."""
    folder.mkdir(parents=True)
    path = folder / "harmonyprobe-0.1-py3-none-any.whl"
    with zipfile.ZipFile(path, "w") as z:
        z.writestr("harmonyprobe/__init__.py", "VALUE = 42\n")
        z.writestr("harmonyprobe-0.1.dist-info/METADATA", "Metadata-Version: 2.1\nName: harmonyprobe\nVersion: 0.1\n")
        z.writestr("harmonyprobe-0.1.dist-info/WHEEL", "Wheel-Version: 1.0\nGenerator: test\nRoot-Is-Purelib: true\nTag: py3-none-any\n")
        z.writestr("harmonyprobe-0.1.dist-info/RECORD", "")
    return path


def test_the_grid_puts_the_base_first_and_the_costly_rows_last():
    plan = plan_grid((512, 1024), (1, 4, 8))
    ids = [c.id for c in plan]
    assert len(ids) == len(set(ids))
    shapes = [(r, b) for r in (512, 1024) for b in (1, 4, 8)]
    # 1. What harmonize runs today (fp16, SDPA, eager) at every size, before anything else.
    assert [(c.block, c.dtype, c.resolution, c.batch_size) for c in plan[:6]] == [("base", "fp16", r, b) for r, b in shapes]
    assert all(c.options == ModelOptions() for c in plan[:6])
    # 2. Each change is one step from the base, at fp16 unless it is the precision.
    by_block: dict[str, list] = {}
    for c in plan:
        by_block.setdefault(c.block, []).append(c)
    assert list(by_block) == ["base", "bf16", "channels-last", "no-sdpa", "compile", "compile+channels-last"]
    assert [(c.resolution, c.batch_size) for c in by_block["bf16"]] == shapes and all(c.dtype == "bf16" for c in by_block["bf16"])
    assert all(c.dtype == "fp16" for b in ("channels-last", "no-sdpa", "compile") for c in by_block[b])
    assert all(c.options == ModelOptions(channels_last=True) for c in by_block["channels-last"])
    # 3. Classic attention not at 1024 px with batch 4 or 8 (N^2 attention matrices of tens of GB).
    assert [(c.resolution, c.batch_size) for c in by_block["no-sdpa"]] == [(512, 1), (512, 4), (512, 8), (1024, 1)]
    # 4. Compiling (a minute or more each) only at the largest batch, and last.
    assert [(c.resolution, c.batch_size) for c in by_block["compile"]] == [(512, 8), (1024, 8)]
    assert [(c.resolution, c.batch_size) for c in by_block["compile+channels-last"]] == [(512, 8)]
    assert all(c.options.compile for c in plan[-3:]) and not any(c.options.compile for c in plan[:-3])
    assert by_block["compile+channels-last"][0].options.channels_last


def test_what_paid_compares_each_change_with_the_base_row_of_its_size():
    def row(block, res, bs, s1, ref, spread=0.0):
        return {"block": block, "resolution": res, "batch_size": bs, "status": "ok", "stage1_images_per_s": s1,
                "refiner_images_per_s": ref, "stage1_spread": spread, "refiner_spread": spread}

    rows = [row("base", 512, 1, 10.0, 20.0), row("base", 512, 8, 40.0, 80.0),
            row("bf16", 512, 1, 10.1, 20.1), row("bf16", 512, 8, 40.2, 79.0),                 # within 3%: no gain
            row("compile", 512, 8, 60.0, 80.0),                                                  # stage 1 only
            row("channels-last", 512, 1, 9.0, 30.0), row("channels-last", 512, 8, 36.0, 120.0),  # refiner only
            row("no-sdpa", 512, 1, 5.0, 10.0),
            row("noisy", 512, 1, 11.0, 22.0, spread=0.2),                                        # 10% < its 20% spread
            {"block": "compile", "resolution": 1024, "batch_size": 8, "status": "oom"}]
    paid = {p["change"]: p for p in what_paid(rows)}
    assert paid["bf16"]["verdict"] == "no clear gain"
    assert paid["compile"]["stage1_speedup"] == pytest.approx(1.5) and paid["compile"]["compared"] == ["512px b8"]
    assert paid["compile"]["verdict"] == "pays for stage 1"
    assert paid["channels-last"]["verdict"] == "pays for the refiner"
    assert paid["channels-last"]["refiner_speedup_range"] == pytest.approx((1.5, 1.5))
    assert paid["no-sdpa"]["verdict"] == "slower" and paid["no-sdpa"]["stage1_speedup"] == pytest.approx(0.5)
    assert paid["noisy"]["verdict"] == "no clear gain"
    assert "base" not in paid


def test_the_in_memory_engine_is_the_one_a_written_checkpoint_loads(tmp_path):
    import torch

    from harmony_ops.factory import write_checkpoint
    from harmony_ops.loader import load_diffharmony

    built = build_engine("tiny", "cpu", "fp32", steps=1, seed=5)
    loaded = load_diffharmony(str(write_checkpoint(tmp_path / "ckpt", arch="tiny", seed=5)), device="cpu", dtype="fp32", steps=1)
    for a, b in ((built.sampler.unet, loaded.sampler.unet), (built.sampler.vae, loaded.sampler.vae), (built.refiner, loaded.refiner)):
        sa, sb = a.state_dict(), b.state_dict()
        assert sa.keys() == sb.keys() and all(torch.equal(sa[k], sb[k]) for k in sa)
    torch.testing.assert_close(built.sampler.null_embedding, loaded.sampler.null_embedding, rtol=0, atol=0)
    assert built.sampler.scheduler_config == loaded.sampler.scheduler_config


def test_options_change_how_the_models_run_not_what_they_compute():
    import torch
    from diffusers.models.attention_processor import Attention, AttnProcessor, AttnProcessor2_0

    torch.manual_seed(0)
    engine = build_engine("tiny", "cpu", "fp32", steps=1)
    tuned = TunedModels(engine)
    images = torch.rand(2, 3, 32, 32) * 2 - 1
    masks = (torch.rand(2, 1, 32, 32) > 0.5).float()
    run = lambda: engine.sampler(images, masks, seeds=[3, 4], num_inference_steps=1)  # noqa: E731
    processors = lambda: {type(m.processor) for model in tuned.models() for m in model.modules() if isinstance(m, Attention)}  # noqa: E731
    base = run()
    assert processors() == {AttnProcessor2_0}

    tuned.apply(ModelOptions(sdpa=False, channels_last=True))
    assert processors() == {AttnProcessor}
    assert engine.sampler.vae.decoder.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    assert engine.refiner.conv_in.weight.is_contiguous(memory_format=torch.channels_last)
    torch.testing.assert_close(run(), base, atol=1e-5, rtol=1e-4)

    tuned.apply(ModelOptions(compile=True, compile_backend="eager"), dtype=torch.bfloat16)
    assert engine.sampler.unet is not tuned.unet and engine.sampler.unet._orig_mod is tuned.unet
    assert engine.sampler.dtype == torch.bfloat16 and engine.refiner.dtype == torch.bfloat16
    assert processors() == {AttnProcessor2_0}
    assert engine.sampler.unet.conv_in.weight.is_contiguous()  # every option set again: channels-last undone

    tuned.apply(ModelOptions(), dtype=torch.float32)
    assert engine.sampler.unet is tuned.unet
    torch.testing.assert_close(run(), base, atol=1e-2, rtol=1e-2)  # weights went through bf16 and back


def _doc(out: Path) -> dict:
    return json.loads((out / "gpu-bench.json").read_text())


# One size, one batch, one precision: 5 rows (base, channels-last, no-sdpa, compile, compile+channels-last).
SMALL = ["--dry-run", "--sections", "model", "--resolution", "32", "--batch-size", "1", "--dtypes", "fp32"]
# The train section alone at one size and batch: 2 rows (stage 1, refiner), fp32 (the CPU runs fp32).
TRAIN = ["--dry-run", "--sections", "train", "--train-resolution", "32", "--train-batch-size", "1"]


def test_the_budget_guard_skips_rows_that_would_not_fit_and_still_writes_them(tmp_path):
    small = SMALL
    # A compile assumed to take longer than the budget: the compiled rows are skipped, the rest run.
    assert main(small + ["--out", str(tmp_path / "a"), "--budget-s", "600", "--compile-estimate-s", "5000"]) == 0
    doc = _doc(tmp_path / "a")
    status = {r["id"]: r["status"] for r in doc["rows"]}
    assert list(status) == [p["id"] for p in doc["plan"]]
    assert status == {"base-32px-b1": "ok", "channels-last-32px-b1": "ok", "no-sdpa-32px-b1": "ok",
                      "compile-32px-b1": "skipped", "compile+channels-last-32px-b1": "skipped"}
    assert all("time budget" in r["reason"] for r in doc["rows"] if r["status"] == "skipped")
    assert doc["complete"] is True
    # No time left at all: every row is recorded as skipped, in both files.
    assert main(small + ["--out", str(tmp_path / "b"), "--budget-s", "0"]) == 0
    doc = _doc(tmp_path / "b")
    assert [r["status"] for r in doc["rows"]] == ["skipped"] * 5
    md = (tmp_path / "b" / "gpu-bench.md").read_text()
    assert all(f"| {p['id']} |" in md for p in doc["plan"])


def test_a_run_stopped_midway_keeps_the_rows_done(tmp_path, monkeypatch):
    from pipelines.devtools import gpu_check

    real, calls, seen = gpu_check.model_row, [], {}
    out = tmp_path / "out"

    def stopped_in_the_third_row(*args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            # What a SIGKILL would leave now (no `finally` runs): the files as written after each row.
            seen.update(doc=_doc(out), md=(out / "gpu-bench.md").read_text())
            raise KeyboardInterrupt  # like the SystemExit that `timeout`'s SIGTERM raises, in the middle of a row
        return real(*args, **kwargs)

    monkeypatch.setattr(gpu_check, "model_row", stopped_in_the_third_row)
    with pytest.raises(KeyboardInterrupt):
        main(SMALL + ["--out", str(out), "--budget-s", "600", "--compile-estimate-s", "5000"])
    assert [r["id"] for r in seen["doc"]["rows"]] == ["base-32px-b1", "channels-last-32px-b1"]
    assert seen["doc"]["running"] == "no-sdpa-32px-b1" and "| channels-last-32px-b1 | float32 | sdpa+channels-last | " in seen["md"]
    doc = _doc(out)
    assert [r["id"] for r in doc["rows"]] == ["base-32px-b1", "channels-last-32px-b1"]
    assert doc["running"] == "no-sdpa-32px-b1" and doc["complete"] is False and doc["stopped"] == "KeyboardInterrupt"
    assert len((out / "gpu-bench.jsonl").read_text().splitlines()) == 2
    md = (out / "gpu-bench.md").read_text()
    assert "Status: incomplete (KeyboardInterrupt); 2 of 5 rows measured" in md and "| channels-last-32px-b1 |" in md


def test_a_row_that_fails_is_recorded_and_the_grid_goes_on(tmp_path, monkeypatch):
    import torch

    from pipelines.devtools import gpu_check

    real = gpu_check.model_row

    def failing(engine, arch, res, bs, repeats, steps, peak, opts, note):
        if opts.channels_last:
            raise RuntimeError("a compile or kernel error\nwith a long traceback")
        if not opts.sdpa:
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 96.00 GiB")
        return real(engine, arch, res, bs, repeats, steps, peak, opts, note)

    monkeypatch.setattr(gpu_check, "model_row", failing)
    out = tmp_path / "out"
    assert main(SMALL + ["--out", str(out), "--budget-s", "600", "--compile-estimate-s", "5000"]) == 0
    rows = {r["id"]: r for r in _doc(out)["rows"]}
    assert [r["status"] for r in rows.values()] == ["ok", "error", "oom", "skipped", "skipped"]
    assert rows["channels-last-32px-b1"]["reason"] == "RuntimeError: a compile or kernel error"
    assert rows["no-sdpa-32px-b1"]["reason"].startswith("CUDA out of memory")
    assert "| no-sdpa-32px-b1 | float32 | no-sdpa |" in (out / "gpu-bench.md").read_text()


def test_the_train_plan_runs_what_training_runs_first():
    plan = plan_train((512,), (1, 4), ("bf16", "fp32"))
    assert [(c.task, c.precision, c.resolution, c.batch_size) for c in plan] == [
        ("stage1", "bf16", 512, 1), ("stage1", "bf16", 512, 4), ("refiner", "bf16", 512, 1), ("refiner", "bf16", 512, 4),
        ("stage1", "fp32", 512, 4), ("refiner", "fp32", 512, 4)]  # the other precision: largest batch only
    assert plan[0] == TrainConfig("stage1", 512, 1, "bf16") and plan[0].id == "train-stage1-bf16-512px-b1"


def test_the_train_section_has_its_share_of_the_budget(tmp_path):
    # The model section may plan rows until (1 - share) x budget: share 1 leaves it none, so every model row
    # is skipped and the train section, with all of it, runs.
    out = tmp_path / "a"
    assert main(SMALL[:2] + ["model,train"] + SMALL[3:] + TRAIN[3:] + ["--out", str(out), "--budget-s", "600",
                                                                          "--train-share", "1"]) == 0
    doc = _doc(out)
    assert doc["section_budgets_s"] == {"model": 0, "train": 600}
    assert [r["id"] for r in doc["rows"]] == [p["id"] for p in doc["plan"]]
    assert [(r["section"], r["status"]) for r in doc["rows"]] == [("model", "skipped")] * 5 + [("train", "ok")] * 2
    # No time left at all: every train row is recorded as skipped, in both files, without counting FLOPs.
    assert main(TRAIN + ["--out", str(tmp_path / "b"), "--budget-s", "0"]) == 0
    doc = _doc(tmp_path / "b")
    assert [(r["id"], r["status"], r["reason"]) for r in doc["rows"]] == [
        ("train-stage1-fp32-32px-b1", "skipped", "time budget: none left"),
        ("train-refiner-fp32-32px-b1", "skipped", "time budget: none left")]
    md = (tmp_path / "b" / "gpu-bench.md").read_text()
    assert "| train-refiner-fp32-32px-b1 | refiner | fp32 | 32 | 1 |" in md and "skipped: time budget" in md
    assert "| row | dtype | options |" not in md  # no model table when the model section is not asked for


def test_a_train_row_estimated_past_the_budget_is_skipped_and_a_stop_keeps_the_rows_done(tmp_path, monkeypatch):
    from pipelines.devtools import gpu_check

    # An assumed rate so low that no row fits: skipped with its estimate, before any model is built.
    assert main(TRAIN + ["--out", str(tmp_path / "a"), "--budget-s", "60", "--assumed-tflops", "1e-12"]) == 0
    rows = _doc(tmp_path / "a")["rows"]
    assert [r["status"] for r in rows] == ["skipped"] * 2 and all("needs ~" in r["reason"] for r in rows)
    # Stopped in the second row: the first stays in every file.
    real, calls = gpu_check.train_row, []

    def stopped_in_the_second_row(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    monkeypatch.setattr(gpu_check, "train_row", stopped_in_the_second_row)
    out = tmp_path / "b"
    with pytest.raises(KeyboardInterrupt):
        main(TRAIN + ["--out", str(out), "--budget-s", "600"])
    doc = _doc(out)
    assert [r["id"] for r in doc["rows"]] == ["train-stage1-fp32-32px-b1"] and doc["running"] == "train-refiner-fp32-32px-b1"
    assert doc["complete"] is False and len((out / "gpu-bench.jsonl").read_text().splitlines()) == 1
    assert "| train-stage1-fp32-32px-b1 | stage1 | fp32 | 32 | 1 |" in (out / "gpu-bench.md").read_text()


def test_sections_outside_the_gpu_script_are_refused_by_name(capsys):
    # `pipeline` needs Ray: `harmony bench` runs it, this script does not.
    with pytest.raises(SystemExit) as exc:
        main(["--dry-run", "--sections", "model,pipeline"])
    assert exc.value.code == 2 and "unknown section 'pipeline'; choose from model, train" in capsys.readouterr().err
    with pytest.raises(ValueError, match="unknown section 'modle'"):
        run_bench(sections=("modle",))


def test_the_script_stops_before_the_grid_when_diffusers_is_missing(tmp_path):
    env = blocked_env(tmp_path, also=("diffusers",))
    env.update(OUT=str(tmp_path / "out"), PYTHON=sys.executable, WHEELS=str(tmp_path / "no-wheels"))
    r = subprocess.run(["bash", str(ROOT / "bench" / "gpu-check.sh")], env=env, cwd=tmp_path,
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 1
    assert "no wheels in" in r.stdout and "diffusers is missing: fill .whl/ with bench/fetch-wheels.sh" in r.stdout + r.stderr
    assert not (tmp_path / "out" / "gpu-bench.json").exists()  # the grid never started


def test_the_script_installs_carried_wheels_and_runs_the_grid_without_ray(tmp_path):
    env = blocked_env(tmp_path)
    probe = subprocess.run([sys.executable, "-c", "import ray"], env=env, capture_output=True, text=True)
    assert probe.returncode != 0 and "blocked" in probe.stderr  # the blocker is in force for the script's Python
    out, site = tmp_path / "out", tmp_path / "site"
    fake_wheel(tmp_path / "wheels")
    # A budget no CPU needs (the guard has its own test): a loaded machine must not make rows skip.
    env.update(OUT=str(out), PYTHON=sys.executable, WHEELS=str(tmp_path / "wheels"), SITE=str(site), BUDGET_S="600")
    r = subprocess.run(["bash", str(ROOT / "bench" / "gpu-check.sh"), "--dry-run"], env=env, cwd=tmp_path,
                       capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr[-3000:]
    log = (out / "gpu-check.log").read_text()
    assert (site / "harmonyprobe" / "__init__.py").exists()
    assert f"carried: harmonyprobe 0.1 from {site}" in log  # installed, and first on the grid's path

    doc = _doc(out)
    rows = doc["rows"]
    assert doc["complete"] is True and doc["arch"] == "tiny" and doc["sections"] == ["model", "train"]
    assert [r["id"] for r in doc["rows"]] == [p["id"] for p in doc["plan"]]
    rows = [r for r in doc["rows"] if r["section"] == "model"]
    train = [r for r in doc["rows"] if r["section"] == "train"]
    assert len(rows) == 10 and doc["rows"][:10] == rows  # the model grid first, then the train rows
    assert [(r["task"], r["batch_size"], r["precision"]) for r in train] == [
        ("stage1", 1, "fp32"), ("stage1", 2, "fp32"), ("refiner", 1, "fp32"), ("refiner", 2, "fp32")]
    assert {r["status"] for r in train} == {"ok"}, [(r["id"], r.get("reason")) for r in train if r["status"] != "ok"]
    for row in train:
        for key in ("samples_per_s_per_worker", "seconds_per_step", "gflop_per_sample", "tflops", "utilisation", "first_step_s"):
            assert row[key] > 0, (row["id"], key)
        assert row["samples_per_s_per_worker"] == pytest.approx(row["batch_size"] / row["seconds_per_step"])
        assert row["tflops"] == pytest.approx(row["gflop_per_sample"] * row["batch_size"] / row["seconds_per_step"] / 1e3)
    # The refiner's step includes its frozen sampler: more work per sample than stage 1's at the tiny size.
    assert train[2]["gflop_per_sample"] > train[0]["gflop_per_sample"]
    assert {r["status"] for r in rows} == {"ok"}, [(r["id"], r.get("reason")) for r in rows if r["status"] != "ok"]
    for row in rows:
        for key in ("stage1_images_per_s", "stage1_s_per_image", "stage1_tflops", "stage1_utilisation",
                    "refiner_images_per_s", "refiner_s_per_image", "refiner_tflops", "refiner_utilisation"):
            assert row[key] > 0, (row["id"], key)
        assert row["stage1_s_per_image"] == pytest.approx(1 / row["stage1_images_per_s"])
        assert (row["compile_s"] is not None) == row["compile"] == row["id"].startswith("compile")
    assert {r["dtype"] for r in rows} == {"float16", "bfloat16"}
    lines = (out / "gpu-bench.jsonl").read_text().splitlines()
    assert [json.loads(x)["id"] for x in lines] == [r["id"] for r in doc["rows"]]
    md = (out / "gpu-bench.md").read_text()
    assert all(f"| {r['id']} |" in md for r in doc["rows"]) and "What paid" in md and "Status: complete" in md
    assert "#### Training: one worker" in md and "forward and backward counted" in md


def test_harmony_bench_model_section_runs_without_ray(tmp_path):
    out = tmp_path / "bench"
    r = subprocess.run([sys.executable, "-m", "pipelines.cli", "bench", "--sections", "model", "--arch", "tiny",
                        "--device", "cpu", "--resolution", "32", "--batch-size", "1", "--repeats", "1", "--steps", "1",
                        "--no-sdpa", "--channels-last", "--out", str(out)],
                       env=blocked_env(tmp_path), cwd=tmp_path, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr[-3000:]
    model = json.loads((out / "bench.json").read_text())["model"]
    assert [(m["resolution"], m["batch_size"], m["options"]) for m in model] == [(32, 1, "no-sdpa+channels-last")]
    assert model[0]["stage1_images_per_s"] > 0 and model[0]["refiner_images_per_s"] > 0
    assert model[0]["harmony_cond_encoder_s_per_image"] > 0 and model[0]["harmony_cond_encoder_gflop_per_image"] > 0
