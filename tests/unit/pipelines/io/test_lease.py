"""pipelines/io/lease.py: one run per output prefix, on a local folder and on an S3 endpoint (moto).

Expiry is tested by moving the module's clock, never by waiting for it; the heartbeat and
takeover tests wait for an event with a generous deadline.
"""

from __future__ import annotations

import errno
import json
import socket
import subprocess
import sys
import threading
import time

import pytest

from pipelines.errors import JobError, LeaseHeld, LeaseLost
from pipelines.io import lease as leases
from pipelines.io.lease import LEASE_FILE, Holder, acquire, read_holder
from pipelines.io.storage import filesystem, join, read_bytes, write_bytes_atomic


@pytest.fixture(params=["local", "s3"])
def out(request, tmp_path):
    """(output prefix, storage options) on a local folder or a fresh S3 bucket."""
    if request.param == "local":
        return str(tmp_path / "out"), {}
    bucket, opts = request.getfixturevalue("s3_bucket")
    return f"{bucket}/runs/night", opts


@pytest.fixture
def clock(monkeypatch):
    """Move the lease module's clock forward: `clock(seconds)`."""
    offset = [0.0]
    real = leases._now
    monkeypatch.setattr(leases, "_now", lambda: real() + offset[0])

    def advance(seconds: float) -> None:
        offset[0] += seconds

    return advance


def lease_bytes(output, opts) -> bytes | None:
    try:
        return read_bytes(join(output, LEASE_FILE), opts)
    except FileNotFoundError:
        return None


def wait_for(cond, what: str, seconds: float = 30.0) -> None:
    deadline = time.monotonic() + seconds
    while not cond():
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        time.sleep(0.05)


def test_lease_names_the_run_and_is_json(out):
    output, opts = out
    a = acquire(output, opts, ttl=60, command="harmony harmonize", heartbeat=False)
    doc = json.loads(lease_bytes(output, opts))
    assert doc["run_id"] == a.holder.run_id and doc["host"] == socket.gethostname()
    assert doc["command"] == "harmony harmonize" and doc["ttl"] == 60 and doc["started"] == doc["heartbeat"]
    assert a.took_over is None and a.atomic  # both stores here do conditional writes
    a.release()


def test_second_acquire_is_refused_naming_host_and_start_time(out):
    output, opts = out
    a = acquire(output, opts, ttl=60, command="harmony harmonize", heartbeat=False)
    before = lease_bytes(output, opts)
    with pytest.raises(LeaseHeld) as err:
        acquire(output, opts, ttl=60, heartbeat=False)
    msg = str(err.value)
    started = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(a.holder.started))
    assert isinstance(err.value, JobError)  # the CLI prints it and exits 2
    assert f"host {socket.gethostname()}" in msg and f"started {started}" in msg and f"pid {a.holder.pid}" in msg
    assert a.holder.run_id in msg and "harmony harmonize" in msg and "--force" in msg
    assert lease_bytes(output, opts) == before  # the refused run left the lease as it was
    a.check()  # still the first run's
    a.release()


