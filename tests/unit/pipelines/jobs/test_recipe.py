"""The recipe runner and its photos step, without Ray: step order, {work}, caps, skipping finished
steps, the train / held-out split."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipelines.errors import JobError
from pipelines.devtools.recipe.photos import check_split, random_crops, write_photo_sets
from pipelines.devtools.recipe.runner import load_steps, parse_caps, run_recipe


def test_split_refuses_a_photo_or_a_view_of_the_same_scene_on_both_sides():
    check_split(["astronaut", "coffee"], ["chelsea", "stereo_motorcycle"])
    with pytest.raises(ValueError, match="coffee"):
        check_split(["astronaut", "coffee"], ["coffee"])
    with pytest.raises(ValueError, match="cat"):
        check_split(["cat"], ["chelsea"])  # one photograph under two names
    with pytest.raises(ValueError, match="stereo_motorcycle"):
        check_split(["stereo_motorcycle_right"], ["stereo_motorcycle"])


@pytest.mark.parametrize("name", ["china", "flower", "grace_hopper", "kiwi", "city"])
def test_photographs_reserved_for_evaluation_are_never_trained_on(name):
    with pytest.raises(ValueError, match=f"reserved for evaluation cannot be trained on: {name}"):
        check_split(["astronaut", name], ["chelsea"])
    check_split(["astronaut"], [name])  # evaluating on them is what they are for


def test_random_crops_are_square_resized_and_seeded():
    img = np.random.default_rng(0).integers(0, 255, (60, 90, 3), dtype=np.uint8)
    a = random_crops(img, 5, 16, np.random.default_rng(3))
    b = random_crops(img, 5, 16, np.random.default_rng(3))
    assert all(c.shape == (16, 16, 3) for c in a)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert not np.array_equal(a[0], a[1])


def test_photo_sets_hold_disjoint_photographs(tmp_path):
    pytest.importorskip("skimage")
    out = write_photo_sets(tmp_path, ["astronaut"], ["chelsea", "cat"], crops=3, holdout_crops=1, side=32, holdout_side=48)
    train, held = pd.read_csv(out["train"]), pd.read_csv(out["holdout"])
    assert len(train) == 3 and set(train["subset"]) == {"astronaut"}
    assert len(held) == 2 and set(held["subset"]) == {"chelsea", "cat"}
    assert Image.open(tmp_path / "holdout" / held["real"][0]).size == (48, 48)
    assert not set(train["id"]) & set(held["id"])


def _recipe(tmp_path):
    r = tmp_path / "recipe"
    r.mkdir()
    (r / "01-photos.yaml").write_text(
        "run: photos\nconfig:\n  output: '{work}/photos'\n  train: [astronaut]\n  holdout: [chelsea]\n"
        "  crops: 50\n  holdout_crops: 1\n  side: 32\n  holdout_side: 32\n")
    (r / "02-init.yaml").write_text("run: make-checkpoint\nconfig:\n  dir: '{work}/init'\n  arch: tiny\n  seed: 3\n")
    (r / "notes.yaml").write_text("not: a step\n")  # not NN-name.yaml: ignored
    return r


def test_steps_run_in_order_once_with_work_and_caps(tmp_path):
    pytest.importorskip("skimage")
    recipe, work = _recipe(tmp_path), tmp_path / "work"
    assert [n for n, _ in load_steps(recipe)] == ["01-photos", "02-init"]
    said = []
    log = run_recipe(recipe, work, caps={"crops": 2}, until="01-photos", echo=said.append)
    assert list(log["steps"]) == ["01-photos"]
    assert len(pd.read_csv(work / "photos" / "train" / "manifest.csv")) == 2  # capped from 50
    assert json.loads((work / "steps" / "01-photos.json").read_text())["config"]["output"] == str(work / "photos")
    log = run_recipe(recipe, work, caps={"crops": 2}, echo=said.append)
    assert "recipe: 01-photos done before" in said[-3]  # finished steps are skipped on a re-run
    assert (work / "init" / "unet" / "config.json").exists()
    assert json.loads((work / "init" / "model_index.json").read_text())["harmony"]["seed"] == 3
    assert set(json.loads((work / "recipe-log.json").read_text())["steps"]) == {"01-photos", "02-init"}


def test_bad_recipes_are_refused(tmp_path):
    (tmp_path / "01-x.yaml").write_text("run: nonsense\n")
    with pytest.raises(JobError, match="`run` must be one of"):
        load_steps(tmp_path)
    with pytest.raises(JobError, match="no step files"):
        load_steps(tmp_path / "empty")
    with pytest.raises(JobError, match="no step '09-x'"):
        run_recipe(_recipe(tmp_path), tmp_path / "w", until="09-x")


def test_the_demo_recipe_is_complete_and_ordered():
    from pathlib import Path

    steps = load_steps(Path(__file__).resolve().parents[4] / "configs" / "recipes" / "demo")
    kinds = [spec["run"] for _, spec in steps]
    assert kinds[0] == "photos" and kinds[-2:] == ["evaluate", "install"]
    tasks = [spec["config"]["task"] for _, spec in steps if spec["run"] == "train"]
    assert tasks == ["vae", "stage1", "refiner"]  # the VAE defines stage 1's latents: it comes first
    photos = steps[0][1]["config"]
    check_split(photos["train"], photos["holdout"])


def test_caps_are_key_equals_integer_and_a_bad_one_exits_2(tmp_path, capsys):
    from pipelines.cli import main

    assert parse_caps(["max_steps=5", "crops=2"]) == {"max_steps": 5, "crops": 2}
    assert parse_caps(None) == {}
    for bad in ("max_steps", "max_steps=five", "=3"):
        with pytest.raises(ValueError, match="KEY=N"):
            parse_caps([bad])
    assert main(["recipe", str(tmp_path), "--cap", "max_steps"]) == 2
    assert "KEY=N" in capsys.readouterr().err


SCORES = {"composite": {"fmse": 1000.0, "mse": 250.0, "psnr": 26.0, "rows": 4},
          "baseline": {"fmse": 300.0, "mse": 70.0, "psnr": 31.0, "rows": 4},
          "stage1": {"fmse": 4000.0, "mse": 900.0, "psnr": 20.0, "rows": 4},
          "stage1+refiner": {"fmse": 550.0, "mse": 120.0, "psnr": 28.0, "rows": 4}}


def test_goals_compare_with_the_baseline_the_composite_and_stage1():
    from pipelines.devtools.recipe.card import goals

    met = {g: ok for g, ok, _ in goals(SCORES)}
    assert met == {"fMSE below the baseline engine's": False, "fMSE at most 0.6x the composite's": True,
                   "the refiner improves on stage 1 alone": True}
    assert not goals({**SCORES, "stage1+refiner": {**SCORES["stage1+refiner"], "fmse": 700.0}})[1][1]


def test_install_copies_weights_declares_sizes_and_writes_the_card(tiny_checkpoint, tmp_path):
    from pipelines.devtools.recipe.card import install_model

    log = {"recipe": "configs/recipes/demo", "commit": "x", "machine": "test",
           "steps": {"01-photos": {"run": "photos", "seconds": 1.0,
                                   "config": {"train": ["astronaut"], "holdout": ["chelsea"], "crops": 3, "side": 32}},
                     "08-evaluate": {"run": "evaluate", "seconds": 2.0, "result": SCORES}}}
    dest = tmp_path / "weights"
    (dest / "stale").mkdir(parents=True)  # a previous install is replaced, not merged into
    cfg = {"model": str(tiny_checkpoint), "dest": str(dest), "class_sizes": [64, 128], "evaluate_step": "08-evaluate",
           "notes": ["a note"]}
    install_model(cfg, log, echo=lambda *a: None)
    assert not (dest / "stale").exists()
    assert (dest / "unet" / "diffusion_pytorch_model.safetensors").exists()
    index = json.loads((dest / "model_index.json").read_text())["harmony"]
    assert index["class_sizes"] == [64, 128] and index["random_weights"] is False
    card = (dest / "MODEL_CARD.md").read_text()
    assert "| stage1+refiner | 550.0 |" in card and "a note" in card and "chelsea" in card
    with pytest.raises(JobError, match="has not run"):
        install_model({**cfg, "evaluate_step": "09-x"}, log)
