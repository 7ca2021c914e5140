"""pipelines/config.py: defaults < YAML < flags, field-naming errors, engine defaults, YAML loading."""

from __future__ import annotations

import os

import pytest

from harmony_ops.engines import DEFAULT_REFINE_MAX_PIXELS
from harmony_ops.resolution import ResolutionPolicy
from pipelines.config import ConfigError, ModelConfig, PoolConfig, ResolutionConfig, build, deep_merge, load_yaml
from pipelines.jobs.harmonize.config import HarmonizeJobConfig
from pipelines.jobs.image.config import ImageJobConfig

IMAGE_FLAGS = {"composite": "c.png", "mask": "m.png", "output": "o.png"}
JOB_FLAGS = {"manifest": "m.csv", "output": "out/"}


def write_yaml(tmp_path, text: str, name: str = "job.yaml"):
    p = tmp_path / name
    p.write_text(text)
    return p


# --- precedence -------------------------------------------------------------------------------


def test_defaults_when_nothing_given():
    cfg = build(ImageJobConfig, None, dict(IMAGE_FLAGS))
    assert cfg.seed == 0
    assert cfg.model.steps == 5
    assert cfg.model.scheduler == "euler_a"
    assert cfg.model.refiner == "auto"
    assert cfg.model.dtype == "auto"
    assert cfg.model.allow_pickle is False
    assert cfg.model.refine_max_pixels == DEFAULT_REFINE_MAX_PIXELS
    assert cfg.resolution.mode == "auto"
    assert cfg.resolution.feather == 0
    assert cfg.storage_options == {}


def test_yaml_overrides_defaults_and_flags_override_yaml(tmp_path):
    y = write_yaml(
        tmp_path,
        "seed: 7\nmodel:\n  model: /ckpt\n  steps: 2\n  scheduler: ddim\nresolution:\n  feather: 3\n",
    )
    # YAML only
    cfg = build(ImageJobConfig, y, dict(IMAGE_FLAGS))
    assert (cfg.seed, cfg.model.steps, cfg.model.scheduler, cfg.resolution.feather) == (7, 2, "ddim", 3)
    # flags win, per field; fields the flags leave out keep their YAML values
    cfg = build(ImageJobConfig, y, {**IMAGE_FLAGS, "seed": 9, "model": {"steps": 4}})
    assert cfg.seed == 9
    assert cfg.model.steps == 4
    assert cfg.model.scheduler == "ddim"  # nested merge, not replacement of the whole `model` block
    assert cfg.model.model == "/ckpt"
    assert cfg.resolution.feather == 3


def test_none_flags_mean_not_given(tmp_path):
    y = write_yaml(tmp_path, "seed: 7\nmodel:\n  steps: 2\n  engine: baseline\nstorage_options:\n  anon: true\n")
    flags = {
        **IMAGE_FLAGS,
        "seed": None,
        "model": {"steps": None, "engine": None, "scheduler": None},
        "resolution": {"mode": None, "feather": None},
        "storage_options": None,
    }
    cfg = build(ImageJobConfig, y, flags)
    assert cfg.seed == 7
    assert cfg.model.steps == 2
    assert cfg.model.engine == "baseline"
    assert cfg.resolution.mode == "auto"
    assert cfg.storage_options == {"anon": True}


def test_falsy_flags_other_than_none_still_override(tmp_path):
    y = write_yaml(tmp_path, "manifest: y.csv\noutput: y/\nseed: 7\nresume: true\n")
    cfg = build(HarmonizeJobConfig, y, {"seed": 0, "resume": False})
    assert cfg.seed == 0
    assert cfg.resume is False
    assert cfg.manifest == os.path.abspath("y.csv")  # YAML supplies required fields (made absolute)


def test_flags_alone_without_yaml():
    cfg = build(HarmonizeJobConfig, None, {**JOB_FLAGS, "pools": {"model": {"batch_size": 8, "num_gpus": None}}})
    assert cfg.pools.model.batch_size == 8
    assert cfg.pools.model.num_gpus is None
    # the other pools keep their own defaults
    assert cfg.pools.decode.max_workers == 4 and cfg.pools.decode.num_gpus == 0
    assert cfg.pools.model.max_workers == 1


def test_deep_merge_is_recursive_and_does_not_mutate():
    base = {"a": {"b": 1, "c": 2}, "d": 1}
    over = {"a": {"c": 3}, "e": 4}
    out = deep_merge(base, over)
    assert out == {"a": {"b": 1, "c": 3}, "d": 1, "e": 4}
    assert base == {"a": {"b": 1, "c": 2}, "d": 1}


