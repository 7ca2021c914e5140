"""One run per output prefix: a lease object under the prefix, kept alive by a heartbeat.

A job that writes under `--output` first acquires `<output>/_lease.json`: a small JSON object naming
the run (run id, host, pid, command, start time, last heartbeat, time to live). A second run on the
same prefix finds it and refuses to start (`LeaseHeld`, naming the holder) before it writes
anything. A background thread refreshes the heartbeat every `ttl / 3` seconds; a lease whose last
heartbeat is older than its own `ttl` (its holder was killed, or lost its storage) is expired and
the next run takes it over, saying so. A lease held by a process on this host that no longer exists
is taken over at once. `force=True` takes over a live lease on purpose.

How each store makes "create if absent" and "replace if unchanged" atomic:

- Local file systems: the lease is written to a temporary sibling and hard-linked into place
  (`link` fails when the name exists, and the lease is complete when it appears; where hard links
  are not supported, `O_CREAT | O_EXCL`). The heartbeat sets the file's modification time (the
  content stays as written). A takeover renames the old lease aside, checks that it is the version
  it judged (inode, modification time, bytes), and links its own; a lease that changed meanwhile
  is put back.
- S3: `PutObject` with `If-None-Match: *` creates; heartbeats and takeovers are `PutObject` with
  `If-Match: <ETag>`, release is `DeleteObject` with `If-Match`, so a lease changed by someone else
  is never overwritten or deleted. A store that answers `NotImplemented` to the conditional
  headers gets the best effort below; a store that silently ignores them gets only a check before
  creating and a read-back after.
- Any other store (and the fallback): best effort. Create when absent, wait `settle` seconds, read
  back and check the lease is ours; replace only after reading the version it judged. Two runs
  starting within the same moment can both pass.

A heartbeat that finds the lease replaced (a `--force` run took it over) or deleted marks the lease
lost, logs an error naming the new holder and calls `on_lost`; `check()` then raises `LeaseLost`.
`pipelines.core.run.JobRun` uses this to stop the old run before it consolidates, writes its summary
or removes the journal.
"""

from __future__ import annotations

import errno
import json
import logging
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass, replace
from typing import Any, Callable

from pipelines.errors import LeaseHeld, LeaseLost
from pipelines.io.storage import filesystem, join, protocol_of

log = logging.getLogger(__name__)

LEASE_FILE = "_lease.json"
DEFAULT_TTL = 120.0
SETTLE_SECONDS = 1.0  # best effort only: how long a write is left before it is read back

_now = time.time  # one clock for every timestamp here (tests move it)


def _iso(t: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(t))


@dataclass(frozen=True)
class Holder:
    """What a lease says about the run holding it."""

    run_id: str
    host: str
    pid: int
    command: str
    started: float
    heartbeat: float
    ttl: float

    @classmethod
    def new(cls, command: str, ttl: float) -> "Holder":
        now = _now()
        return cls(uuid.uuid4().hex, socket.gethostname(), os.getpid(), command, now, now, float(ttl))

    def to_bytes(self) -> bytes:
        doc = asdict(self) | {"started_utc": _iso(self.started), "heartbeat_utc": _iso(self.heartbeat)}
        return json.dumps(doc, indent=1).encode()

    @classmethod
    def parse(cls, data: bytes, modified: float | None) -> "Holder":
        """The lease's holder; an unreadable lease (a foreign or half-written file) is held by an unknown
        run since its modification time, so it too expires."""
        try:
            doc = json.loads(data)
            h = cls(str(doc["run_id"]), str(doc["host"]), int(doc["pid"]), str(doc["command"]),
                    float(doc["started"]), float(doc["heartbeat"]), float(doc["ttl"]))
        except (ValueError, KeyError, TypeError):
            t = modified if modified is not None else _now()
            return cls("unknown", "unknown", -1, "unknown (unreadable lease)", t, t, DEFAULT_TTL)
        if modified is not None and modified > h.heartbeat:  # local heartbeats set the modification time
            h = replace(h, heartbeat=modified)
        return h

    def expired(self) -> bool:
        return _now() - self.heartbeat > self.ttl

    def gone(self) -> bool:
        """Held by a process on this host that no longer exists."""
        if self.host != socket.gethostname() or self.pid <= 0 or self.pid == os.getpid():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except OSError:  # exists, owned by someone else
            return False
        return False

    def describe(self) -> str:
        age = max(0.0, _now() - self.heartbeat)
        return (f"run {self.run_id} ({self.command}) on host {self.host}, pid {self.pid}, started {_iso(self.started)}, "
                f"last heartbeat {age:.0f} s ago (expires {self.ttl:g} s after its last heartbeat)")


# --- stores: read / create if absent / replace if unchanged / delete if unchanged --------------------------


