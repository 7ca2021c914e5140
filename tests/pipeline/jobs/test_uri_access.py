"""Where a row may read from, through the CLI on local Ray: rows outside the manifest's storage and the
--allow-uri prefixes are `invalid` / `uri_not_allowed` before any fetch (a local HTTP server records
every request: it must see none), on local files and on S3 (moto), in parquet, CSV and JSON Lines; the
same rows run once allowed, and an allowed HTTP source that redirects fails its row without the
redirect being followed. The policy itself: tests/unit/pipelines/io/test_access.py."""

from __future__ import annotations

import os

import pandas as pd
import pyarrow.parquet as pq
import pytest

from pipelines.cli import main
from pipelines.io.storage import arrow_filesystem, filesystem
from tests.http_server import serve
from tests.pipeline.conftest import enc, make_scene
from tests.unit.pipelines.test_uri_access import FORMATS, write_manifest

pytestmark = pytest.mark.pipeline

COMP, MASK, REAL = (enc(a) for a in make_scene(1))


def metrics(uri: str, opts: dict | None = None) -> pd.DataFrame:
    fs, path = arrow_filesystem(f"{uri}/metrics/metrics.parquet", opts)
    return pq.read_table(path, filesystem=fs).to_pandas().set_index("id")


def reasons(m: pd.DataFrame) -> dict[str, tuple[str, str | None]]:
    return {i: (r["status"], None if pd.isna(r["error_type"]) else r["error_type"]) for i, r in m.iterrows()}


@pytest.fixture
def local_data(tmp_path):
    """data/ holds the manifest and c.png, m.png, r.png and link.png -> outside/c.png; outside/ lies beside it."""
    data, outside = tmp_path / "data", tmp_path / "outside"
    for folder in (data, outside):
        folder.mkdir()
        (folder / "c.png").write_bytes(COMP)
        (folder / "m.png").write_bytes(MASK)
        (folder / "r.png").write_bytes(REAL)
    (data / "link.png").symlink_to(outside / "c.png")
    return data, outside


# One manifest format through the whole job: the policy sits in prepare_rows, after the reader, and the
# three readers are covered through the CLI by tests/unit/pipelines/test_uri_access.py (validate) and
# by synthesize below, whose Ray Data readers differ per format.
@pytest.mark.parametrize("fmt", ["jsonl"])
def test_harmonize_reads_only_the_manifest_folder_and_allowed_prefixes(ray_local, local_data, tmp_path, fmt):
    data, outside = local_data
    with serve({"/c.png": COMP}) as elsewhere, \
            serve({"/c.png": COMP}, {"/r.png": f"{elsewhere.url}/c.png"}) as server:
        rows = pd.DataFrame([
            {"id": "ok", "composite": "c.png", "mask": "m.png"},
            {"id": "http", "composite": f"{server.url}/c.png", "mask": "m.png"},
            {"id": "redirect", "composite": f"{server.url}/r.png", "mask": "m.png"},
            {"id": "metadata", "composite": "c.png", "mask": "http://169.254.169.254/latest/meta-data/"},
            {"id": "etc", "composite": "/etc/hostname", "mask": "m.png"},
            {"id": "passwd", "composite": "file:///etc/passwd", "mask": "m.png"},
            {"id": "up", "composite": "../outside/c.png", "mask": "m.png"},
            {"id": "link", "composite": "link.png", "mask": "m.png"},
        ])
        (data / f"manifest.{fmt}").write_bytes(write_manifest(rows, fmt))
        base = ["harmonize", "--manifest", str(data / f"manifest.{fmt}"), "--engine", "baseline"]

        assert main([*base, "--output", str(tmp_path / "out")]) == 0
        m = metrics(str(tmp_path / "out"))
        assert reasons(m) == {"ok": ("ok", None), **{i: ("invalid", "uri_not_allowed") for i in rows["id"][1:]}}
        assert m.at["etc", "error_message"].startswith("composite: '/etc/hostname' is not allowed: outside the manifest")
        assert f"composite: '{server.url}/c.png' is not allowed: HTTP(S)" in m.at["http", "error_message"]
        assert server.seen() == [] and elsewhere.seen() == []  # nothing was requested

        allow = ["--allow-uri", f"{server.url}/", "--allow-uri", str(outside)]
        assert main([*base, "--output", str(tmp_path / "allowed"), *allow]) == 0
        m = metrics(str(tmp_path / "allowed"))
        assert reasons(m) == {
            "ok": ("ok", None), "http": ("ok", None), "up": ("ok", None), "link": ("ok", None),
            "redirect": ("failed", "uri_not_allowed"),  # allowed, but its redirect is not followed
            "metadata": ("invalid", "uri_not_allowed"), "etc": ("invalid", "uri_not_allowed"),
            "passwd": ("invalid", "uri_not_allowed"),
        }
        assert "redirects are not followed" in m.at["redirect", "error_message"]
        assert sorted(set(server.seen())) == ["GET /c.png", "GET /r.png"]
        assert elsewhere.seen() == []


