"""pipelines/io/access.py: where a manifest row may read from (the policy alone; no fetch)."""

from __future__ import annotations

import pandas as pd
import pytest

from pipelines.io.access import AccessPolicy, checkpoint_refusal, parse_prefix
from pipelines.io.manifest import prepare_rows


@pytest.fixture
def tree(tmp_path, monkeypatch):
    """data/m/ holds the manifest; data/other/ and data/m-sibling/ lie beside it; data/m/link -> /etc,
    data/m/inner -> data/m/sub (a symlink that stays inside)."""
    monkeypatch.chdir(tmp_path)
    m = tmp_path / "data" / "m"
    (m / "sub").mkdir(parents=True)
    (tmp_path / "data" / "other").mkdir()
    (tmp_path / "data" / "m-sibling").mkdir()
    (m / "link").symlink_to("/etc")
    (m / "inner").symlink_to(m / "sub")
    (m / "out-file.png").symlink_to(tmp_path / "data" / "other" / "x.png")
    return tmp_path


def local(tree, allow=()):
    return AccessPolicy(str(tree / "data" / "m" / "manifest.csv"), tuple(allow))


@pytest.mark.parametrize("rel", ["data/m/a.png", "data/m/sub/a.png", "data/m/./sub//a.png", "data/m/sub/../a.png",
                                 "data/m/inner/a.png", "data/m/a%20b.png", "data/m/a%2fb.png"])
def test_a_local_manifest_allows_its_own_folder_tree(tree, rel):
    p = local(tree)
    assert p.allows(str(tree / rel)), p.refusal(str(tree / rel))
    assert p.allows("file://" + str(tree / rel))
    assert p.allows("FILE://" + str(tree / rel))  # schemes compare case-insensitively


@pytest.mark.parametrize("uri", [
    "/etc/hostname", "/etc/passwd", "file:///etc/passwd", "FILE:///etc/passwd", "local:///etc/passwd", "file://~/.ssh/id",
    "{t}/data/m/../other/x.png",            # traversal
    "{t}/data/m/sub/../../other/x.png",
    "{t}/data/m-sibling/x.png",             # a name that starts like the folder is not inside it
    "{t}/data/m/link/hostname",             # a symlink out of the folder
    "{t}/data/m/out-file.png",              # a file symlink out of the folder
    "{t}/data/m/%2e%2e/other/x.png",        # percent-encoded dots
    "{t}/data/m/%2E%2E/%2E%2E/x.png",
    "file://{t}/data/m/%2e%2e/other/x.png",
    "{t}/data/m/..\\..\\other\\x.png",       # backslashes
    "{t}/data/m/sub/a\n.png",               # control characters
    "{t}/data",                             # the folder above
    "s3://bucket/a.png", "gs://bucket/a.png", "memory://data/m/a.png",
    "http://127.0.0.1:9/x.png", "https://169.254.169.254/latest/meta-data/", "HTTP://127.0.0.1/x.png",
    "simplecache::file://{t}/data/m/a.png",  # chained URLs
    "zip://a.png::file://{t}/data/m/z.zip",
])
def test_a_local_manifest_refuses_everything_else(tree, uri):
    reason = local(tree).refusal(uri.format(t=tree))
    assert reason


def test_relative_manifest_paths_mean_the_working_folder(tree):
    p = AccessPolicy("manifest.csv")
    assert p.allows("a.png") and p.allows(str(tree / "data" / "x.png"))
    assert not p.allows("/etc/hostname") and not p.allows("../x.png")


@pytest.mark.parametrize("uri, ok", [
    ("s3://bucket/cat/a.png", True), ("s3://bucket/a.png", True), ("s3://bucket/deep/er/a.png", True),
    ("S3://bucket/a.png", True), ("s3a://bucket/a.png", True), ("s3://bucket//a.png", True),
    ("s3://bucket-evil/a.png", False), ("s3://bucke/a.png", False), ("s3://other/a.png", False),
    ("s3://bucket/../other/a.png", False), ("s3://evil/../bucket/a.png", False),
    ("s3://bucket/%2e%2e/other/a.png", False), ("s3://bucket/..%2fother/a.png", False),
    ("s3://bucket\\..\\other/a.png", False), ("gs://bucket/a.png", False), ("/etc/hostname", False),
    ("file:///etc/passwd", False), ("http://bucket/a.png", False), ("s3://", False), ("", False), (None, False),
])
def test_an_s3_manifest_allows_its_bucket_only(uri, ok):
    assert AccessPolicy("s3://bucket/cat/manifest.parquet").allows(uri) is ok


