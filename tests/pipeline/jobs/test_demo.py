"""`harmony demo --s3`: sample composites, embedded S3 server, the whole job, results copied back."""

import json

import pytest

from pipelines.devtools.demo.demo import build_demo_data, run_demo

pytestmark = pytest.mark.pipeline


def test_demo_data_has_every_foreground_bucket(tmp_path):
    import pandas as pd

    manifest = build_demo_data(tmp_path, n=6)
    df = pd.read_csv(manifest)
    assert len(df) == 6 and df["id"].is_unique
    for col in ("composite", "mask", "real"):
        assert all((tmp_path / p).exists() for p in df[col])


def test_demo_through_embedded_s3(ray_local, tmp_path, capsys):
    code = run_demo(output=str(tmp_path / "demo"), s3=True, images=3, engine="baseline")
    assert code == 0
    summary = json.loads((tmp_path / "demo" / "results-s3" / "summary.json").read_text())
    assert summary["counts"]["ok"] == 3
    # the baseline engine brings the foreground closer to the ground truth than the composite
    a = summary["metrics"]["all"]
    assert a["fmse"] < a["composite_fmse"]
    assert len(list((tmp_path / "demo" / "results-s3" / "images").iterdir())) == 3
    out = capsys.readouterr().out
    assert "engine baseline" in out and "embedded S3 endpoint" in out


def test_demo_runs_both_engines_side_by_side(ray_local, tmp_path, capsys):
    from harmony_ops.defaults import EMBEDDED_MODEL_DIR, default_engine

    code = run_demo(output=str(tmp_path / "demo"), images=2)
    assert code == 0
    first, other = default_engine(), {"baseline": "diffharmony", "diffharmony": "baseline"}[default_engine()]
    summary = json.loads((tmp_path / "demo" / "results" / "summary.json").read_text())
    assert summary["counts"]["ok"] == 2 and summary["config"]["model"]["engine"] == first
    second = json.loads((tmp_path / "demo" / f"results-{other}" / "summary.json").read_text())
    assert second["counts"]["ok"] == 2 and second["config"]["model"]["engine"] == other
    model = summary if first == "diffharmony" else second
    assert model["config"]["model"]["model"] == str(EMBEDDED_MODEL_DIR)
    # the model's declared inference sizes were adopted (stage 1 at 64 / 128 px, not 512 / 1024)
    assert list(model["config"]["resolution"]["class_sizes"]) == [64, 128]
    # one report with both: each row's review images hold the other engine's output as the compare method
    comparison = tmp_path / "demo" / "comparison"
    import pandas as pd

    m = pd.read_parquet(comparison / "metrics" / "metrics.parquet")
    assert (m["status"] == "ok").all() and m["compare_fmse"].notna().all()
    assert all("compare." in r for r in m["review"])
    assert (comparison / "report.html").exists()
    out = capsys.readouterr().out
    assert "by default:" in out and "side by side" in out and f"{other} (results-{other}/)" in out
