"""pipelines/io/storage.py: option parsing, endpoint handling for s3fs and pyarrow, atomic writes, retries."""

from __future__ import annotations

import os

import pyarrow.fs as pafs
import pytest

from pipelines.io import storage
from pipelines.io.storage import (
    arrow_filesystem,
    fsspec_options,
    join,
    parse_storage_options,
    read_bytes,
    redact,
    retry,
    write_bytes_atomic,
)


@pytest.fixture(autouse=True)
def clean_aws_env(monkeypatch):
    for k in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_DEFAULT_REGION"):
        monkeypatch.delenv(k, raising=False)


def s3_settings(fs: pafs.S3FileSystem) -> dict:
    """The settings a pyarrow S3FileSystem was built with (the kwargs it pickles itself with)."""
    return fs.__reduce__()[1][0]


# --- parse_storage_options --------------------------------------------------------------------


def test_parse_storage_options_converts_types():
    opts = parse_storage_options(
        ["endpoint_url=http://h:9000", "anon=true", "use_ssl=False", "max_concurrency=8", " key =a=b"]
    )
    assert opts == {
        "endpoint_url": "http://h:9000",
        "anon": True,
        "use_ssl": False,
        "max_concurrency": 8,
        "key": "a=b",  # split at the first '='; the key is stripped
    }
    assert isinstance(opts["max_concurrency"], int) and not isinstance(opts["max_concurrency"], bool)


def test_parse_storage_options_empty():
    assert parse_storage_options(None) == {}
    assert parse_storage_options([]) == {}


@pytest.mark.parametrize("bad", ["novalue", "", "endpoint_url"])
def test_parse_storage_options_bad_pair(bad):
    with pytest.raises(ValueError, match="KEY=VALUE"):
        parse_storage_options(["anon=true", bad])


# --- fsspec_options ---------------------------------------------------------------------------


