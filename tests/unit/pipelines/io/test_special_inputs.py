"""Inputs that could stall or confuse a job: a named pipe where a file should be, schemes in upper case, one object
whose store answers with an error (issue 29, classes 4, 6, 7)."""

from __future__ import annotations

import os
import threading
import time

import numpy as np
import pytest
from PIL import Image

from pipelines.io.manifest import prepare_rows, read_manifest, resolve_uri
from pipelines.io.storage import NotARegularFile, normalise_uri, protocol_of, read_bytes, read_with_retries


@pytest.fixture()
def fifo(tmp_path):
    if not hasattr(os, "mkfifo"):
        pytest.skip("no named pipes here")
    p = tmp_path / "pipe.png"
    os.mkfifo(p)
    return p


def test_a_named_pipe_is_refused_at_once_not_read_and_not_retried(fifo):
    t = time.monotonic()
    done = threading.Event()
    failure = []

    def read():
        try:
            read_with_retries(str(fifo), None, 3)
        except Exception as exc:  # noqa: BLE001
            failure.append(exc)
        done.set()

    threading.Thread(target=read, daemon=True).start()
    assert done.wait(5), "reading a named pipe blocked"
    assert isinstance(failure[0], NotARegularFile) and "not a regular file" in str(failure[0])
    assert time.monotonic() - t < 1  # no retries with backoff for an answer that cannot change


def test_a_folder_is_not_a_file(tmp_path):
    with pytest.raises(IsADirectoryError):
        read_bytes(str(tmp_path))


def test_schemes_are_lower_case_everywhere_they_are_compared_or_opened(tmp_path):
    (tmp_path / "a.txt").write_bytes(b"x")
    assert normalise_uri("S3://Bucket/Key.PNG") == "s3://Bucket/Key.PNG" and normalise_uri("/a/B") == "/a/B"
    assert normalise_uri(None) is None and protocol_of("FILE:///x") == "file" and protocol_of("S3://b/k") == "s3"
    assert read_bytes(f"FILE://{tmp_path}/a.txt") == b"x"
    assert resolve_uri("/d", "HTTP://h/x.png") == "http://h/x.png" and resolve_uri("/d", "x.png") == "/d/x.png"


def test_upper_case_schemes_in_a_manifest_resolve_and_pass_the_policy(tmp_path):
    (tmp_path / "m.csv").write_text(f"id,composite,mask\na,FILE://{tmp_path}/c.png,File://{tmp_path}/m.png\n")
    rows = prepare_rows(read_manifest(f"FILE://{tmp_path}/m.csv"), str(tmp_path / "m.csv"), "/out", "png", 0)
    assert rows.loc[0, "status"] == "pending", rows.loc[0, "error_message"]
    assert rows.loc[0, "composite"] == f"file://{tmp_path}/c.png"


def test_validate_reports_a_pipe_and_a_store_error_as_rows_and_goes_on(tmp_path, fifo, monkeypatch):
    from pipelines.jobs.validate import job

    Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / "c.png")
    (tmp_path / "m.csv").write_text("id,composite,mask\nok,c.png,c.png\npipe,pipe.png,c.png\nboom,boom.png,c.png\n")
    real_filesystem = job.filesystem

    def exploding(uri, opts):
        if "boom" in uri:
            raise OSError("400 Bad Request")
        return real_filesystem(uri, opts)

    monkeypatch.setattr(job, "filesystem", exploding)
    report = job.run_validate(str(tmp_path / "m.csv"))
    problems = {rid: why for _, rid, why in report.invalid}
    assert set(problems) == {"pipe", "boom"} and not report.missing and not report.ok
    assert "not a regular file" in problems["pipe"] and "storage_error" in problems["pipe"]
    assert "storage_error" in problems["boom"] and "400 Bad Request" in problems["boom"]


def test_a_read_that_does_not_answer_stops_at_the_deadline():
    from pipelines.io.storage import retry

    t = time.monotonic()
    with pytest.raises(TimeoutError, match="read deadline"):
        retry(lambda: time.sleep(30), retries=5, what="read s3://b/slow.png", until=time.monotonic() + 0.5)
    assert time.monotonic() - t < 2
    calls = []

    def flaky():
        calls.append(1)
        raise ConnectionError("reset")

    with pytest.raises(TimeoutError, match="gave up at the row's read deadline after"):
        retry(flaky, retries=10, base_delay=0.3, until=time.monotonic() + 1.0)
    assert 1 <= len(calls) < 10  # no retry starts past the deadline


def test_s3_clients_make_one_bounded_attempt_per_request_and_options_override_it():
    from pipelines.io.storage import S3_CLIENT_CONFIG, fsspec_options

    cfg = fsspec_options("s3://b/k", {"endpoint_url": "http://127.0.0.1:9"})["config_kwargs"]
    assert cfg == S3_CLIENT_CONFIG and cfg["retries"] == {"total_max_attempts": 1}
    cfg = fsspec_options("s3://b/k", {"read_timeout": "2.5", "config_kwargs": {"connect_timeout": 1}})["config_kwargs"]
    assert cfg["read_timeout"] == 2.5 and cfg["connect_timeout"] == 1  # text from a flag, as a number
    assert "config_kwargs" not in fsspec_options("/local/path", {"read_timeout": 5})


def test_a_photograph_too_thin_for_a_foreground_is_too_small_whatever_the_mask_source():
    from harmony_ops.imageio import ImageError
    from pipelines.jobs.synthesize.config import SynthesizeJobConfig
    from pipelines.jobs.synthesize.sources import Source, sample_mask

    thin = Source(real=np.zeros((1, 3000, 3), np.uint8), mask=np.zeros((1, 3000), np.float32), notes=[])
    for source in ("blob", "given"):
        cfg = SynthesizeJobConfig(manifest="m.csv", output="o", mask_source=source)
        with pytest.raises(ImageError) as e:
            sample_mask(cfg, "thin", thin, 0)
        assert e.value.kind == "too_small" and "3000x1" in str(e.value)
