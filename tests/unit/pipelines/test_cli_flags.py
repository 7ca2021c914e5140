"""The command line's manners: --version, a mistyped flag names the closest one, jpeg is jpg, help texts."""

from __future__ import annotations

import pytest

from pipelines.cli import build_parser, main


def test_version(capsys):
    with pytest.raises(SystemExit) as e:
        main(["--version"])
    assert e.value.code == 0 and capsys.readouterr().out.startswith("harmony ")


def test_a_mistyped_flag_names_the_closest_one(capsys):
    with pytest.raises(SystemExit) as e:
        main(["harmonize", "--manifst", "m.csv", "--output", "out"])
    err = capsys.readouterr().err
    assert e.value.code == 2 and "harmony harmonize: error" in err and "--manifst (did you mean --manifest?)" in err


def test_jpeg_is_jpg():
    from pipelines.config import build
    from pipelines.jobs.harmonize.config import HarmonizeJobConfig

    assert build(HarmonizeJobConfig, None, {"manifest": "m.csv", "output": "o", "image_format": "jpeg"}).image_format == "jpg"
    args = build_parser().parse_args(["harmonize", "--manifest", "m.csv", "--output", "o", "--image-format", "jpeg"])
    assert args.image_format == "jpeg"


def test_image_help_describes_its_positionals_and_seed(capsys):
    with pytest.raises(SystemExit):
        main(["image", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "composite the composite image" in out and "mask its foreground mask" in out and "--seed SEED seed of" in out