class _LocalStore:
    """A lease file on a local (or network) file system. Token: (inode, mtime_ns, bytes)."""

    atomic = True

    def __init__(self, path: str):
        self.path = path
        self.made: list[str] = []  # folders the lease created (leaf first): removed again on release when empty

    def read(self):
        return self._read(self.path)

    @staticmethod
    def _read(path: str):
        try:
            with open(path, "rb") as f:
                st = os.fstat(f.fileno())
                data = f.read()
        except FileNotFoundError:
            return None
        return data, (st.st_ino, st.st_mtime_ns, data), st.st_mtime

    def create(self, data: bytes):
        folder = os.path.dirname(os.path.abspath(self.path))
        while not os.path.isdir(folder) and folder not in self.made:
            self.made.append(folder)
            folder = os.path.dirname(folder)
        os.makedirs(os.path.dirname(self.path) or ".", exist_ok=True)
        tmp = f"{self.path}.tmp-{uuid.uuid4().hex}"
        with open(tmp, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, self.path)
        except FileExistsError:
            return None
        except OSError as exc:  # no hard links here (some FUSE / SMB mounts): exclusive create instead
            if exc.errno not in (errno.EPERM, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EXDEV, errno.EMLINK):
                raise
            try:
                fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
            except FileExistsError:
                return None
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
        finally:
            os.unlink(tmp)
        cur = self.read()
        return cur[1] if cur and cur[0] == data else None

    def _take(self, token) -> str | None:
        """Rename the lease aside if it is still the version `token`; returns where it went."""
        grave = f"{self.path}.old-{uuid.uuid4().hex}"
        try:
            os.rename(self.path, grave)
        except FileNotFoundError:
            return None
        cur = self._read(grave)
        if cur is not None and cur[1] == token:
            return grave
        try:  # someone else's newer lease: put it back (unless a third run created one meanwhile)
            os.link(grave, self.path)
        except FileExistsError:
            pass
        os.unlink(grave)
        return None

    def replace(self, data: bytes, token):
        grave = self._take(token)
        if grave is None:
            return None
        os.unlink(grave)
        return self.create(data)

    def refresh(self, data: bytes, token):
        cur = self.read()
        if cur is None or cur[1][0] != token[0] or cur[1][2] != token[2]:
            return None
        t = _now()
        os.utime(self.path, (t, t))
        cur = self.read()
        return cur[1] if cur is not None and cur[1][0] == token[0] and cur[1][2] == token[2] else None

    def delete(self, token) -> bool:
        cur = self.read()
        if cur is not None and (cur[1][0], cur[1][2]) == (token[0], token[2]):
            token = cur[1]  # our own heartbeats moved the modification time
        grave = self._take(token)
        if grave is None:
            return False
        os.unlink(grave)
        for folder in self.made:  # a run that stopped before writing leaves no empty output folder behind
            try:
                os.rmdir(folder)
            except OSError:
                break
        return True


class _BestEffortStore:
    """Any fsspec store without conditional writes: read, write, wait, read back. Token: the bytes."""

    atomic = False

    def __init__(self, fs, path: str, settle: float):
        self.fs, self.path, self.settle = fs, path, settle

    def read(self):
        try:
            data = self.fs.cat_file(self.path)
        except FileNotFoundError:
            return None
        try:
            modified = self.fs.modified(self.path).timestamp()
        except Exception:  # noqa: BLE001 - not every store tells
            modified = None
        return data, data, modified

    def _write_checked(self, data: bytes):
        self.fs.pipe_file(self.path, data)
        time.sleep(self.settle)
        cur = self.read()
        return cur[1] if cur is not None and cur[0] == data else None

    def create(self, data: bytes):
        if self.read() is not None:
            return None
        return self._write_checked(data)

    def replace(self, data: bytes, token):
        cur = self.read()
        if cur is None or cur[1] != token:
            return None
        return self._write_checked(data)

    def refresh(self, data: bytes, token):
        cur = self.read()
        if cur is None or cur[1] != token:
            return None
        self.fs.pipe_file(self.path, data)
        return data

    def delete(self, token) -> bool:
        cur = self.read()
        if cur is None or cur[1] != token:
            return False
        try:
            self.fs.rm(self.path)
        except FileNotFoundError:
            pass
        return True


class _Unsupported(Exception):
    """The store does not implement conditional requests."""


def _s3_code(exc: BaseException) -> str | None:
    for e in (exc, exc.__cause__, exc.__context__):
        err = getattr(e, "response", None)
        if isinstance(err, dict) and "Error" in err:
            return str(err["Error"].get("Code"))
    return None