# --- errors name the field ---------------------------------------------------------------------


def test_steps_out_of_range_names_model_steps():
    with pytest.raises(ConfigError) as ei:
        build(ImageJobConfig, None, {**IMAGE_FLAGS, "model": {"engine": "baseline", "steps": 0}})
    assert "model.steps" in str(ei.value)
    assert "invalid configuration" in str(ei.value)


def test_steps_from_yaml_out_of_range_names_the_field(tmp_path):
    y = write_yaml(tmp_path, "model:\n  steps: 5000\n")
    with pytest.raises(ConfigError, match=r"model\.steps"):
        build(ImageJobConfig, y, dict(IMAGE_FLAGS))


def test_pool_max_smaller_than_min_names_the_pool():
    with pytest.raises(ConfigError) as ei:
        build(HarmonizeJobConfig, None, {**JOB_FLAGS, "pools": {"model": {"min_workers": 3, "max_workers": 2}}})
    msg = str(ei.value)
    assert "pools.model" in msg
    assert "max_workers (2) < min_workers (3)" in msg


def test_pool_config_accepts_equal_min_and_max():
    assert PoolConfig(min_workers=2, max_workers=2).max_workers == 2


def test_pool_custom_resources_reach_map_batches():
    """`pools.<pool>.resources` (custom Ray resources) is passed to `map_batches(resources=...)`,
    for actor and task stages; unset, no `resources` is passed; CPU/GPU and amounts <= 0 are refused."""
    from pipelines.core.adapter import apply_stages
    from pipelines.core.stage import Stage

    cfg = build(HarmonizeJobConfig, None, {**JOB_FLAGS, "pools": {"model": {"resources": {"model_host": 1}}}})
    assert cfg.pools.model.resources == {"model_host": 1.0} and cfg.pools.decode.resources == {}

    class Recorder:
        def map_batches(self, fn, **kwargs):
            self.kwargs = kwargs
            return self

    for stateful in (True, False):
        for pool, expected in ((cfg.pools.model, {"model_host": 1.0}), (cfg.pools.decode, None)):
            stage = type("Probe", (Stage,), {"stateful": stateful, "name": "probe"})()
            stage.pool = pool.on_cluster(False)
            got = apply_stages(Recorder(), [stage], inputs=()).kwargs
            assert got.get("resources") == expected, (stateful, got)
    for bad in ({"CPU": 1}, {"GPU": 1}, {"model_host": 0}):
        with pytest.raises(ConfigError, match=r"pools\.model"):
            build(HarmonizeJobConfig, None, {**JOB_FLAGS, "pools": {"model": {"resources": bad}}})


def test_unknown_scheduler_is_rejected_with_choices():
    with pytest.raises(ConfigError) as ei:
        build(ImageJobConfig, None, {**IMAGE_FLAGS, "model": {"model": "/ckpt", "scheduler": "plms"}})
    msg = str(ei.value)
    assert "model.scheduler" in msg
    assert "'plms'" in msg
    assert "euler_a" in msg  # lists the choices


@pytest.mark.parametrize("name", ["euler_a", "euler", "ddim", "dpmpp_2m"])
def test_known_schedulers_accepted(name):
    assert ModelConfig(model="/ckpt", scheduler=name).scheduler == name


def test_a_missing_embedded_model_says_how_to_get_it(tmp_path, monkeypatch):
    import harmony_ops.defaults as defaults
    from harmony_ops.checkpoints import CheckpointError, resolve

    monkeypatch.setattr(defaults, "EMBEDDED_MODEL_DIR", tmp_path / "weights" / "demo")
    with pytest.raises(CheckpointError, match="make model.*--engine baseline"):
        resolve(str(tmp_path / "weights" / "demo"))


def test_unknown_engine_names_the_field():
    with pytest.raises(ConfigError, match=r"model\.engine"):
        build(ImageJobConfig, None, {**IMAGE_FLAGS, "model": {"engine": "magic"}})


@pytest.mark.parametrize(
    "flags,where",
    [
        ({"colour": 1}, "colour"),
        ({"model": {"engine": "baseline", "stepz": 3}}, "model.stepz"),
        ({"resolution": {"mode": "auto", "size": 3}}, "resolution.size"),
    ],
)
def test_unknown_keys_are_rejected(flags, where):
    with pytest.raises(ConfigError) as ei:
        build(ImageJobConfig, None, {**IMAGE_FLAGS, **flags})
    msg = str(ei.value)
    assert where in msg
    assert "Extra inputs are not permitted" in msg


