"""Where rows may read from, without Ray: `harmony validate` on local files and S3 in every manifest
format, HTTP(S) reads that never follow redirects, HTTP(S) checkpoints, and the report (which must not
read invalid rows). The jobs themselves: tests/pipeline/jobs/test_uri_access.py."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from harmony_ops.remote import RedirectRefused
from pipelines.cli import main
from pipelines.core.failures import classify
from pipelines.io.storage import filesystem, fsspec_options, read_bytes
from tests.conftest import png_bytes
from tests.http_server import serve

FORMATS = ["parquet", "csv", "jsonl"]
IMG = png_bytes(np.full((8, 8, 3), 120, np.uint8))
MASK = png_bytes(np.pad(np.full((4, 4), 255, np.uint8), 2))


def write_manifest(df: pd.DataFrame, fmt: str) -> bytes:
    df = df.astype(object)
    if fmt == "parquet":
        return df.to_parquet(index=False)
    if fmt == "csv":
        return df.to_csv(index=False).encode()
    return df.to_json(orient="records", lines=True).encode()


@pytest.fixture
def local_data(tmp_path):
    """data/ (the manifest's folder) with c.png, m.png and link.png -> outside/c.png; outside/c.png beside it."""
    data, outside = tmp_path / "data", tmp_path / "outside"
    data.mkdir()
    outside.mkdir()
    for folder in (data, outside):
        (folder / "c.png").write_bytes(IMG)
        (folder / "m.png").write_bytes(MASK)
    (data / "link.png").symlink_to(outside / "c.png")
    return data, outside


@pytest.mark.parametrize("fmt", FORMATS)
def test_validate_refuses_rows_outside_the_manifest_folder_before_looking_them_up(local_data, fmt, capsys):
    data, outside = local_data
    with serve({"/x.png": IMG}) as server:
        rows = pd.DataFrame([
            {"id": "ok", "composite": "c.png", "mask": "m.png"},
            {"id": "http", "composite": f"{server.url}/x.png", "mask": "m.png"},
            {"id": "etc", "composite": "c.png", "mask": "/etc/hostname"},
            {"id": "passwd", "composite": "file:///etc/passwd", "mask": "m.png"},
            {"id": "up", "composite": "../outside/c.png", "mask": "m.png"},
            {"id": "link", "composite": "link.png", "mask": "m.png"},
        ])
        manifest = data / f"manifest.{fmt}"
        manifest.write_bytes(write_manifest(rows, fmt))
        assert main(["validate", "--manifest", str(manifest)]) == 1
        out = capsys.readouterr().out
        assert "6 rows, 5 invalid, 0 missing objects (2 objects checked)" in out
        assert f"composite: '{server.url}/x.png' is not allowed: HTTP(S) sources" in out
        assert "mask: '/etc/hostname' is not allowed" in out and "composite: 'file:///etc/passwd' is not allowed" in out
        assert server.seen() == []  # refused before any request

        allow = ["--allow-uri", server.url, "--allow-uri", str(outside), "--allow-uri", "/etc/hostname",
                 "--allow-uri", "file:///etc/passwd"]
        assert main(["validate", "--manifest", str(manifest), *allow]) == 0, capsys.readouterr().out
        assert "6 rows, 0 invalid, 0 missing objects (12 objects checked)" in capsys.readouterr().out
        assert server.seen() == ["GET /x.png"]


@pytest.mark.parametrize("fmt", FORMATS)
def test_validate_on_s3_refuses_another_bucket_until_it_is_allowed(s3_bucket, fmt, capsys):
    import boto3

    bucket, opts = s3_bucket
    other = f"{bucket}-evil"  # a lookalike: not the manifest's bucket
    boto3.client("s3", endpoint_url=opts["endpoint_url"], region_name="us-east-1").create_bucket(Bucket=other[5:])
    fs, _ = filesystem(bucket, opts)
    for b in (bucket, other):
        fs.pipe_file(f"{b[5:]}/data/c.png", IMG)
        fs.pipe_file(f"{b[5:]}/data/m.png", MASK)
    rows = pd.DataFrame([
        {"id": "same", "composite": "c.png", "mask": f"{bucket}/data/m.png"},
        {"id": "other", "composite": f"{other}/data/c.png", "mask": "m.png"},
        {"id": "local", "composite": "c.png", "mask": "/etc/hostname"},
    ])
    fs.pipe_file(f"{bucket[5:]}/data/manifest.{fmt}", write_manifest(rows, fmt))
    args = ["validate", "--manifest", f"{bucket}/data/manifest.{fmt}", "--storage-option", f"endpoint_url={opts['endpoint_url']}"]
    assert main(args) == 1
    out = capsys.readouterr().out
    assert f"composite: '{other}/data/c.png' is not allowed: outside the manifest's storage ({bucket})" in out
    assert "mask: '/etc/hostname' is not allowed" in out and "3 rows, 2 invalid" in out
    assert main([*args, "--allow-uri", other, "--allow-uri", "/etc/hostname"]) == 0
    assert "3 rows, 0 invalid, 0 missing objects (6 objects checked)" in capsys.readouterr().out


def test_http_reads_never_follow_a_redirect():
    with serve({"/x.png": IMG}) as elsewhere, serve({"/x.png": IMG}, {"/r.png": f"{elsewhere.url}/x.png"}) as server:
        assert read_bytes(f"{server.url}/x.png") == IMG  # the storage options are not sent to HTTP hosts
        assert read_bytes(f"{server.url}/x.png", {"key": "k", "secret": "s", "endpoint_url": "http://minio"}) == IMG
        with pytest.raises(RedirectRefused, match="redirects are not followed") as ei:
            read_bytes(f"{server.url}/r.png")
        fs, path = filesystem(f"{server.url}/r.png")
        with pytest.raises(RedirectRefused):
            fs.exists(path)
        assert elsewhere.seen() == []
        assert server.seen() == ["GET /x.png", "GET /x.png", "GET /r.png", "GET /r.png"]
    kind, message = classify(ei.value, "decode_error")
    assert kind == "uri_not_allowed" and "302" in message
    assert "secret" not in fsspec_options("https://host/x", {"key": "k", "secret": "s"})


def test_harmonize_refuses_an_http_checkpoint_without_a_prefix_and_never_follows_its_redirects(
        local_data, forbid_ray_start, capsys):
    data, _ = local_data
    pd.DataFrame([{"id": "ok", "composite": "c.png", "mask": "m.png"}]).to_csv(data / "m.csv", index=False)
    with serve({"/x": b"x"}) as elsewhere, serve(redirects={"/ckpt": f"{elsewhere.url}/x",
                                                           "/ckpt/": f"{elsewhere.url}/x"}) as server:
        args = ["harmonize", "--manifest", str(data / "m.csv"), "--output", str(data / "out"), "--model", f"{server.url}/ckpt"]
        assert main(args) == 2
        err = capsys.readouterr().err
        assert f"model.model {server.url}/ckpt: HTTP(S) checkpoints are read only under an allowed prefix" in err
        assert "--allow-uri" in err and server.seen() == []
        assert main([*args, "--allow-uri", f"{server.url}/ckpt"]) == 2
        err = capsys.readouterr().err
        assert "redirects are not followed" in err and server.seen() and elsewhere.seen() == []
        assert main([*args, "--allow-uri", server.url, "--vae", "http://127.0.0.1:9/vae"]) == 2
        assert "model.vae http://127.0.0.1:9/vae: HTTP(S) checkpoints" in capsys.readouterr().err
    assert forbid_ray_start == []


def test_the_report_reads_no_invalid_row(tmp_path):
    from pipelines.report.html import build_report

    with serve({"/bad.png": IMG, "/failed.png": IMG}) as server:
        df = pd.DataFrame([
            {"id": "bad", "row": 0, "status": "invalid", "error_type": "uri_not_allowed", "error_message": "no",
             "composite": f"{server.url}/bad.png", "mask": "m.png", "real": None, "output": None},
            {"id": "failed", "row": 1, "status": "failed", "error_type": "uri_not_allowed", "error_message": "302",
             "composite": f"{server.url}/failed.png", "mask": "m.png", "real": None, "output": None},
        ])
        html = build_report(df, {"counts": {}}, str(tmp_path))
        assert server.seen() == ["GET /failed.png"]
    assert "uri_not_allowed (2)" in html


@pytest.mark.parametrize("job", ["harmonize", "evaluate", "synthesize"])
def test_allow_uri_comes_from_yaml_or_flags_and_bad_prefixes_name_the_field(tmp_path, job):
    from pipelines.config import build
    from pipelines.jobs.evaluate.config import EvaluateJobConfig
    from pipelines.jobs.harmonize.config import HarmonizeJobConfig
    from pipelines.jobs.synthesize.config import SynthesizeJobConfig
    from pipelines.errors import ConfigError

    cls = {"harmonize": HarmonizeJobConfig, "evaluate": EvaluateJobConfig, "synthesize": SynthesizeJobConfig}[job]
    need = {"manifest": "m.csv", "output": "out", **({"predictions": "p"} if job == "evaluate" else {})}
    y = tmp_path / "job.yaml"
    y.write_text("allow_uri: ['s3://images', 'https://cdn.example.com/pub']\n")
    assert build(cls, y, need).allow_uri == ["s3://images", "https://cdn.example.com/pub"]
    assert build(cls, y, {**need, "allow_uri": ["/data"]}).allow_uri == ["/data"]  # flags win, as everywhere
    assert build(cls, None, need).allow_uri == []
    with pytest.raises(ConfigError, match=r"allow_uri.*'http://user@host/'.*credentials"):
        build(cls, None, {**need, "allow_uri": ["http://user@host/"]})
