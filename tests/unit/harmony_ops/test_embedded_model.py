"""The shipped weights (harmony_ops/weights/demo, made by `make model`): they load as the default
model, declare their inference sizes, stay within the size budget, and harmonize held-out
composites better than leaving them untouched."""

from __future__ import annotations

import json

import numpy as np
import pytest

from harmony_ops.defaults import EMBEDDED_MODEL_DIR
from harmony_ops.loader import load_engine
from harmony_ops.metrics import evaluate_arrays
from harmony_ops.regions import finish, prepare
from harmony_ops.resolution import ResolutionPolicy

MAX_BYTES = 20 * 1024 * 1024


def test_the_embedded_model_is_committed_small_and_described():
    files = [p for p in EMBEDDED_MODEL_DIR.rglob("*") if p.is_file()]
    assert sum(p.stat().st_size for p in files) <= MAX_BYTES
    assert {p.suffix for p in files} <= {".safetensors", ".json", ".md"}  # no pickles
    index = json.loads((EMBEDDED_MODEL_DIR / "model_index.json").read_text())["harmony"]
    assert index["random_weights"] is False and index["arch"] == "demo"
    card = json.loads((EMBEDDED_MODEL_DIR / "card.json").read_text())
    held = set(card["photos"]["holdout"])
    assert held and not held & set(card["photos"]["train"])
    assert (EMBEDDED_MODEL_DIR / "MODEL_CARD.md").read_text().count("fMSE") >= 2


def _held_out_cases(n: int = 4):
    """Composites of a photograph the model never saw in training (chelsea), ellipse masks, Lab shifts."""
    pytest.importorskip("skimage")
    from pipelines.devtools.demo.scenes import composite_of
    from pipelines.devtools.recipe.photos import load_photo, random_crops

    rng = np.random.default_rng(123)
    photo = load_photo("chelsea")
    for real in random_crops(photo, n, 256, rng, scale=(0.6, 1.0)):
        real = np.ascontiguousarray(real)
        comp, mask = composite_of(real, rng, float(rng.uniform(0.1, 0.3)))
        yield comp, mask.astype(np.float32) / 255, real


def test_the_embedded_model_beats_the_untouched_composite_on_held_out_photos():
    engine = load_engine("diffharmony", model=str(EMBEDDED_MODEL_DIR), device="cpu")
    assert engine.refiner is not None and engine.class_sizes is not None
    policy = ResolutionPolicy(class_sizes=engine.class_sizes)
    ours, untouched = [], []
    for k, (comp, mask, real) in enumerate(_held_out_cases()):
        item = prepare(comp, mask, policy, resize=engine.needs_resize)
        assert max(item.plan.width, item.plan.height) <= engine.class_sizes[1]
        out = finish(comp, mask, item.plan.region, engine.run([item], [k]).regions[0])
        ours.append(evaluate_arrays(out, real, mask).fmse)
        untouched.append(evaluate_arrays(comp, real, mask).fmse)
    assert np.mean(ours) < np.mean(untouched), (ours, untouched)