@pytest.mark.parametrize("prefix, uri, ok", [
    ("/data/a", "/data/a/x.png", True), ("/data/a/", "/data/a/x.png", True), ("/data//a", "/data/a/b/x.png", True),
    ("/data/a", "/data/ab/x.png", False), ("/data/a", "/data/x.png", False), ("/data/a", "/data/a/../b/x.png", False),
    ("file:///data/a", "/data/a/x.png", True), ("/data/a", "file:///data/a/x.png", True),
    ("s3://other", "s3://other/x.png", True), ("s3://other", "s3://other-evil/x.png", False),
    ("s3://other/imgs", "s3://other/imgs/x.png", True), ("s3://other/imgs", "s3://other/imgsX/x.png", False),
    ("s3://other/imgs", "s3://other/x.png", False), ("s3://other/imgs", "s3://other/imgs/../x.png", False),
    ("s3://", "s3://any-bucket/x.png", True), ("s3://", "gs://b/x.png", False),
    ("http://127.0.0.1:8000/pub", "http://127.0.0.1:8000/pub/x.png", True),
    ("http://127.0.0.1:8000/pub", "HTTP://127.0.0.1:8000/pub/x.png?v=1", True),
    ("http://127.0.0.1:8000/pub", "http://127.0.0.1:8000/public/x.png", False),
    ("http://127.0.0.1:8000/pub", "http://127.0.0.1:8000/pub/../x.png", False),
    ("http://127.0.0.1:8000/pub", "http://127.0.0.1:8000/pub/%2e%2e/x.png", False),
    ("http://127.0.0.1:8000/pub", "http://127.0.0.1:8000/pub\\..\\x.png", False),
    ("http://127.0.0.1:8000/pub", "http://127.0.0.1:8001/pub/x.png", False),
    ("http://127.0.0.1:8000/pub", "https://127.0.0.1:8000/pub/x.png", False),
    ("http://127.0.0.1:8000/pub", "http://127.0.0.1:8000@169.254.169.254/pub/x.png", False),
    ("http://127.0.0.1:8000/pub", "http://user:pw@127.0.0.1:8000/pub/x.png", False),
    ("http://127.0.0.1:8000/pub", "http://127.0.0.1%3a8000/pub/x.png", False),
    ("https://cdn.example.com", "https://CDN.Example.com/a/x.png", True),
    ("https://cdn.example.com", "https://cdn.example.com:443/x.png", True),
    ("https://cdn.example.com", "https://cdn.example.com.evil.net/x.png", False),
    ("https://cdn.example.com", "https://evil.net/cdn.example.com/x.png", False),
    ("https://", "https://anywhere.net/x.png", True), ("https://", "http://anywhere.net/x.png", False),
])
def test_allowed_prefixes_match_whole_segments(prefix, uri, ok):
    p = AccessPolicy("s3://bucket/manifest.csv", (prefix,))
    assert p.allows(uri) is ok, p.refusal(uri)


def test_http_needs_an_explicit_prefix_even_for_an_http_manifest():
    p = AccessPolicy("https://host.example/catalog/manifest.csv")
    assert "HTTP(S)" in p.refusal("https://host.example/catalog/x.png")
    assert "--allow-uri" in p.refusal("https://host.example/catalog/x.png")
    assert AccessPolicy("https://host.example/c/m.csv", ("https://host.example/c",)).allows("https://host.example/c/x.png")


@pytest.mark.parametrize("prefix", ["", "  ", "http://user@host/", "http://host:port/", "http://host/?q=1",
                                    "simplecache::s3://b", "/data/\x00a", "1nvalid://x"])
def test_prefixes_that_cannot_be_matched_safely_are_errors(prefix):
    with pytest.raises(ValueError):
        parse_prefix(prefix)


def test_checkpoints_need_a_prefix_for_http_only():
    assert checkpoint_refusal("http://127.0.0.1:9/ckpt", [])
    assert checkpoint_refusal("https://models.example/ckpt", ["https://models.example/other"])
    assert checkpoint_refusal("https://models.example/ckpt", ["https://models.example"]) is None
    for operator_given in ("/models/tiny", "file:///models/tiny", "s3://any-bucket/models", "gs://b/m", None):
        assert checkpoint_refusal(operator_given, []) is None


def test_prepare_rows_names_the_column_and_the_uri(tree):
    m = str(tree / "data" / "m" / "manifest.csv")
    df = pd.DataFrame([
        {"id": "ok", "composite": "c.png", "mask": "sub/m.png", "real": None},
        {"id": "etc", "composite": "c.png", "mask": "/etc/hostname", "real": None},
        {"id": "up", "composite": "../other/c.png", "mask": "m.png", "real": "http://127.0.0.1:9/r.png"},
        {"id": "bad id/", "composite": "/etc/passwd", "mask": "m.png", "real": None},  # first reason wins
        {"id": "etc", "composite": "c.png", "mask": "m.png", "real": None},  # not a duplicate of a refused row
    ])
    rows = prepare_rows(df, m, str(tree / "out"), "png", 0)
    assert list(rows["status"]) == ["pending", "invalid", "invalid", "invalid", "pending"]
    assert list(rows["error_type"].fillna("")) == ["", "uri_not_allowed", "uri_not_allowed", "invalid_row", ""]
    assert rows.loc[1, "error_message"].startswith("mask: '/etc/hostname' is not allowed")
    msg = rows.loc[2, "error_message"]
    assert f"composite: {str(tree / 'data' / 'm' / '../other/c.png')!r}" in msg and "real: 'http://127.0.0.1:9/r.png'" in msg
    assert rows.loc[1, "output"] is None and pd.isna(rows.loc[1, "seed"])
    allowed = prepare_rows(df, m, str(tree / "out"), "png", 0,
                           allow=["/etc/hostname", str(tree / "data" / "other"), "http://127.0.0.1:9"])
    assert list(allowed["status"]) == ["pending", "pending", "pending", "invalid", "invalid"]
    assert allowed.loc[4, "error_type"] == "duplicate_id"
