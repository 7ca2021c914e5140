"""`harmony bench --sections job` end to end on a few small rows: both sides run, every row is counted."""

import tempfile

import pytest

from pipelines.devtools.bench.job import bench_job

pytestmark = pytest.mark.pipeline


def test_job_section_times_the_loop_and_the_job_on_the_same_rows(tmp_path, monkeypatch):
    # The job's own Ray instance: a short path (Unix sockets live under it; 107 bytes at most).
    monkeypatch.setenv("RAY_TMPDIR", tempfile.mkdtemp(prefix="rj-"))
    r = bench_job(4, 64, tmp_path / "work", echo=lambda m: None)
    assert r["job_ok"] == 4
    assert len(list((tmp_path / "work" / "loop-default").glob("*.png"))) == 4
    assert len(list((tmp_path / "work" / "job-out" / "images").glob("*.png"))) == 4
    assert r["job_seconds"] > 0 and r["loop_default_seconds"] > 0
    assert r["job_vs_loop_default"] == pytest.approx(r["loop_default_seconds"] / r["job_seconds"])
