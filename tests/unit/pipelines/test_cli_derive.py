"""The command line is derived from the config models: every field a flag with its description as help,
flags not given leave the YAML alone, the flat names reach their nested fields, every flag the README shows
exists, and `harmony bench` parses without pydantic's help."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from pydantic import BaseModel

from pipelines.cli import build_parser, command_flags, load_options
from pipelines.cli.commands import BY_NAME, COMMANDS
from pipelines.config import build

README = Path(__file__).parents[3] / "README.md"


def subparser(name: str):
    p = build_parser(only=name)
    return p._subparsers._group_actions[0].choices[name]


def leaf_fields(model: type[BaseModel], prefix: str = ""):
    for name, f in model.model_fields.items():
        ann = f.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            yield from leaf_fields(ann, f"{prefix}{name}.")
        else:
            yield f"{prefix}{f.alias or name}", f


@pytest.mark.parametrize("cmd", [c for c in COMMANDS if c.name != "bench"], ids=lambda c: c.name)
def test_every_field_is_a_flag_with_its_description(cmd):
    s = subparser(cmd.name)
    by_dest = {a.dest: a for a in s._actions}
    for path, f in leaf_fields(cmd.options_class()):
        action = by_dest.get(path)
        assert action is not None, f"{cmd.name}: field {path} has no flag"
        assert f.description and " ".join(f.description.split()[:4]) in " ".join((action.help or "").split()), path


def test_flags_not_given_leave_the_yaml_and_flat_names_reach_nested_fields(tmp_path):
    (tmp_path / "job.yaml").write_text("manifest: m.csv\noutput: out\nseed: 7\nmodel:\n  steps: 9\n"
                                       "pools:\n  model: {batch_size: 3}\n")
    args = build_parser().parse_args(["harmonize", "--config", str(tmp_path / "job.yaml"), "--steps", "2",
                                      "--gpus-per-actor", "0.5", "--pools.finish.max-workers", "6", "--no-resume"])
    assert command_flags(args) == {"model": {"steps": 2}, "pools": {"model": {"num_gpus": 0.5}, "finish": {"max_workers": 6}},
                                   "resume": False}
    cfg = load_options(args)
    assert (cfg.seed, cfg.model.steps, cfg.pools.model.batch_size, cfg.pools.model.num_gpus) == (7, 2, 3, 0.5)
    assert cfg.pools.finish.max_workers == 6 and cfg.resume is False and cfg.manifest == str(Path("m.csv").resolve())


def test_older_pool_names_are_still_read():
    from pipelines.jobs.evaluate.config import EvaluateJobConfig
    from pipelines.jobs.synthesize.config import SynthesizeJobConfig
    from pipelines.jobs.train.config import TrainJobConfig

    base = {"manifest": "m", "output": "o"}
    assert build(EvaluateJobConfig, None, {**base, "predictions": "p", "pool": {"max_workers": 3}}).pools.evaluate.max_workers == 3
    syn = build(SynthesizeJobConfig, None, {**base, "pool": {"batch_size": 5}, "model_pool": {"batch_size": 7}})
    assert (syn.pools.synthesize.batch_size, syn.pools.model.batch_size) == (5, 7)
    tr = build(TrainJobConfig, None, {"task": "vae", "data": "d", "init": "i", "output": "o", "decode_pool": {"batch_size": 9}})
    assert tr.pools.decode.batch_size == 9
    both = build(TrainJobConfig, None, {"task": "vae", "data": "d", "init": "i", "output": "o",
                                        "decode_pool": {"batch_size": 9, "max_workers": 3},
                                        "pools": {"decode": {"batch_size": 2}}})
    assert (both.pools.decode.batch_size, both.pools.decode.max_workers) == (2, 3)  # the current name wins


def test_a_yaml_shorthand_and_a_nested_flag_combine(tmp_path):

    (tmp_path / "job.yaml").write_text("manifest: m\noutput: o\nfidelity: lighting\nresolution: 512\n")
    (tmp_path / "syn.yaml").write_text("manifest: m\noutput: o\nmodel_pool: {num_gpus: 1}\n")
    args = build_parser().parse_args(["harmonize", "--config", str(tmp_path / "job.yaml"), "--max-chroma-shift", "2",
                                      "--feather", "3"])
    cfg = load_options(args)
    assert (cfg.fidelity.mode, cfg.fidelity.max_chroma_shift) == ("lighting", 2.0)
    assert (cfg.resolution.mode, cfg.resolution.feather) == ("512", 3)
    from pipelines.jobs.synthesize.config import SynthesizeJobConfig

    syn = build(SynthesizeJobConfig, tmp_path / "syn.yaml", {"pools": {"model": {"batch_size": 8}}})
    assert (syn.pools.model.num_gpus, syn.pools.model.batch_size) == (1, 8)


def test_resolution_scalar_is_its_mode():
    from pipelines.jobs.harmonize.config import HarmonizeJobConfig

    assert build(HarmonizeJobConfig, None, {"manifest": "m", "output": "o", "resolution": 1024}).resolution.mode == "1024"


def readme_commands():
    text = README.read_text().replace("\\\n", " ")
    for line in text.splitlines():
        m = re.match(r"\s*(?:\$ )?harmony ([a-z0-9-]+)(.*)", line)
        if m and m.group(1) in BY_NAME:
            yield m.group(1), re.findall(r"(?<![\w-])(--[a-z0-9][a-z0-9.-]*)", m.group(2).split("#")[0])


def test_every_flag_the_readme_shows_exists():
    seen = 0
    for name, flags in readme_commands():
        known = {o for a in subparser(name)._actions for o in a.option_strings}
        for flag in flags:
            assert flag in known, f"README: harmony {name} {flag} is not a flag of the command"
            seen += 1
    assert seen > 40  # the README's examples were found


def test_bench_options_come_from_a_dataclass():
    args = build_parser().parse_args(["bench", "--compile", "--no-sdpa", "--resolution", "32"])
    o = load_options(args)
    assert (o.compile, o.sdpa, o.resolution, o.arch) == ("default", False, "32", "tiny")
    assert load_options(build_parser().parse_args(["bench", "--compile", "max-autotune"])).compile == "max-autotune"