def test_harmonize_on_s3_reads_only_the_manifest_bucket_and_allowed_prefixes(ray_local, s3_bucket):
    import boto3

    bucket, opts = s3_bucket
    # Credentials as storage options: Ray workers started before the S3 fixture lack them in their environment.
    flags = [f"endpoint_url={opts['endpoint_url']}", f"key={os.environ['AWS_ACCESS_KEY_ID']}",
             f"secret={os.environ['AWS_SECRET_ACCESS_KEY']}"]
    opts = {**opts, "key": os.environ["AWS_ACCESS_KEY_ID"], "secret": os.environ["AWS_SECRET_ACCESS_KEY"]}
    other = f"{bucket}-evil"  # a lookalike of the manifest's bucket
    boto3.client("s3", endpoint_url=opts["endpoint_url"], region_name="us-east-1").create_bucket(Bucket=other[5:])
    fs, _ = filesystem(bucket, opts)
    for b in (bucket, other):
        fs.pipe_file(f"{b[5:]}/data/c.png", COMP)
        fs.pipe_file(f"{b[5:]}/data/m.png", MASK)
    rows = pd.DataFrame([
        {"id": "same", "composite": "c.png", "mask": f"{bucket}/data/m.png"},
        {"id": "other", "composite": f"{other}/data/c.png", "mask": "m.png"},
        {"id": "traversal", "composite": f"{bucket}/../{other[5:]}/data/c.png", "mask": "m.png"},
        {"id": "local", "composite": "c.png", "mask": "/etc/hostname"},
    ])
    fs.pipe_file(f"{bucket[5:]}/data/manifest.parquet", write_manifest(rows, "parquet"))
    base = ["harmonize", "--manifest", f"{bucket}/data/manifest.parquet", "--engine", "baseline"]
    base += [x for f in flags for x in ("--storage-option", f)]

    assert main([*base, "--output", f"{bucket}/out"]) == 0
    m = metrics(f"{bucket}/out", opts)
    assert reasons(m) == {"same": ("ok", None), **{i: ("invalid", "uri_not_allowed") for i in ("other", "traversal", "local")}}
    assert f"outside the manifest's storage ({bucket})" in m.at["other", "error_message"]

    assert main([*base, "--output", f"{bucket}/allowed", "--allow-uri", other]) == 0
    m = metrics(f"{bucket}/allowed", opts)
    # Both readings of the traversal are allowed now; S3 takes `..` literally (a key in the manifest's bucket).
    assert reasons(m) == {"same": ("ok", None), "other": ("ok", None), "traversal": ("failed", "missing_object"),
                          "local": ("invalid", "uri_not_allowed")}


def test_evaluate_reads_only_the_manifest_folder_and_allowed_prefixes(ray_local, local_data, tmp_path):
    data, outside = local_data
    preds = tmp_path / "preds"  # the operator names the predictions folder: allowed without a prefix
    preds.mkdir()
    for i in ("ok", "http", "etc", "up"):
        (preds / f"{i}.png").write_bytes(REAL)
    with serve({"/r.png": REAL}) as server:
        pd.DataFrame([
            {"id": "ok", "composite": "c.png", "mask": "m.png", "real": "r.png"},
            {"id": "http", "composite": "c.png", "mask": "m.png", "real": f"{server.url}/r.png"},
            {"id": "etc", "composite": "c.png", "mask": "m.png", "real": "/etc/hostname"},
            {"id": "up", "composite": "c.png", "mask": "m.png", "real": "../outside/r.png"},
        ]).to_csv(data / "manifest.csv", index=False)
        base = ["evaluate", "--manifest", str(data / "manifest.csv"), "--predictions", str(preds), "--no-report"]
        assert main([*base, "--output", str(tmp_path / "ev")]) == 0
        m = metrics(str(tmp_path / "ev"))
        assert reasons(m) == {"ok": ("ok", None), **{i: ("invalid", "uri_not_allowed") for i in ("http", "etc", "up")}}
        assert m.at["up", "error_message"].startswith("real: ")
        assert server.seen() == []
        assert main([*base, "--output", str(tmp_path / "ev2"), "--allow-uri", server.url, "--allow-uri", str(outside)]) == 0
        m = metrics(str(tmp_path / "ev2"))
        assert reasons(m) == {"ok": ("ok", None), "http": ("ok", None), "up": ("ok", None),
                              "etc": ("invalid", "uri_not_allowed")}
        assert server.seen() == ["GET /r.png"]


