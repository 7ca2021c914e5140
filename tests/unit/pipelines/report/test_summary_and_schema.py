"""The metrics table schema, the summary's aggregation, and the job's configuration key."""

import json
import math
from pathlib import Path

import pandas as pd
import pandera.pandas as pa
import pytest

from pipelines.cli import build_parser, command_flags
from pipelines.config import ModelConfig, build
from pipelines.jobs.harmonize.config import HarmonizeJobConfig
from pipelines.jobs.harmonize.job import config_key
from pipelines.core.run import JobRun
from pipelines.report.summary import aggregate, build_summary, headline
from schemas.metrics import COLUMNS, conform, to_arrow


def rows():
    return pd.DataFrame([
        dict(id="a", row=0, status="ok", composite="c", mask="m", engine="baseline", model="x", config_key="k",
             resolution_mode="auto", scheduler="none", output="o/a.png", width=10, height=8, fg_ratio=0.02,
             fg_bucket="0-5%", subset="S1", psnr=30.0, composite_psnr=25.0, fmse=100.0, composite_fmse=400.0),
        dict(id="b", row=1, status="skipped", composite="c", mask="m", engine="baseline", model="x", config_key="k",
             resolution_mode="auto", scheduler="none", output="o/b.png", width=10, height=8, fg_ratio=0.3,
             fg_bucket="15-100%", subset="S2", psnr=40.0, composite_psnr=35.0, fmse=50.0, composite_fmse=90.0),
        dict(id="c", row=2, status="failed", composite="c", mask="m", engine="baseline", model="x", config_key="k",
             resolution_mode="auto", scheduler="none", error_type="corrupt", error_message="bad", subset="S1"),
        dict(id="../d", row=3, status="invalid", composite="c", mask="m", engine="baseline", model="x",
             config_key="k", resolution_mode="auto", scheduler="none", error_type="invalid_row", error_message="id"),
    ])


def test_conform_types_every_column_and_keeps_extras():
    df = rows().assign(extra=[1, 2, 3, 4])
    out = conform(df)
    assert list(out.columns[: len(COLUMNS)]) == list(COLUMNS) and "extra" in out.columns
    t = to_arrow(df)
    assert str(t.schema.field("width").type) == "int64" and str(t.schema.field("error_type").type) == "string"
    assert str(t.schema.field("psnr").type) == "double"


@pytest.mark.parametrize("change", [
    {"status": "done"},                       # not a status
    {"row": 0},                               # rows are unique
    {"output": None},                         # ok rows have an output
])
def test_schema_rejects_broken_tables(change):
    df = rows()
    for k, v in change.items():
        df.loc[1, k] = v
    with pytest.raises(pa.errors.SchemaErrors):
        conform(df)


def test_failed_rows_need_a_reason():
    df = rows()
    df.loc[2, "error_message"] = None
    with pytest.raises(pa.errors.SchemaErrors):
        conform(df)


def test_aggregate_in_the_papers_layout():
    agg = aggregate(conform(rows()))
    assert agg["all"]["count"] == 2 and agg["all"]["psnr"] == pytest.approx(35.0)
    assert agg["by_subset"]["S1"]["psnr"] == 30.0 and agg["by_subset"]["S2"]["composite_fmse"] == 90.0
    assert agg["by_fg_bucket"]["0-5%"]["count"] == 1 and agg["by_fg_bucket"]["5-15%"]["count"] == 0
    assert agg["by_fg_bucket"]["5-15%"]["psnr"] is None
    assert agg["by_subset_and_fg_bucket"]["S2"]["15-100%"]["psnr"] == 40.0


def test_means_say_how_many_rows_they_are_over_and_count_infinite_values():
    df = rows()
    df.loc[0, "composite_psnr"] = math.inf  # a composite identical to its ground truth
    df.loc[1, ["mse", "fmse"]] = [4.0, None]  # a row with ground truth, one metric missing
    df.loc[0, "mse"] = None
    a = aggregate(conform(df))["all"]
    assert a["count"] == 2 and a["psnr_count"] == 2 and a["psnr_infinite"] == 0
    assert a["composite_psnr"] == 35.0 and a["composite_psnr_count"] == 1 and a["composite_psnr_infinite"] == 1
    assert a["fmse"] == 100.0 and a["fmse_count"] == 1 and a["mse_count"] == 1
    assert a["ssim"] is None and a["ssim_count"] == 0 and a["ssim_infinite"] == 0  # no row has it
    df.loc[1, "composite_psnr"] = math.inf
    s = build_summary(conform(df), 1.0, 1, {})
    assert s["metrics"]["all"]["composite_psnr"] is None and s["metrics"]["all"]["composite_psnr_infinite"] == 2
    json.loads(json.dumps(s, allow_nan=False))  # valid JSON: no NaN or Infinity anywhere
    text = headline(s)  # once crashed: None passed to a number format
    assert "vs ground truth (256 px), 1 of 2 rows: PSNR 35.00 dB (composite n/a)" in text
    assert "left out of the means: composite_psnr 2" in text