def test_unknown_key_in_yaml_is_rejected(tmp_path):
    y = write_yaml(tmp_path, "pools:\n  model:\n    gpus: 1\n")
    with pytest.raises(ConfigError, match=r"pools\.model\.gpus"):
        build(HarmonizeJobConfig, y, dict(JOB_FLAGS))


def test_missing_required_field_is_named():
    with pytest.raises(ConfigError, match=r"manifest"):
        build(HarmonizeJobConfig, None, {"output": "o/"})


def test_several_errors_are_all_listed():
    with pytest.raises(ConfigError) as ei:
        build(HarmonizeJobConfig, None, {**JOB_FLAGS, "image_format": "gif", "retries": 99})
    msg = str(ei.value)
    assert "image_format" in msg and "retries" in msg


# --- engine default ---------------------------------------------------------------------------


def test_engine_diffharmony_without_model_is_the_embedded_model_and_unset_follows_the_benchmark():
    from harmony_ops.defaults import EMBEDDED_MODEL_DIR, default_engine, is_embedded

    cfg = build(ImageJobConfig, None, {**IMAGE_FLAGS, "model": {"engine": "diffharmony"}})
    assert cfg.model.engine == "diffharmony" and not cfg.model.by_default
    assert cfg.model.model == str(EMBEDDED_MODEL_DIR) and is_embedded(cfg.model.model)
    cfg = build(ImageJobConfig, None, dict(IMAGE_FLAGS))
    assert cfg.model.engine == default_engine() and cfg.model.by_default  # harmony_ops/weights/demo/quality.json
    assert build(ImageJobConfig, None, {**IMAGE_FLAGS, "model": {"model": "/ckpt"}}).model.engine == "diffharmony"
    assert not is_embedded("/ckpt") and not is_embedded("s3://b/harmony_ops/weights/demo")


def test_baseline_engine_stays_available_without_model():
    cfg = build(ImageJobConfig, None, {**IMAGE_FLAGS, "model": {"engine": "baseline"}})
    assert cfg.model.engine == "baseline" and cfg.model.model is None
    assert cfg.model.engine_kwargs() == {}


def test_inverse_synthesis_never_falls_back_to_the_embedded_stage1_model():
    from pipelines.jobs.synthesize.config import SynthesizeJobConfig

    with pytest.raises(ConfigError, match="inverse model"):
        build(SynthesizeJobConfig, None, {"manifest": "m.csv", "output": "o", "method": "inverse"})


def test_a_model_declares_its_class_sizes_unless_the_config_sets_them():
    from pipelines.config import ResolutionConfig

    r = ResolutionConfig()
    r.adopt_class_sizes((64, 128))
    assert tuple(r.class_sizes) == (64, 128)
    r.adopt_class_sizes(None)
    assert tuple(r.class_sizes) == (64, 128)
    fixed = ResolutionConfig(class_sizes=(256, 512))
    fixed.adopt_class_sizes((64, 128))
    assert tuple(fixed.class_sizes) == (256, 512)


def test_engine_defaults_to_diffharmony_with_model():
    cfg = build(ImageJobConfig, None, {**IMAGE_FLAGS, "model": {"model": "/ckpt", "steps": 3}})
    assert cfg.model.engine == "diffharmony"
    kw = cfg.model.engine_kwargs({"anon": True})
    assert kw["model"] == "/ckpt"
    assert kw["steps"] == 3
    assert kw["storage_options"] == {"anon": True}
    assert kw["refiner"] == "auto"


def test_explicit_baseline_with_model_stays_baseline():
    cfg = ModelConfig(engine="baseline", model="/ckpt")
    assert cfg.engine == "baseline"
    assert cfg.engine_kwargs() == {}


def test_engine_default_from_yaml_model(tmp_path):
    y = write_yaml(tmp_path, "model:\n  model: s3://bucket/ckpt\n")
    cfg = build(ImageJobConfig, y, dict(IMAGE_FLAGS))
    assert cfg.model.engine == "diffharmony"


# --- YAML loading -----------------------------------------------------------------------------


def test_yaml_not_a_mapping(tmp_path):
    y = write_yaml(tmp_path, "- a\n- b\n")
    with pytest.raises(ConfigError, match="must hold a mapping"):
        build(ImageJobConfig, y, dict(IMAGE_FLAGS))


def test_yaml_missing_file(tmp_path):
    missing = tmp_path / "nope.yaml"
    with pytest.raises(ConfigError) as ei:
        load_yaml(missing)
    assert str(missing) in str(ei.value) and "does not exist" in str(ei.value)