def test_fsspec_options_takes_the_endpoint_from_the_environment_for_s3(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://env:9000")
    assert fsspec_options("s3://b/k", None)["endpoint_url"] == "http://env:9000"
    assert fsspec_options("s3a://b/k", {})["endpoint_url"] == "http://env:9000"
    # not for other protocols
    assert "endpoint_url" not in fsspec_options("/local/file", None)
    assert "endpoint_url" not in fsspec_options("gs://b/k", None)
    assert "endpoint_url" not in fsspec_options("memory://x", {"anon": True})


def test_explicit_endpoint_wins_over_the_environment(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://env:9000")
    assert fsspec_options("s3://b/k", {"endpoint_url": "http://mine:1"})["endpoint_url"] == "http://mine:1"


def test_service_specific_endpoint_variable_wins(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "http://generic:1")
    monkeypatch.setenv("AWS_ENDPOINT_URL_S3", "http://s3only:2")
    assert fsspec_options("s3://b/k", None)["endpoint_url"] == "http://s3only:2"


def test_no_endpoint_without_option_or_environment():
    assert "endpoint_url" not in fsspec_options("s3://b/k", {"anon": True})


def test_region_moves_into_client_kwargs_without_mutating_the_input():
    given = {"region_name": "eu-west-1", "key": "k"}
    opts = fsspec_options("s3://b/k", given)
    assert opts["client_kwargs"] == {"region_name": "eu-west-1"}
    assert "region_name" not in opts
    assert given == {"region_name": "eu-west-1", "key": "k"}


def test_non_s3_options_pass_through_unchanged():
    given = {"region_name": "x", "auto_mkdir": True}
    assert fsspec_options("/tmp/x", given) == given


# --- arrow_filesystem -------------------------------------------------------------------------


def test_arrow_filesystem_s3_maps_endpoint_url_to_override_and_scheme():
    fs, path = arrow_filesystem(
        "s3://bucket/dir/m.parquet", {"endpoint_url": "http://127.0.0.1:9000", "key": "AK", "secret": "SK"}
    )
    assert isinstance(fs, pafs.S3FileSystem)
    assert path == "bucket/dir/m.parquet"
    s = s3_settings(fs)
    assert s["endpoint_override"] == "127.0.0.1:9000"
    assert s["scheme"] == "http"
    assert s["access_key"] == "AK" and s["secret_key"] == "SK"
    assert fs.region == "us-east-1"


def test_arrow_filesystem_s3_endpoint_and_region_from_environment(monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", "https://minio.example:9443")
    monkeypatch.setenv("AWS_DEFAULT_REGION", "ap-south-1")
    fs, _ = arrow_filesystem("s3://bucket/k", {"anon": True})
    s = s3_settings(fs)
    assert s["endpoint_override"] == "minio.example:9443"
    assert s["scheme"] == "https"
    assert s["anonymous"] is True
    assert fs.region == "ap-south-1"


def test_arrow_filesystem_region_option_wins():
    fs, _ = arrow_filesystem("s3://bucket/k", {"region_name": "eu-central-1", "anon": True})
    assert fs.region == "eu-central-1"
    assert s3_settings(fs)["endpoint_override"] == ""


def test_arrow_filesystem_endpoint_without_scheme():
    fs, _ = arrow_filesystem("s3://bucket/k", {"endpoint_url": "localhost:9000", "anon": True})
    s = s3_settings(fs)
    assert (s["endpoint_override"], s["scheme"]) == ("localhost:9000", "https")


def test_arrow_filesystem_local(tmp_path):
    p = tmp_path / "x.bin"
    p.write_bytes(b"abc")
    fs, path = arrow_filesystem(str(p))
    assert isinstance(fs, pafs.LocalFileSystem)
    with fs.open_input_stream(path) as f:
        assert f.read() == b"abc"


def test_arrow_filesystem_other_protocols_wrap_fsspec():
    fs, path = arrow_filesystem("memory://harmony-test-storage/a.bin")
    assert isinstance(fs, pafs.PyFileSystem)
    with fs.open_output_stream(path) as f:
        f.write(b"xyz")
    assert read_bytes("memory://harmony-test-storage/a.bin") == b"xyz"


# --- write_bytes_atomic -----------------------------------------------------------------------


def test_write_bytes_atomic_local_creates_folders_and_replaces(tmp_path):
    target = tmp_path / "deep" / "er" / "out.png"
    write_bytes_atomic(str(target), b"first")
    assert target.read_bytes() == b"first"
    write_bytes_atomic(str(target), b"second, longer content")
    assert target.read_bytes() == b"second, longer content"
    assert os.listdir(target.parent) == ["out.png"]  # no .tmp- sibling left behind


def test_write_bytes_atomic_file_uri(tmp_path):
    target = tmp_path / "u.bin"
    write_bytes_atomic(f"file://{target}", b"via uri")
    assert target.read_bytes() == b"via uri"
    assert not [n for n in os.listdir(tmp_path) if ".tmp-" in n]


def test_write_bytes_atomic_remote_protocol():
    uri = "memory://harmony-test-storage/w/obj.bin"
    write_bytes_atomic(uri, b"remote")
    assert read_bytes(uri) == b"remote"


# --- redact -----------------------------------------------------------------------------------


def test_redact_hides_secrets_only():
    opts = {"key": "AK", "secret": "SK", "token": "T", "AWS_SECRET_ACCESS_KEY": "x", "password": "p",
            "endpoint_url": "http://h", "anon": False}
    red = redact(opts)
    for k in ("key", "secret", "token", "AWS_SECRET_ACCESS_KEY", "password"):
        assert red[k] == "***"
    assert red["endpoint_url"] == "http://h" and red["anon"] is False
    assert opts["secret"] == "SK"  # the input is not changed
    assert redact(None) == {}


# --- retry ------------------------------------------------------------------------------------


def flaky(failures: int, exc: Exception):
    calls = []

    def fn():
        calls.append(1)
        if len(calls) <= failures:
            raise exc
        return "done"

    return fn, calls


def test_retry_retries_transient_errors_with_backoff(monkeypatch):
    sleeps = []
    monkeypatch.setattr("time.sleep", lambda s: sleeps.append(s))
    fn, calls = flaky(3, ConnectionError("reset"))
    assert retry(fn, retries=3, base_delay=0.001) == "done"
    assert len(calls) == 4
    assert len(sleeps) == 3
    for attempt, s in enumerate(sleeps):  # exponential, with up to 100% jitter
        assert 0.001 * 2**attempt <= s <= 0.001 * 2 ** (attempt + 1)


def test_retry_gives_up_after_retries():
    fn, calls = flaky(10, TimeoutError("slow"))
    with pytest.raises(TimeoutError, match="slow"):
        retry(fn, retries=2, base_delay=0.0001)
    assert len(calls) == 3


def test_retry_zero_retries_calls_once():
    fn, calls = flaky(1, OSError("boom"))
    with pytest.raises(OSError):
        retry(fn, retries=0, base_delay=0.0001)
    assert len(calls) == 1


@pytest.mark.parametrize("exc", [FileNotFoundError("gone"), PermissionError("no"), IsADirectoryError("dir")])
def test_retry_raises_answers_at_once(exc, monkeypatch):
    monkeypatch.setattr("time.sleep", lambda s: pytest.fail("must not sleep"))
    fn, calls = flaky(5, exc)
    with pytest.raises(type(exc)):
        retry(fn, retries=3, base_delay=0.0001)
    assert len(calls) == 1


def test_read_with_retries_missing_local_file_is_not_retried(tmp_path, monkeypatch):
    calls = []
    real = storage.read_bytes

    def counting(uri, options=None):
        calls.append(uri)
        return real(uri, options)

    monkeypatch.setattr(storage, "read_bytes", counting)
    with pytest.raises(FileNotFoundError):
        storage.read_with_retries(str(tmp_path / "none.png"), None, 3)
    assert len(calls) == 1


# --- join -------------------------------------------------------------------------------------


def test_join():
    assert join("s3://bucket/out", "images", "a.png") == "s3://bucket/out/images/a.png"
    assert join("s3://bucket/out/", "images", "a.png") == "s3://bucket/out/images/a.png"
    assert join("s3://bucket", "a.png") == "s3://bucket/a.png"
    assert join("gs://b/x", "y") == "gs://b/x/y"
    assert join("/data/out", "images", "a.png") == os.path.join("/data/out", "images", "a.png")
    assert join(".", "a.png") == os.path.join(".", "a.png")