def synth_args(manifest: str, out: str) -> list[str]:
    return ["synthesize", "--manifest", manifest, "--output", out, "--mask-source", "box", "--kinds", "tone",
            "--fmse-range", "0,1000000", "--seed", "1"]


def params(uri: str, opts: dict | None = None) -> dict[str, tuple[str, str | None]]:
    fs, path = arrow_filesystem(f"{uri}/params.parquet", opts)
    p = pq.read_table(path, filesystem=fs).to_pandas()
    return {r["source_id"]: (r["status"], None if pd.isna(r["reason"]) else r["reason"]) for _, r in p.iterrows()}


@pytest.mark.parametrize("fmt", FORMATS)
def test_synthesize_reads_only_the_manifest_folder_and_allowed_prefixes(ray_local, local_data, tmp_path, fmt, capsys):
    data, outside = local_data
    with serve({"/r.png": REAL}) as server:
        rows = pd.DataFrame([
            {"id": "ok", "real": "r.png"},
            {"id": "http", "real": f"{server.url}/r.png"},
            {"id": "etc", "real": "/etc/hostname"},
            {"id": "up", "real": "../outside/r.png"},
        ])
        manifest = data / f"manifest.{fmt}"
        manifest.write_bytes(write_manifest(rows, fmt))
        assert main(synth_args(str(manifest), str(tmp_path / "out"))) == 0
        got = params(str(tmp_path / "out"))
        assert got == {"ok": ("kept", None), **{i: ("invalid", "uri_not_allowed") for i in ("http", "etc", "up")}}
        assert server.seen() == []
        allow = ["--allow-uri", server.url, "--allow-uri", str(outside)]
        assert main([*synth_args(str(manifest), str(tmp_path / "allowed")), *allow]) == 0
        got = params(str(tmp_path / "allowed"))
        assert got == {"ok": ("kept", None), "http": ("kept", None), "up": ("kept", None),
                       "etc": ("invalid", "uri_not_allowed")}
        assert server.seen() == ["GET /r.png"]
    capsys.readouterr()


def test_synthesize_on_s3_reads_only_the_manifest_bucket_and_allowed_prefixes(ray_local, s3_bucket):
    import boto3

    bucket, opts = s3_bucket
    opts = {**opts, "key": os.environ["AWS_ACCESS_KEY_ID"], "secret": os.environ["AWS_SECRET_ACCESS_KEY"]}
    flags = [x for k in ("endpoint_url", "key", "secret") for x in ("--storage-option", f"{k}={opts[k]}")]
    other = f"{bucket}-evil"
    boto3.client("s3", endpoint_url=opts["endpoint_url"], region_name="us-east-1").create_bucket(Bucket=other[5:])
    fs, _ = filesystem(bucket, opts)
    for b in (bucket, other):
        fs.pipe_file(f"{b[5:]}/data/r.png", REAL)
    rows = pd.DataFrame([{"id": "same", "real": "r.png"}, {"id": "other", "real": f"{other}/data/r.png"}])
    fs.pipe_file(f"{bucket[5:]}/data/manifest.csv", write_manifest(rows, "csv"))
    manifest = f"{bucket}/data/manifest.csv"
    assert main([*synth_args(manifest, f"{bucket}/out"), *flags]) == 0
    assert params(f"{bucket}/out", opts) == {"same": ("kept", None), "other": ("invalid", "uri_not_allowed")}
    assert main([*synth_args(manifest, f"{bucket}/allowed"), *flags, "--allow-uri", f"{other}/data"]) == 0
    assert params(f"{bucket}/allowed", opts) == {"same": ("kept", None), "other": ("kept", None)}