def test_exclusive_create_has_one_winner_among_simultaneous_runs(out):
    output, opts = out
    n = 6
    barrier = threading.Barrier(n)
    won, refused, other = [], [], []

    def contender():
        barrier.wait()
        try:
            won.append(acquire(output, opts, ttl=60, heartbeat=False))
        except LeaseHeld:
            refused.append(1)
        except Exception as exc:  # noqa: BLE001 - reported below
            other.append(exc)

    threads = [threading.Thread(target=contender) for _ in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not other and len(won) == 1 and len(refused) == n - 1
    assert read_holder(output, opts).run_id == won[0].holder.run_id
    won[0].release()


def test_expired_lease_is_taken_over(out, clock):
    output, opts = out
    a = acquire(output, opts, ttl=30, heartbeat=False)  # a killed run: nobody refreshes it
    clock(25)
    with pytest.raises(LeaseHeld):
        acquire(output, opts, heartbeat=False)
    clock(6)  # 31 s after its last heartbeat
    b = acquire(output, opts, ttl=30, heartbeat=False)
    assert b.took_over is not None
    previous, why = b.took_over
    assert why == "expired" and previous.run_id == a.holder.run_id
    assert read_holder(output, opts).run_id == b.holder.run_id
    with pytest.raises(LeaseLost, match=b.holder.run_id):
        a.check()
    a.release()  # the old run's release leaves the new run's lease alone
    assert read_holder(output, opts).run_id == b.holder.run_id
    b.release()
    assert read_holder(output, opts) is None


def test_force_takes_over_a_live_lease(out):
    output, opts = out
    a = acquire(output, opts, ttl=60, heartbeat=False)
    b = acquire(output, opts, ttl=60, force=True, heartbeat=False)
    assert b.took_over[1] == "forced" and b.took_over[0].run_id == a.holder.run_id
    with pytest.raises(LeaseLost, match=f"host {socket.gethostname()}"):
        a.check()
    b.release()
    assert lease_bytes(output, opts) is None


def test_heartbeat_keeps_the_lease_alive(out, clock):
    output, opts = out
    a = acquire(output, opts, ttl=6, heartbeat=True)  # beats every 2 s
    try:
        base = read_holder(output, opts).heartbeat
        clock(100)  # without a heartbeat since, the lease would be 100 s past its ttl
        wait_for(lambda: read_holder(output, opts).heartbeat >= base + 100, "a heartbeat")
        with pytest.raises(LeaseHeld):
            acquire(output, opts, heartbeat=False)
        assert not a.lost.is_set()
    finally:
        a.release()
    assert lease_bytes(output, opts) is None


def test_heartbeat_notices_a_takeover_and_calls_on_lost(out):
    output, opts = out
    noticed = threading.Event()
    a = acquire(output, opts, ttl=3, heartbeat=True, on_lost=noticed.set)
    b = acquire(output, opts, ttl=60, force=True, heartbeat=False)
    assert noticed.wait(30), "the old run's heartbeat did not notice the takeover"
    assert a.lost.is_set() and a.lost_to.run_id == b.holder.run_id
    with pytest.raises(LeaseLost, match="taken over by run " + b.holder.run_id):
        a.check()
    a.release()
    assert read_holder(output, opts).run_id == b.holder.run_id  # never deleted by the run that lost it
    b.release()


def test_a_beat_during_a_local_takeover_names_the_new_holder(tmp_path, monkeypatch):
    # A local takeover renames the old lease aside and then creates the new one; a heartbeat in that gap
    # finds no lease. It must still report who took over, not "removed by someone else".
    output = str(tmp_path / "out")
    a = acquire(output, {}, ttl=60, heartbeat=False)
    in_gap, resume = threading.Event(), threading.Event()
    create = leases._LocalStore.create

    calls = []

    def paused_create(self, data):
        calls.append(data)
        if len(calls) == 2:  # the first finds the live lease; the second follows the rename aside
            in_gap.set()
            resume.wait(10)
        return create(self, data)

    monkeypatch.setattr(leases._LocalStore, "create", paused_create)
    taker: list = []
    t = threading.Thread(target=lambda: taker.append(acquire(output, {}, ttl=60, force=True, heartbeat=False)))
    t.start()
    assert in_gap.wait(10)
    threading.Timer(0.2, resume.set).start()
    assert a.beat() is False
    t.join(10)
    assert a.lost_to is not None and a.lost_to.run_id == taker[0].holder.run_id
    assert "taken over by run " + taker[0].holder.run_id in a.lost_message()
    taker[0].release()


def test_release_removes_the_lease_and_the_next_run_starts_fresh(out):
    output, opts = out
    a = acquire(output, opts, ttl=60, heartbeat=True)
    a.release()
    assert lease_bytes(output, opts) is None
    b = acquire(output, opts, ttl=60, heartbeat=False)
    assert b.took_over is None
    b.release()
    fs, path = filesystem(output, opts)
    assert not fs.exists(f"{path}/{LEASE_FILE}")


def test_release_leaves_no_folder_the_lease_created(tmp_path):
    (tmp_path / "kept").mkdir()
    output = tmp_path / "kept" / "runs" / "night"
    acquire(str(output), {}, heartbeat=False).release()  # a run that stopped before writing anything
    assert list(tmp_path.rglob("*")) == [tmp_path / "kept"]
    output.mkdir(parents=True)
    a = acquire(str(output), {}, heartbeat=False)
    (output / "summary.json").write_text("{}")
    a.release()
    assert sorted(p.name for p in output.iterdir()) == ["summary.json"]


def test_a_lease_whose_process_is_gone_from_this_host_is_taken_over(tmp_path):
    output = str(tmp_path / "out")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    stale = Holder("deadbeef", socket.gethostname(), dead.pid, "harmony harmonize", leases._now(), leases._now(), 120.0)
    write_bytes_atomic(join(output, LEASE_FILE), stale.to_bytes())
    b = acquire(output, {}, heartbeat=False)
    assert b.took_over[1] == "gone" and b.took_over[0].run_id == "deadbeef"
    b.release()


def test_a_live_process_on_another_host_is_not_gone(tmp_path):
    output = str(tmp_path / "out")
    other = Holder("cafe", "some-other-host", 1, "harmony harmonize", leases._now(), leases._now(), 120.0)
    write_bytes_atomic(join(output, LEASE_FILE), other.to_bytes())
    with pytest.raises(LeaseHeld, match="host some-other-host"):
        acquire(output, {}, heartbeat=False)


def test_an_unreadable_lease_is_held_until_it_expires(tmp_path, clock):
    output = str(tmp_path / "out")
    write_bytes_atomic(join(output, LEASE_FILE), b"{not json")
    with pytest.raises(LeaseHeld, match="unreadable lease"):
        acquire(output, {}, heartbeat=False)
    clock(leases.DEFAULT_TTL + 1)
    b = acquire(output, {}, heartbeat=False)
    assert b.took_over[1] == "expired"
    b.release()


def test_best_effort_store_without_conditional_writes():
    output = "memory://lease-test/out"
    a = acquire(output, {}, ttl=60, heartbeat=False, settle=0)
    assert not a.atomic
    with pytest.raises(LeaseHeld, match=a.holder.run_id):
        acquire(output, {}, heartbeat=False, settle=0)
    b = acquire(output, {}, ttl=60, force=True, heartbeat=False, settle=0)
    with pytest.raises(LeaseLost):
        a.check()
    a.release()
    assert read_holder(output).run_id == b.holder.run_id
    b.release()
    assert read_holder(output) is None


def test_s3_create_is_conditional_when_a_lease_appears_after_the_check(s3_bucket, monkeypatch):
    """Two runs both find no lease, then both create: If-None-Match lets only the first one in."""
    bucket, opts = s3_bucket
    output = f"{bucket}/out"
    a = acquire(output, opts, heartbeat=False)
    store = leases._store(leases.lease_uri(output), opts, 0).s3
    real_read = store.read
    reads = []

    def late(*args):  # the second run looked just before the first one's lease appeared
        reads.append(1)
        return None if len(reads) == 1 else real_read(*args)

    monkeypatch.setattr(store, "read", late)
    assert store.create(Holder.new("harmony harmonize", 60).to_bytes()) is None
    assert read_holder(output, opts).run_id == a.holder.run_id
    a.release()


def test_s3_store_that_does_not_implement_conditional_requests_falls_back(s3_bucket, monkeypatch):
    from botocore.exceptions import ClientError

    bucket, opts = s3_bucket
    output = f"{bucket}/out"
    fs, _ = filesystem(output, opts)
    real_call = fs.call_s3
    refused = []

    def no_conditions(method, *args, **kwargs):
        if "IfNoneMatch" in kwargs or "IfMatch" in kwargs:
            refused.append(method)
            cause = ClientError({"Error": {"Code": "NotImplemented", "Message": "A header you provided implies "
                                           "functionality that is not implemented"}}, method)
            raise OSError(errno.ENOSYS, "not implemented") from cause
        return real_call(method, *args, **kwargs)

    monkeypatch.setattr(fs, "call_s3", no_conditions)
    a = acquire(output, opts, ttl=60, heartbeat=False, settle=0)
    assert refused == ["put_object"] and not a.atomic
    with pytest.raises(LeaseHeld):
        acquire(output, opts, heartbeat=False, settle=0)
    assert a.beat()  # the heartbeat goes on in the best effort
    a.release()
    assert lease_bytes(output, opts) is None