class _S3Store:
    """A lease object on S3 with conditional requests. Token: the ETag."""

    atomic = True

    def __init__(self, fs, path: str):
        self.fs = fs
        self.bucket, self.key, _ = fs.split_path(path)

    def read(self):
        from fsspec.asyn import sync

        async def get():
            resp = await self.fs._call_s3("get_object", Bucket=self.bucket, Key=self.key)
            try:
                return await resp["Body"].read(), resp["ETag"], resp["LastModified"].timestamp()
            finally:
                resp["Body"].close()

        try:
            return sync(self.fs.loop, get)
        except FileNotFoundError:
            return None

    def _call(self, method: str, **kwargs):
        """The response, or None when the condition did not hold."""
        try:
            return self.fs.call_s3(method, Bucket=self.bucket, Key=self.key, **kwargs)
        except (FileExistsError, FileNotFoundError):  # If-None-Match failed / the object is gone
            return None
        except OSError as exc:
            code = _s3_code(exc)
            if code in ("PreconditionFailed", "ConditionalRequestConflict"):
                return None
            if code == "NotImplemented" or getattr(exc, "errno", None) == errno.ENOSYS:
                raise _Unsupported(str(exc)) from exc
            raise

    def create(self, data: bytes):
        # Read first and read back: a store that silently ignores If-None-Match then overwrites a lease only
        # in the moment between the two, and the loser of that race sees someone else's lease on reading back.
        if self.read() is not None:
            return None
        r = self._call("put_object", Body=data, IfNoneMatch="*")
        if r is None:
            return None
        cur = self.read()
        return r["ETag"] if cur is not None and cur[1] == r["ETag"] else None

    def replace(self, data: bytes, token):
        r = self._call("put_object", Body=data, IfMatch=token)
        return None if r is None else r["ETag"]

    refresh = replace

    def delete(self, token) -> bool:
        try:
            return self._call("delete_object", IfMatch=token) is not None
        except _Unsupported:  # conditional deletes are newer than conditional writes
            cur = self.read()
            if cur is None or cur[1] != token:
                return False
            self.fs.call_s3("delete_object", Bucket=self.bucket, Key=self.key)
            return True


class _FallbackStore:
    """S3 first; the best effort from the first `NotImplemented` answer on."""

    def __init__(self, fs, path: str, settle: float):
        self.s3, self.weak = _S3Store(fs, path), _BestEffortStore(fs, path, settle)
        self.current = self.s3

    @property
    def atomic(self) -> bool:
        return self.current is self.s3

    def read(self):
        return self.current.read()

    def _do(self, name: str, *args):
        if self.current is self.s3:
            try:
                return getattr(self.s3, name)(*args)
            except _Unsupported as exc:
                log.warning("storage at %s has no conditional writes (%s); the lease is a best effort", self.s3.bucket, exc)
                self.current = self.weak
                if name != "create":  # the token is an ETag; the best effort's is the bytes of that version
                    cur = self.s3.read()
                    if cur is None or cur[1] != args[-1]:
                        return False if name == "delete" else None
                    args = (*args[:-1], cur[0])
        return getattr(self.weak, name)(*args)

    def create(self, data):
        return self._do("create", data)

    def replace(self, data, token):
        return self._do("replace", data, token)

    def refresh(self, data, token):
        return self._do("refresh", data, token)

    def delete(self, token):
        return self._do("delete", token)


def _store(uri: str, options: dict | None, settle: float):
    fs, path = filesystem(uri, options)
    proto = protocol_of(uri)
    if proto == "file":
        return _LocalStore(path)
    if proto in ("s3", "s3a"):
        return _FallbackStore(fs, path, settle)
    return _BestEffortStore(fs, path, settle)


# --- the lease -----------------------------------------------------------------------------------------