def test_yaml_invalid(tmp_path):
    y = write_yaml(tmp_path, "model: [unclosed\n")
    with pytest.raises(ConfigError) as ei:
        load_yaml(y)
    assert "is not valid YAML" in str(ei.value)
    assert str(y) in str(ei.value)


def test_yaml_empty_file_and_no_path_are_empty(tmp_path):
    assert load_yaml(write_yaml(tmp_path, "")) == {}
    assert load_yaml(None) == {}
    assert load_yaml("") == {}


def test_config_error_is_a_value_error():
    # the CLI catches ValueError and ConfigError alike; keep the hierarchy
    assert issubclass(ConfigError, ValueError)


def test_yaml_path_is_a_directory(tmp_path):
    with pytest.raises(ConfigError):
        load_yaml(tmp_path)


# --- resolution -------------------------------------------------------------------------------


@pytest.mark.parametrize("value,expected", [(512, "512"), (1024, "1024"), ("512", "512"), ("auto", "auto")])
def test_resolution_mode_accepts_ints(value, expected):
    assert ResolutionConfig(mode=value).mode == expected


def test_resolution_mode_int_from_yaml(tmp_path):
    y = write_yaml(tmp_path, "resolution:\n  mode: 1024\n")
    assert build(ImageJobConfig, y, dict(IMAGE_FLAGS)).resolution.mode == "1024"


@pytest.mark.parametrize("value", [256, "768", "big"])
def test_resolution_mode_rejects_other_values(value):
    with pytest.raises(ConfigError, match=r"resolution\.mode"):
        build(ImageJobConfig, None, {**IMAGE_FLAGS, "resolution": {"mode": value}})


def test_resolution_policy_carries_the_fields():
    rc = ResolutionConfig(
        mode=512, small_fg_ratio=0.1, crop_target_fg_ratio=0.3, large_region_pixels=1000, class_sizes=(64, 128)
    )
    p = rc.policy()
    assert isinstance(p, ResolutionPolicy)
    assert p.mode == "512"
    assert p.small_fg_ratio == 0.1
    assert p.crop_target_fg_ratio == 0.3
    assert p.large_region_pixels == 1000
    assert tuple(p.class_sizes) == (64, 128)


def test_resolution_class_sizes_from_yaml_list(tmp_path):
    y = write_yaml(tmp_path, "resolution:\n  class_sizes: [64, 128]\n")
    cfg = build(ImageJobConfig, y, dict(IMAGE_FLAGS))
    assert tuple(cfg.resolution.policy().class_sizes) == (64, 128)


def test_validate_assignment_checks_later_changes():
    cfg = ModelConfig(model="/ckpt")
    with pytest.raises(ValueError):
        cfg.steps = 0


# --- the model pool per engine -----------------------------------------------------------------


def test_baseline_model_pool_takes_a_light_cpu_share_and_no_gpu():
    from pipelines.jobs.harmonize.job import BASELINE_MODEL_CPUS, model_pool

    cfg = build(HarmonizeJobConfig, None, {**JOB_FLAGS, "model": {"engine": "baseline"}})
    assert cfg.model.engine == "baseline"
    for has_gpu in (False, True):
        pool = model_pool(cfg, has_gpu)
        assert (pool.num_cpus, pool.num_gpus) == (BASELINE_MODEL_CPUS, 0.0)
    # a pool given without num_cpus (--batch-size, --actors) still gets the light share
    cfg = build(HarmonizeJobConfig, None, {**JOB_FLAGS, "model": {"engine": "baseline"}, "pools": {"model": {"batch_size": 8}}})
    assert model_pool(cfg, False).num_cpus == BASELINE_MODEL_CPUS


def test_model_pool_keeps_what_the_configuration_sets():
    from pipelines.jobs.harmonize.job import model_pool

    cfg = build(HarmonizeJobConfig, None, {**JOB_FLAGS, "pools": {"model": {"num_cpus": 2, "num_gpus": 0.5}}})
    assert (model_pool(cfg, True).num_cpus, model_pool(cfg, True).num_gpus) == (2, 0.5)
    diff = build(HarmonizeJobConfig, None, {**JOB_FLAGS, "model": {"model": "ckpt/"}})
    assert diff.model.engine == "diffharmony"
    assert (model_pool(diff, True).num_cpus, model_pool(diff, True).num_gpus) == (1.0, 1.0)
    assert model_pool(diff, False).num_gpus == 0.0