def test_headline_without_ground_truth_or_metrics():
    df = rows()
    df[["psnr", "composite_psnr", "fmse", "composite_fmse"]] = None
    df["delta_e_fg"] = [1.5, None, None, None]
    text = headline(build_summary(conform(df), 1.0, 1, {}))
    assert "vs ground truth" not in text and "no-reference over 1 rows: foreground change dE 1.50" in text
    assert "colour gap n/a -> n/a" in text


# Raw credentials in every place s3fs accepts them; each value is unique so a leak names itself.
SECRETS = {"key": "AKIA-RAW-KEY-ID-7731", "secret": "raw-secret-Qx81vL", "token": "raw-token-Zp42Hs",
           "password": "raw-password-Mw09Tc"}
NESTED_SECRETS = {"aws_access_key_id": "AKIA-NESTED-ID-5520", "aws_secret_access_key": "nested-secret-Rb66Jd",
                  "aws_session_token": "nested-token-Kf13Gy"}
RAW_OPTIONS = {**SECRETS, "endpoint_url": "http://minio.internal:9000",
               "client_kwargs": {"region_name": "eu-west-1", **NESTED_SECRETS},
               "config_kwargs": {"retries": {"max_attempts": 2}, "Token": "mixed-case-token-Ve27Ua"}}
ALL_SECRETS = [*SECRETS.values(), *NESTED_SECRETS.values(), "mixed-case-token-Ve27Ua"]


def assert_no_secret(text: str):
    for secret in ALL_SECRETS:
        assert secret not in text, f"{secret!r} in the summary"
    # not simply dropped: the rest of the options are kept, and the secrets say they were there
    assert "http://minio.internal:9000" in text and "eu-west-1" in text and "max_attempts" in text
    assert text.count("***") == len(ALL_SECRETS)


def test_summary_counts_and_secrets():
    # the jobs' own path: the run skeleton's configuration, storage options redacted
    cfg = HarmonizeJobConfig(manifest="s3://b/m.csv", output="s3://b/out", storage_options=RAW_OPTIONS)
    config = JobRun(cfg).config()
    s = build_summary(conform(rows()), 2.0, 1, config)
    assert s["counts"] == {"ok": 1, "skipped": 1, "failed": 1, "invalid": 1}
    assert s["errors_by_type"] == {"corrupt": 1, "invalid_row": 1}
    assert s["throughput"]["images_per_second"] == 0.5 and "torch" in s["versions"]
    assert_no_secret(json.dumps(s))
    assert cfg.storage_options == RAW_OPTIONS  # the job's own options are untouched


def test_harmonize_summary_json_holds_no_secret(tmp_path, monkeypatch):
    """The summary the job itself writes. Every row is invalid, so nothing needs Ray: it is
    stubbed out, and the job runs its real summary path (no S3 needed: local files ignore the
    options)."""
    import ray

    from pipelines.core import run
    from pipelines.jobs.harmonize import job

    monkeypatch.setattr(run, "ensure_ray", lambda *a, **k: None)
    monkeypatch.setattr(ray, "cluster_resources", dict)  # no GPU
    (tmp_path / "m.csv").write_text("id,composite,mask\n../x,c.png,m.png\na/b,c.png,m.png\n")
    cfg = HarmonizeJobConfig(manifest=str(tmp_path / "m.csv"), output=str(tmp_path / "out"),
                             model=ModelConfig(engine="baseline"), storage_options=RAW_OPTIONS)
    printed = []
    result = job.run_harmonize(cfg, echo=lambda *a, **k: printed.append(" ".join(map(str, a))))
    assert result.summary["counts"]["invalid"] == 2
    written = (tmp_path / "out" / "summary.json").read_text()
    assert json.loads(written) == result.summary
    assert_no_secret(written)
    for text in (json.dumps(result.summary), result.metrics.to_csv(), "\n".join(printed)):
        assert not any(secret in text for secret in ALL_SECRETS)


def test_config_key_changes_with_what_changes_pixels():
    base = HarmonizeJobConfig(manifest="m.csv", output="o")
    k = config_key(base, "model-a")
    assert k == config_key(base.model_copy(update={"limit": 3, "retries": 0}), "model-a")
    assert k != config_key(base, "model-b")
    assert k != config_key(base.model_copy(update={"seed": 1}), "model-a")
    assert k != config_key(base.model_copy(update={"image_format": "jpg"}), "model-a")


def test_example_config_loads_and_flags_win():
    example = Path(__file__).parents[4] / "configs" / "harmonize.example.yaml"
    args = build_parser().parse_args(["harmonize", "--config", str(example), "--steps", "3", "--actors", "2,8",
                                      "--batch-size", "6", "--gpus-per-actor", "0.5", "--no-resume",
                                      "--storage-option", "endpoint_url=http://other:9000"])
    cfg = build(HarmonizeJobConfig, args.config, command_flags(args))
    assert cfg.model.steps == 3 and cfg.model.scheduler == "euler_a"  # flag wins, YAML kept
    assert (cfg.pools.model.min_workers, cfg.pools.model.max_workers) == (2, 8)
    assert cfg.pools.model.batch_size == 6 and cfg.pools.model.num_gpus == 0.5
    assert cfg.pools.decode.max_workers == 16 and cfg.resume is False
    assert cfg.storage_options == {"endpoint_url": "http://other:9000"}
    assert cfg.max_failed_fraction == 0.05
