"""`harmony image` and `harmony make-checkpoint` through pipelines.cli.main, on a tiny random checkpoint.

The runs use a config file that shrinks the inference class sizes to 64/128 pixels and one
denoising step, so each diffusion run takes well under a second of compute on a CPU.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.cli import main

H, W = 100, 150
FG = (slice(25, 75), slice(40, 110))  # rows, columns of the foreground rectangle


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    d = tmp_path_factory.mktemp("image-cli")
    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:H, 0:W]
    comp = np.stack([xx, yy * 2, (xx + yy) // 2], axis=-1).astype(np.int16) + rng.integers(-8, 8, (H, W, 3))
    comp = np.clip(comp, 0, 255).astype(np.uint8)
    comp[FG] = np.clip(comp[FG].astype(np.int16) + 60, 0, 255).astype(np.uint8)  # a colour-shifted object
    mask = np.zeros((H, W), np.uint8)
    mask[FG] = 255
    Image.fromarray(comp).save(d / "comp.png")
    Image.fromarray(mask).save(d / "mask.png")
    (d / "small.yaml").write_text("model:\n  steps: 1\nresolution:\n  class_sizes: [64, 128]\n")
    return {"dir": d, "comp": str(d / "comp.png"), "mask": str(d / "mask.png"), "comp_arr": comp,
            "fg": mask > 0, "small": str(d / "small.yaml")}


def run_image(inputs, out, *flags) -> int:
    return main(["image", inputs["comp"], inputs["mask"], "-o", str(out), "--config", inputs["small"], *flags])


def load(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


def assert_harmonized(inputs, out: Path) -> np.ndarray:
    assert out.is_file()
    img = load(out)
    assert img.shape == (H, W, 3)  # the composite's size, not the inference size
    bg = ~inputs["fg"]
    assert np.array_equal(img[bg], inputs["comp_arr"][bg])  # background untouched, bit for bit
    return img


def spy_loaded_models(mp: pytest.MonkeyPatch) -> list[str]:
    """Record the labels of the models the engine loader loads (unet, vae, refiner ...)."""
    import harmony_ops.checkpoints as checkpoints  # the loader imports load_model from there when it loads

    labels: list[str] = []
    real = checkpoints.load_model

    def spy(cls, model_dir, label, *a, **kw):
        labels.append(label)
        return real(cls, model_dir, label, *a, **kw)

    mp.setattr(checkpoints, "load_model", spy)
    return labels


@pytest.fixture(scope="module")
def seed1_run(inputs, tiny_checkpoint):
    """The reference run: --model, --seed 1, default refiner (the checkpoint's refiner/)."""
    out = inputs["dir"] / "seed1.png"
    with pytest.MonkeyPatch.context() as mp:
        loaded = spy_loaded_models(mp)
        assert run_image(inputs, out, "--model", str(tiny_checkpoint), "--seed", "1") == 0
    return out, loaded


@pytest.fixture(scope="module")
def seed1(seed1_run):
    return seed1_run[0]


def test_image_writes_a_harmonized_output(inputs, seed1):
    img = assert_harmonized(inputs, seed1)
    assert not np.array_equal(img[inputs["fg"]], inputs["comp_arr"][inputs["fg"]])  # the foreground changed


def test_image_prints_what_it_did(inputs, tiny_checkpoint, tmp_path, capsys):
    out = tmp_path / "o.png"
    assert run_image(inputs, out, "--model", str(tiny_checkpoint), "--seed", "1", "--refiner", "none") == 0
    cap = capsys.readouterr()
    assert "engine diffharmony" in cap.err
    assert f"wrote {out} ({W}x{H})" in cap.out
    assert "inference 64x64" in cap.out  # the YAML's class sizes reached the planner
    assert "metrics: fg_ratio" in cap.out


def test_same_seed_gives_identical_output(inputs, tiny_checkpoint, seed1, tmp_path):
    again = tmp_path / "again.png"
    assert run_image(inputs, again, "--model", str(tiny_checkpoint), "--seed", "1") == 0
    assert np.array_equal(load(again), load(seed1))


@pytest.fixture(scope="module")
def seed1_unrefined_run(inputs, tiny_checkpoint):
    out = inputs["dir"] / "seed1_unrefined.png"
    with pytest.MonkeyPatch.context() as mp:
        loaded = spy_loaded_models(mp)
        assert run_image(inputs, out, "--model", str(tiny_checkpoint), "--seed", "1", "--refiner", "none") == 0
    return out, loaded


@pytest.fixture(scope="module")
def seed1_unrefined(seed1_unrefined_run):
    return seed1_unrefined_run[0]


def test_default_refiner_is_the_checkpoints_refiner_folder(seed1_run):
    _, loaded = seed1_run
    assert any(label.startswith("refiner") for label in loaded), loaded


def test_refiner_none_works_and_skips_refinement(inputs, seed1, seed1_unrefined_run):
    out, loaded = seed1_unrefined_run
    assert loaded and not any(label.startswith("refiner") for label in loaded), loaded
    img = assert_harmonized(inputs, out)
    # the tiny checkpoint's refiner is randomly initialised (not the identity), so skipping it shows
    # in the foreground; the background is the composite's either way
    fg = inputs["fg"]
    assert np.abs(img[fg].astype(int) - load(seed1)[fg].astype(int)).mean() > 5


def test_different_seed_gives_a_different_foreground(inputs, tiny_checkpoint, seed1_unrefined, tmp_path):
    out = tmp_path / "seed2.png"
    assert run_image(inputs, out, "--model", str(tiny_checkpoint), "--seed", "2", "--refiner", "none") == 0
    a, b = load(seed1_unrefined), assert_harmonized(inputs, out)
    fg = inputs["fg"]
    assert not np.array_equal(a[fg], b[fg])
    assert np.array_equal(a[~fg], b[~fg])


def test_yaml_supplies_the_model_and_flags_override_it(inputs, tiny_checkpoint, seed1_unrefined, tmp_path, capsys):
    cfg = tmp_path / "job.yaml"
    cfg.write_text(
        f"model:\n  model: {tiny_checkpoint}\n  steps: 2\n  refiner: none\n"
        "resolution:\n  class_sizes: [64, 128]\nseed: 1\n"
    )
    out = tmp_path / "yaml.png"
    args = ["image", inputs["comp"], inputs["mask"], "-o", str(out), "--config", str(cfg), "--steps", "1"]
    assert main(args) == 0
    assert "engine diffharmony" in capsys.readouterr().err  # the model came from the YAML
    # the flag's --steps 1 won over the YAML's steps: 2: same pixels as the 1-step run with the same seed
    assert np.array_equal(assert_harmonized(inputs, out), load(seed1_unrefined))


def test_baseline_engine_needs_no_model(inputs, tmp_path, capsys):
    out = tmp_path / "baseline.png"
    assert main(["image", inputs["comp"], inputs["mask"], "-o", str(out), "--engine", "baseline"]) == 0
    assert "engine baseline" in capsys.readouterr().err
    img = assert_harmonized(inputs, out)
    fg = inputs["fg"]
    # colour statistics transfer pulls the brightened object back towards its surroundings
    gap_before = abs(inputs["comp_arr"][fg].mean() - inputs["comp_arr"][~fg].mean())
    gap_after = abs(img[fg].mean() - img[~fg].mean())
    assert gap_after < gap_before


def test_no_model_runs_the_default_engine_and_says_why(inputs, tmp_path, capsys):
    from harmony_ops.defaults import default_engine

    out = tmp_path / "default.png"
    assert main(["image", inputs["comp"], inputs["mask"], "-o", str(out), "--device", "cpu"]) == 0
    err = capsys.readouterr().err
    expect = "engine diffharmony, embedded demo model" if default_engine() == "diffharmony" else "engine baseline"
    assert f"{expect}" in err and "by default:" in err and "harmony bench --sections quality" in err
    assert_harmonized(inputs, out)


def test_engine_diffharmony_runs_the_embedded_model(inputs, tmp_path, capsys):
    out = tmp_path / "model.png"
    assert main(["image", inputs["comp"], inputs["mask"], "-o", str(out), "--engine", "diffharmony"]) == 0
    err = capsys.readouterr().err
    assert "engine diffharmony, embedded demo model" in err and "by default" not in err
    assert_harmonized(inputs, out)


# --- errors -----------------------------------------------------------------------------------


def test_missing_composite_exits_2(inputs, tmp_path, capsys):
    missing = str(tmp_path / "nope.png")
    rc = main(["image", missing, inputs["mask"], "-o", str(tmp_path / "o.png"), "--engine", "baseline"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "harmony image: error:" in err and "nope.png" in err
    assert not (tmp_path / "o.png").exists()


def test_mask_of_another_size_exits_2(inputs, tmp_path, capsys):
    small = tmp_path / "mask_other.png"
    m = np.zeros((80, 120), np.uint8)
    m[10:30, 10:30] = 255
    Image.fromarray(m).save(small)
    rc = main(["image", inputs["comp"], str(small), "-o", str(tmp_path / "o.png"), "--engine", "baseline"])
    assert rc == 2
    err = capsys.readouterr().err
    assert "120x80" in err and f"{W}x{H}" in err
    assert not (tmp_path / "o.png").exists()


def test_checkpoint_without_unet_weights_exits_2(inputs, tiny_checkpoint, tmp_path, capsys):
    broken = tmp_path / "broken"
    shutil.copytree(tiny_checkpoint, broken)
    (broken / "unet" / "diffusion_pytorch_model.safetensors").unlink()
    rc = run_image(inputs, tmp_path / "o.png", "--model", str(broken))
    assert rc == 2
    err = capsys.readouterr().err
    assert "unet" in err and "harmony image: error:" in err
    assert not (tmp_path / "o.png").exists()


def test_gif_output_exits_2(inputs, tmp_path, capsys):
    rc = main(["image", inputs["comp"], inputs["mask"], "-o", str(tmp_path / "o.gif"), "--engine", "baseline"])
    assert rc == 2
    assert ".png" in capsys.readouterr().err
    assert not (tmp_path / "o.gif").exists()


def test_invalid_flag_value_exits_2_naming_the_field(inputs, tmp_path, capsys):
    rc = main(["image", inputs["comp"], inputs["mask"], "-o", str(tmp_path / "o.png"), "--engine", "baseline",
               "--resolution", "300"])
    assert rc == 2
    assert "resolution.mode" in capsys.readouterr().err


def test_a_missing_embedded_model_exits_2_with_the_way_out(inputs, tmp_path, capsys, monkeypatch):
    import harmony_ops.defaults as defaults
    import pipelines.config as config

    gone = tmp_path / "weights" / "demo"
    monkeypatch.setattr(defaults, "EMBEDDED_MODEL_DIR", gone)
    monkeypatch.setattr(config, "EMBEDDED_MODEL_DIR", gone)
    rc = main(["image", inputs["comp"], inputs["mask"], "-o", str(tmp_path / "o.png"), "--engine", "diffharmony"])
    assert rc == 2
    assert "the embedded model is missing" in capsys.readouterr().err


# --- make-checkpoint --------------------------------------------------------------------------


def test_make_checkpoint_tiny(tmp_path, capsys):
    d = tmp_path / "ck"
    assert main(["make-checkpoint", "--tiny", str(d)]) == 0
    assert "tiny" in capsys.readouterr().out
    assert (d / "model_index.json").is_file()
    assert (d / "null_text_embedding.safetensors").is_file()
    for sub in ("unet", "vae", "refiner"):
        assert (d / sub / "config.json").is_file()
        assert (d / sub / "diffusion_pytorch_model.safetensors").is_file()
    assert (d / "scheduler" / "scheduler_config.json").is_file()
    import json

    assert json.loads((d / "model_index.json").read_text())["harmony"]["refiner_init"] == "default"  # not the identity


def test_make_checkpoint_no_refiner(tmp_path):
    d = tmp_path / "ck"
    assert main(["make-checkpoint", "--tiny", "--no-refiner", str(d)]) == 0
    assert not (d / "refiner").exists()
    for sub in ("unet", "vae", "scheduler"):
        assert (d / sub).is_dir()
    assert (d / "model_index.json").is_file()


def test_made_checkpoint_runs(inputs, tmp_path):
    d = tmp_path / "ck"
    assert main(["make-checkpoint", "--tiny", "--no-refiner", "--seed", "3", str(d)]) == 0
    out = tmp_path / "o.png"
    assert run_image(inputs, out, "--model", str(d), "--seed", "1") == 0  # refiner auto: none present
    assert_harmonized(inputs, out)
