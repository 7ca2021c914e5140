"""The demo recipe's first steps, for real (Ray Data synthesis, Ray Train), capped to a handful of
rows and steps: the recipe that made the shipped weights still runs from a fresh clone."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

RECIPE = Path(__file__).resolve().parents[3] / "configs" / "recipes" / "demo"


def test_the_demo_recipe_runs_its_first_steps_through_the_vae(tmp_path, ray_local):
    pytest.importorskip("skimage")
    from pipelines.devtools.recipe.runner import run_recipe

    work = tmp_path / "work"
    caps = {"crops": 2, "holdout_crops": 1, "per_image": 1, "max_steps": 2, "validate_every": 2, "batch_size": 2}
    log = run_recipe(RECIPE, work, caps=caps, until="05-vae", echo=lambda *a, **k: None)
    assert list(log["steps"]) == ["01-photos", "02-synthesize-train", "03-synthesize-holdout", "04-checkpoint", "05-vae"]
    train = pd.read_parquet(work / "data" / "train" / "manifest.parquet")
    held = pd.read_parquet(work / "data" / "holdout" / "manifest.parquet")
    assert len(train) and len(held)
    photos = log["steps"]["01-photos"]["config"]
    assert not set(train["subset"]) & set(photos["holdout"])  # held-out photographs never in training
    vae = log["steps"]["05-vae"]["result"]
    assert vae["task"] == "vae" and vae["steps"] == 2 and vae["validation"] is not None
    rows = pd.read_parquet(work / "vae" / "metrics" / "train.parquet")
    assert list(rows["step"]) == [1, 2]
    cfg = json.loads((work / "vae" / "model" / "vae" / "config.json").read_text())
    assert cfg["scaling_factor"] != 0.18215  # re-measured from the trained latents
    assert (work / "vae" / "model" / "unet" / "config.json").exists()  # the rest copied from init