class Lease:
    """A lease this process holds on `uri` (see `acquire`)."""

    def __init__(self, uri: str, store, holder: Holder, token, took_over: tuple[Holder, str] | None):
        self.uri, self.store, self.holder, self.token = uri, store, holder, token
        self.took_over = took_over  # (the previous holder, "expired" | "gone" | "forced")
        self.lost = threading.Event()
        self.lost_to: Holder | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._on_lost: Callable[[], Any] | None = None

    @property
    def atomic(self) -> bool:
        return bool(self.store.atomic)

    def start_heartbeat(self, on_lost: Callable[[], Any] | None = None) -> None:
        self._on_lost = on_lost
        self._thread = threading.Thread(target=self._beat_loop, name=f"lease-heartbeat-{self.holder.run_id[:8]}", daemon=True)
        self._thread.start()

    def _beat_loop(self) -> None:
        interval = self.holder.ttl / 3
        while not self._stop.wait(interval):
            try:
                self.beat()
            except Exception as exc:  # noqa: BLE001 - storage hiccups: keep beating; expiry covers the rest
                log.warning("lease heartbeat on %s failed (%s: %s); retrying in %.0f s", self.uri, type(exc).__name__, exc, interval)
            if self.lost.is_set():
                return

    def beat(self) -> bool:
        """Refresh the heartbeat once; False (and the lease marked lost) when it is no longer ours."""
        with self._lock:
            if self.lost.is_set() or self._stop.is_set():
                return not self.lost.is_set()
            fresh = replace(self.holder, heartbeat=_now())
            token = self.store.refresh(fresh.to_bytes(), self.token)
            if token is not None:
                self.holder, self.token = fresh, token
                return True
        self._mark_lost()
        return False

    def _mark_lost(self) -> None:
        cur = self.store.read()
        # A takeover on a local file system is rename-aside-then-create: a read in between finds no lease.
        # Look again for a moment so the message names the run that took over rather than "removed".
        for _ in range(20):
            if cur is not None:
                break
            time.sleep(0.05)
            cur = self.store.read()
        self.lost_to = Holder.parse(cur[0], cur[2]) if cur is not None else None
        if self.lost_to is not None and self.lost_to.run_id == self.holder.run_id:
            # Still ours (a write whose answer was lost, a store switched to the best effort): carry on from it.
            self.token, self.lost_to = cur[1], None
            return
        self.lost.set()
        log.error("%s", self.lost_message())
        if self._on_lost is not None and not self._stop.is_set():
            self._on_lost()

    def lost_message(self) -> str:
        who = f"taken over by {self.lost_to.describe()}" if self.lost_to else "removed by someone else"
        return (f"the lease on {self.uri} held by this run ({self.holder.run_id}) was {who}; "
                "this run stops without consolidating its results")

    def check(self) -> None:
        """Raise `LeaseLost` unless the lease on the store is still this run's (one read)."""
        if not self.lost.is_set():
            cur = self.store.read()
            if cur is not None and Holder.parse(cur[0], cur[2]).run_id == self.holder.run_id:
                return
            self._mark_lost()
        if self.lost.is_set():
            raise LeaseLost(self.lost_message())

    def release(self) -> None:
        """Stop the heartbeat and remove the lease, unless it is someone else's by now."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=30)
        with self._lock:
            if self.lost.is_set():
                return
            try:
                if not self.store.delete(self.token):
                    log.warning("lease on %s was not this run's any more; left in place", self.uri)
            except Exception as exc:  # noqa: BLE001 - a lease left behind expires by itself
                log.warning("could not remove the lease on %s (%s: %s); it expires by itself", self.uri, type(exc).__name__, exc)


def lease_uri(output: str) -> str:
    return join(output, LEASE_FILE)


def read_holder(output: str, options: dict | None = None) -> Holder | None:
    """Who holds the lease on an output prefix (None when nobody does)."""
    cur = _store(lease_uri(output), options, SETTLE_SECONDS).read()
    return None if cur is None else Holder.parse(cur[0], cur[2])


def acquire(output: str, options: dict | None = None, *, ttl: float = DEFAULT_TTL, force: bool = False,
            command: str = "harmony", heartbeat: bool = True, on_lost: Callable[[], Any] | None = None,
            settle: float = SETTLE_SECONDS, attempts: int = 5) -> Lease:
    """Acquire the lease on the output prefix `output`, or raise `LeaseHeld` naming its holder.

    An expired lease, or one whose process is gone from this host, is taken over; `force` takes over
    a live one. With `heartbeat`, a daemon thread refreshes it every `ttl / 3` seconds until `release()`.
    """
    uri = lease_uri(output)
    store = _store(uri, options, settle)
    for _ in range(attempts):
        me = Holder.new(command, ttl)
        token = store.create(me.to_bytes())
        took_over = None
        if token is None:
            cur = store.read()
            if cur is None:
                continue  # released meanwhile: try again
            other = Holder.parse(cur[0], cur[2])
            reason = "expired" if other.expired() else "gone" if other.gone() else "forced" if force else None
            if reason is None:
                raise LeaseHeld(
                    f"output {output} is in use by another run: {other.describe()}. Two runs on one output prefix "
                    f"would overwrite each other's journal and results; wait for it to finish (or for its lease to "
                    f"expire if it was killed), or pass --force to take the lease over ({uri})"
                )
            token = store.replace(me.to_bytes(), cur[1])
            if token is None:
                continue  # it changed while we judged it: judge again
            took_over = (other, reason)
        lease = Lease(uri, store, me, token, took_over)
        if took_over is None and not store.atomic:
            log.warning("lease on %s: this store has no conditional writes; two runs starting at the same moment "
                        "may both proceed", uri)
        if heartbeat:
            lease.start_heartbeat(on_lost)
        return lease
    holder = read_holder(output, options)
    raise LeaseHeld(f"output {output}: the lease changed {attempts} times while this run tried to acquire it"
                    + (f"; now held by {holder.describe()}" if holder else ""))
