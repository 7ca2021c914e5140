"""Two runs on one output prefix: the second is refused before it writes anything or starts Ray, the
first completes; `--force` takes the prefix over and the run that held it stops. Through the command
line, on local folders and on S3 (moto)."""

from __future__ import annotations

import os
import shutil
import socket
import threading
import time

import pandas as pd
import pytest

from pipelines.cli import main
from pipelines.io.lease import LEASE_FILE, acquire, read_holder
from pipelines.io.storage import filesystem
from tests.conftest import upload_dir
from tests.pipeline.jobs.test_harmonize import local_dataset
from tests.pipeline.jobs.slow_job import kill_group, slow_job

pytestmark = pytest.mark.pipeline


def iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


@pytest.fixture(params=["local", "s3"])
def where(request, tmp_path):
    """(data prefix, output prefix, storage options, storage flags): a few scenes, their manifest and a
    predictions folder, locally or in a fresh bucket."""
    local_dataset(tmp_path, good=3)
    preds = tmp_path / "data" / "preds"
    preds.mkdir()
    shutil.copy(tmp_path / "data" / "comp" / "good0.png", preds / "good0.png")
    if request.param == "local":
        return str(tmp_path / "data"), str(tmp_path / "out"), {}, []
    bucket, opts = request.getfixturevalue("s3_bucket")
    upload_dir(tmp_path / "data", f"{bucket}/data", opts)
    return f"{bucket}/data", f"{bucket}/out", opts, ["--storage-option", f"endpoint_url={opts['endpoint_url']}"]


JOBS = {
    "harmonize": lambda data: ["--manifest", f"{data}/manifest.csv", "--engine", "baseline"],
    "evaluate": lambda data: ["--manifest", f"{data}/manifest.csv", "--predictions", f"{data}/preds"],
    "synthesize": lambda data: ["--manifest", f"{data}/manifest.csv"],
}


def names_under(output: str, opts: dict) -> list[str]:
    fs, path = filesystem(output, opts)
    try:
        return sorted(p[len(path):].lstrip("/") for p in fs.find(path))
    except FileNotFoundError:
        return []


@pytest.mark.parametrize("job", sorted(JOBS))
def test_a_second_run_is_refused_naming_the_first_and_writes_nothing(job, where, capsys, forbid_ray_start):
    data, output, opts, flags = where
    first = acquire(output, opts, command="harmony harmonize", ttl=60)  # another run, heartbeat and all
    try:
        before = names_under(output, opts)
        rc = main([job, *JOBS[job](data), "--output", output, *flags])
        err = capsys.readouterr().err
        assert rc == 2
        assert f"harmony {job}: error: output {output} is in use by another run" in err
        assert f"host {socket.gethostname()}" in err and f"started {iso(first.holder.started)}" in err
        assert f"pid {os.getpid()}" in err and first.holder.run_id in err and "--force" in err
        assert forbid_ray_start == []  # refused before Ray started
        assert before == names_under(output, opts) == [LEASE_FILE]  # no journal, no images, nothing
        first.check()  # the first run's lease is untouched
        assert not first.lost.is_set()
    finally:
        first.release()
    assert names_under(output, opts) == []


def test_force_takes_the_prefix_over_and_the_holder_notices(where, ray_local, capsys):
    data, output, opts, flags = where
    noticed = threading.Event()
    # ttl 3 s: beats every second, so it notices the takeover while the forced run (a baseline job of
    # ~2 s) still holds the prefix; once that run has ended and released it, who took it is unknown.
    first = acquire(output, opts, command="harmony harmonize", ttl=3, on_lost=noticed.set)
    try:
        rc = main(["harmonize", *JOBS["harmonize"](data), "--output", output, *flags, "--force"])
        err = capsys.readouterr().err
        assert rc == 0, err
        assert f"took over a live lease (--force) on {output}: run {first.holder.run_id}" in err, err
        assert noticed.wait(30), "the run that held the prefix did not notice the takeover"
        assert first.lost_to is not None and first.lost_to.command == "harmony harmonize"
        assert "metrics/metrics.parquet" in names_under(output, opts)
    finally:
        first.release()  # lost: leaves the prefix alone
    assert read_holder(output, opts) is None  # the forced run released its lease when it ended
    assert LEASE_FILE not in names_under(output, opts)


def wait_until(cond, proc, what: str, seconds: float = 180) -> None:
    deadline = time.time() + seconds
    while not cond():
        if proc.poll() is not None:
            pytest.fail(f"the first run ended before {what}: {proc.stderr.read()[-2000:]}")
        if time.time() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.1)


def test_overlapping_runs_the_second_is_refused_and_the_first_completes(tmp_path, capsys, forbid_ray_start):
    proc, out, manifest = slow_job(tmp_path)
    try:
        wait_until(lambda: (h := read_holder(str(out))) is not None and h.pid == proc.pid, proc, "its lease appeared")
        first = read_holder(str(out))
        rc = main(["harmonize", "--config", str(tmp_path / "job.yaml")])  # the same command, next to it
        err = capsys.readouterr().err
        assert rc == 2 and proc.poll() is None
        assert f"run {first.run_id} (harmony harmonize) on host {socket.gethostname()}, pid {proc.pid}, " \
               f"started {iso(first.started)}" in err
        assert forbid_ray_start == []
        assert read_holder(str(out)).run_id == first.run_id
        stdout, stderr = proc.communicate(timeout=600)
    finally:
        kill_group(proc)
    assert proc.returncode == 0, stderr[-2000:]
    assert f"{len(manifest)} rows ({len(manifest)} to run" in stdout  # the refused run left nothing to resume from
    metrics = pd.read_parquet(out / "metrics" / "metrics.parquet")
    assert len(metrics) == len(manifest) and (metrics["status"] == "ok").all()
    assert sorted(p.name for p in out.iterdir()) == ["images", "metrics", "report.html", "report_files",
                                                     "summary.json"]  # no journal, no lease


def test_a_run_whose_lease_is_taken_over_stops_without_consolidating(tmp_path):
    proc, out, manifest = slow_job(tmp_path, lease_ttl_seconds=3)  # heartbeat every second
    journal = out / "_journal"
    try:
        wait_until(lambda: journal.exists() and any(journal.rglob("*.parquet")), proc, "it journaled a block")
        forced = acquire(str(out), {}, command="harmony harmonize", ttl=60, force=True, heartbeat=False)
        _, stderr = proc.communicate(timeout=120)
    finally:
        kill_group(proc)
    assert proc.returncode == 2, stderr[-2000:]
    assert f"was taken over by run {forced.holder.run_id}" in stderr and "stops without consolidating" in stderr
    assert not (out / "metrics").exists() and not (out / "summary.json").exists()
    assert journal.exists()  # left for the run that holds the prefix now to resume from
    assert read_holder(str(out)).run_id == forced.holder.run_id  # the stopped run did not remove the new lease
    forced.release()
