"""The quality section: held-out composites of another photograph source and of perturbation kinds the recipe
never uses, scored for the composite, the baseline, stage 1 and stage 1 + refiner; the rule that picks the
default engine from its recorded figures."""

from __future__ import annotations

import json

import numpy as np
import pytest


from harmony_ops import defaults
from harmony_ops.metrics import evaluate_arrays
from pipelines.devtools.bench import quality_set as qs


@pytest.fixture(scope="module")
def photos():
    return {k: qs.load_rgb(p) for k, p in qs.photo_paths().items()}


def test_the_source_is_not_the_recipes_and_its_photographs_are_found(photos):
    assert set(photos) == set(qs.PHOTOS)
    assert all(p.ndim == 3 and p.shape[2] == 3 and min(p.shape[:2]) >= 250 for p in photos.values())
    from pipelines.devtools.recipe.photos import load_photo

    with pytest.raises(AttributeError):
        load_photo("kiwi")  # the recipe's loader reads scikit-image's photographs only


@pytest.mark.parametrize("kind", qs.KINDS)
def test_every_kind_changes_the_foreground_only_and_clearly(photos, kind):
    cases = [c for c in qs.make_set(1, seed=3, photos=photos) if c.kind == kind]
    assert len(cases) == len(photos)
    for c in cases:
        bg = c.mask < 0.5
        assert np.array_equal(c.composite[bg], c.real[bg])  # the protocol's composites keep the real background
        assert c.composite.shape == c.real.shape == (qs.SIDE, qs.SIDE, 3)
        assert qs.FG_RATIO[0] <= c.mask.mean() <= qs.FG_RATIO[1] + 0.01
    # inharmonious: a composite nearly equal to its ground truth would reward doing nothing
    assert np.mean([evaluate_arrays(c.composite, c.real, c.mask).fmse for c in cases]) > 50


def test_the_set_is_reproducible_and_ids_are_unique(photos):
    a, b = qs.make_set(1, seed=5, photos=photos), qs.make_set(1, seed=5, photos=photos)
    assert [c.id for c in a] == [c.id for c in b] and len({c.id for c in a}) == len(a) == len(qs.KINDS) * len(photos)
    assert all(np.array_equal(x.composite, y.composite) for x, y in zip(a, b))


def _figures(model_share: dict, bound=0.8) -> dict:
    """Benchmark figures where the model's fMSE is share x the composite's (100) per kind."""
    block = lambda s: {"composite": {"fmse": 100.0}, "stage1+refiner": {"fmse": 100.0 * s}}  # noqa: E731
    return {"bound": bound, "by_kind": {k: block(s) for k, s in model_share.items() if k != "overall"},
            "overall": block(model_share["overall"])}


def test_the_rule_needs_every_kind_and_the_overall_mean_within_the_bound():
    assert defaults.meets_bound(_figures({"a": 0.5, "b": 0.8, "overall": 0.7}))
    assert not defaults.meets_bound(_figures({"a": 0.5, "b": 0.81, "overall": 0.7}))  # one kind over
    assert not defaults.meets_bound(_figures({"a": 0.5, "b": 0.6, "overall": 0.9}))
    assert not defaults.meets_bound({"overall": _figures({"overall": 0.1})["overall"]})  # no kinds: no evidence


def test_the_default_engine_follows_the_recorded_figures(tmp_path, monkeypatch):
    from pipelines.config import ModelConfig

    monkeypatch.setattr(defaults, "EMBEDDED_MODEL_DIR", tmp_path)
    assert defaults.default_engine() == "baseline" and "never recorded" in defaults.default_engine_note()
    (tmp_path / defaults.QUALITY_FILE).write_text(json.dumps(_figures({"a": 0.5, "overall": 0.6})))
    assert defaults.default_engine() == "diffharmony" and ModelConfig().engine == "diffharmony"
    (tmp_path / defaults.QUALITY_FILE).write_text(json.dumps(_figures({"a": 1.5, "overall": 0.6})))
    assert ModelConfig().engine == "baseline" and ModelConfig().model is None
    assert "over 0.8x on a" in defaults.default_engine_note()
    assert ModelConfig(model="/ckpt").engine == "diffharmony"  # a model given always runs
    assert ModelConfig(engine="diffharmony").model  # asked for: the embedded model runs


def test_the_shipped_decision_is_the_shipped_figures_of_the_shipped_weights():
    """The recorded figures belong to the weights beside them (a retrained model must be benchmarked again), and
    the default engine is what they say."""
    from harmony_ops.checkpoints import resolve_checkpoint

    q = defaults.embedded_quality()
    assert q is not None, "harmony bench --sections quality --record was never run on the shipped weights"
    assert q["model_id"] == resolve_checkpoint(str(defaults.EMBEDDED_MODEL_DIR)).model_id
    assert set(q["by_kind"]) == set(qs.KINDS)
    from pipelines.config import ModelConfig

    assert ModelConfig().engine == ("diffharmony" if defaults.meets_bound(q) else "baseline")


def test_the_section_scores_each_variant_on_a_tiny_model(tiny_checkpoint):
    from pipelines.devtools.bench.quality import VARIANTS, bench_quality, quality_markdown, record

    q = bench_quality(str(tiny_checkpoint), per_kind=1, photos=("kiwi",), echo=lambda m: None)
    assert q["overall"]["composite"]["n"] == len(qs.KINDS)
    for block in (*q["by_kind"].values(), q["overall"]):
        assert set(block) == set(VARIANTS) and all(np.isfinite(block[v]["fmse"]) for v in VARIANTS)
    assert q["meets_bound"] == defaults.meets_bound(q)
    text = "\n".join(quality_markdown(q))
    assert "poisson_paste (unseen)" in text and "| overall |" in text and "| tone |" in text
    path = record(q, tiny_checkpoint)
    assert json.loads(path.read_text())["model_id"] == q["model_id"] and "rows" not in json.loads(path.read_text())
