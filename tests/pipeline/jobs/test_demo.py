"""`harmony demo --s3`: sample composites, embedded S3 server, the whole job, results copied back."""

import json

import pytest

from pipelines.jobs.demo.demo import build_demo_data, run_demo

pytestmark = pytest.mark.pipeline


def test_demo_data_has_every_foreground_bucket(tmp_path):
    import pandas as pd

    manifest = build_demo_data(tmp_path, n=6)
    df = pd.read_csv(manifest)
    assert len(df) == 6 and df["id"].is_unique
    for col in ("composite", "mask", "real"):
        assert all((tmp_path / p).exists() for p in df[col])


def test_demo_through_embedded_s3(ray_local, tmp_path, capsys):
    code = run_demo(output=str(tmp_path / "demo"), s3=True, images=3)
    assert code == 0
    summary = json.loads((tmp_path / "demo" / "results-s3" / "summary.json").read_text())
    assert summary["counts"]["ok"] == 3
    # the baseline engine brings the foreground closer to the ground truth than the composite
    a = summary["metrics"]["all"]
    assert a["fmse"] < a["composite_fmse"]
    assert len(list((tmp_path / "demo" / "results-s3" / "images").iterdir())) == 3
    out = capsys.readouterr().out
    assert "baseline engine" in out and "embedded S3 endpoint" in out
