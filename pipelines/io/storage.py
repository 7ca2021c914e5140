"""One place that turns user storage options into clients, so s3fs and pyarrow see the same settings.

Options come from `--storage-option KEY=VALUE` (or `storage_options:` in YAML) in s3fs
vocabulary (`endpoint_url`, `key`, `secret`, `token`, `region_name`, `anon`); the standard
`AWS_ENDPOINT_URL` variable is honoured when no endpoint is given. HTTP(S) clients get none of
them, and never follow redirects (harmony_ops/remote.py).
"""

from __future__ import annotations

import copy
import os
import posixpath
import stat
import uuid
from typing import Any
from urllib.parse import urlparse

import fsspec
import pyarrow.fs as pafs

from harmony_ops.remote import http_options, is_http

# Per request to S3 (botocore): seconds to connect and between received bytes, one attempt. Storage options
# `read_timeout=` / `connect_timeout=` (or `config_kwargs`) override them.
S3_CLIENT_CONFIG = {"connect_timeout": 10, "read_timeout": 30, "retries": {"total_max_attempts": 1}}
SECRET_KEYS = {"key", "secret", "token", "aws_access_key_id", "aws_secret_access_key", "aws_session_token", "password"}


def parse_storage_options(pairs: list[str] | None) -> dict[str, Any]:
    """`KEY=VALUE` strings to a dict; true/false and integers are converted."""
    out: dict[str, Any] = {}
    for pair in pairs or []:
        if "=" not in pair:
            raise ValueError(f"storage option {pair!r} must look like KEY=VALUE")
        k, v = pair.split("=", 1)
        low = v.lower()
        out[k.strip()] = True if low == "true" else False if low == "false" else int(v) if v.isdigit() else v
    return out


def is_uri(v) -> bool:
    """A manifest cell that names an object: a non-empty string (cells of blanks count as empty)."""
    return isinstance(v, str) and bool(v.strip())


def normalise_uri(uri):
    """A URI's scheme in lower case (`S3://b/k` is `s3://b/k`, as the access policy reads it): the one place
    schemes are normalised, so that what the policy allowed is what the client opens. Other values pass."""
    if isinstance(uri, str) and "://" in uri:
        scheme, rest = uri.split("://", 1)
        if scheme and scheme != scheme.lower() and scheme.replace("+", "").replace("-", "").replace(".", "").isalnum():
            return f"{scheme.lower()}://{rest}"
    return uri


def protocol_of(uri: str) -> str:
    return fsspec.core.split_protocol(normalise_uri(uri))[0] or "file"


def fsspec_options(uri: str, options: dict[str, Any] | None) -> dict[str, Any]:
    if is_http(uri):
        # HTTP(S): never follow a redirect, and never send the user's options (s3fs vocabulary,
        # credentials among them) to an HTTP host. See harmony_ops/remote.py.
        return http_options()
    opts = dict(options or {})
    # (float: a KEY=VALUE flag brings "2.5" as text, which botocore would add to a float)
    timeouts = {k: float(opts.pop(k)) for k in ("read_timeout", "connect_timeout") if k in opts}
    if protocol_of(uri) in ("s3", "s3a"):
        endpoint = opts.get("endpoint_url") or os.environ.get("AWS_ENDPOINT_URL_S3") or os.environ.get("AWS_ENDPOINT_URL")
        if endpoint:
            opts["endpoint_url"] = endpoint
        region = opts.pop("region_name", None) or opts.pop("region", None)
        if region:
            opts.setdefault("client_kwargs", {})["region_name"] = region
        # One bounded attempt per request at botocore's level (s3fs keeps its own retries of throttling, for the
        # calls outside a row; a row's reads are bounded by its deadline whatever the layers do).
        # (a copy: botocore rewrites the nested `retries` dict it is given)
        opts["config_kwargs"] = {**copy.deepcopy(S3_CLIENT_CONFIG), **timeouts, **copy.deepcopy(opts.get("config_kwargs") or {})}
    return opts


def filesystem(uri: str, options: dict[str, Any] | None = None):
    """(fsspec filesystem, path) for any URI.

    Clients are reused per process (fsspec's instance cache: creating an S3 client costs far
    more than a small GET), but s3fs listings are never cached, so existence checks and
    resume see objects written since.
    """
    uri = normalise_uri(uri)
    opts = fsspec_options(uri, options)
    s3 = protocol_of(uri) in ("s3", "s3a")
    if s3:
        opts.setdefault("use_listings_cache", False)
    return fsspec.core.url_to_fs(uri, **opts)


def arrow_filesystem(uri: str, options: dict[str, Any] | None = None) -> tuple[pafs.FileSystem, str]:
    """A pyarrow filesystem with the same settings (native S3 client for s3://)."""
    if protocol_of(uri) in ("s3", "s3a"):
        opts = fsspec_options(uri, options)
        kwargs: dict[str, Any] = {}
        endpoint = opts.get("endpoint_url")
        if endpoint:
            parsed = urlparse(endpoint if "://" in endpoint else f"https://{endpoint}")
            kwargs["endpoint_override"] = parsed.netloc or parsed.path
            kwargs["scheme"] = parsed.scheme or "https"
        if opts.get("key"):
            kwargs["access_key"] = opts["key"]
            kwargs["secret_key"] = opts.get("secret")
            if opts.get("token"):
                kwargs["session_token"] = opts["token"]
        if opts.get("anon"):
            kwargs["anonymous"] = True
        region = (opts.get("client_kwargs") or {}).get("region_name") or os.environ.get("AWS_DEFAULT_REGION") or "us-east-1"
        kwargs["region"] = region
        cfg = opts.get("config_kwargs") or {}  # the same bound per request as the fsspec client's
        for ours, theirs in (("request_timeout", "read_timeout"), ("connect_timeout", "connect_timeout")):
            if cfg.get(theirs) is not None:
                kwargs[ours] = float(cfg[theirs])
        return pafs.S3FileSystem(**kwargs), uri.split("://", 1)[1]
    fs, path = filesystem(uri, options)
    if protocol_of(uri) == "file":
        return pafs.LocalFileSystem(), path
    return pafs.PyFileSystem(pafs.FSSpecHandler(fs)), path


def join(base: str, *parts: str) -> str:
    base = normalise_uri(base)
    if "://" in base:
        proto, rest = base.split("://", 1)
        return f"{proto}://{posixpath.join(rest, *parts)}"
    return os.path.join(base, *parts)


class NotARegularFile(OSError):
    """A local path that names a pipe, socket or device: reading it could block for ever. Not transient."""


def _read_local(path: str) -> bytes:
    # Opened without blocking (a named pipe with no writer would wait for one), then checked before reading.
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    try:
        st = os.fstat(fd)
        if stat.S_ISDIR(st.st_mode):
            raise IsADirectoryError(f"{path} is a folder, not a file")
        if not stat.S_ISREG(st.st_mode):
            raise NotARegularFile(f"{path} is not a regular file (a pipe, socket or device): not read")
        with os.fdopen(fd, "rb", closefd=True) as f:
            fd = -1
            return f.read()
    finally:
        if fd >= 0:
            os.close(fd)


def read_bytes(uri: str, options: dict[str, Any] | None = None) -> bytes:
    """Only regular files: a local pipe or device is refused (NotARegularFile), never read."""
    fs, path = filesystem(uri, options)
    if protocol_of(uri) == "file":
        return _read_local(path)
    return fs.cat_file(path)


def write_bytes_atomic(uri: str, data: bytes, options: dict[str, Any] | None = None) -> None:
    """No partial object is ever visible under its final name.

    Object stores publish a single PUT whole; on file systems the bytes go to a
    temporary sibling that is renamed into place.
    """
    fs, path = filesystem(uri, options)
    if protocol_of(uri) == "file":
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        tmp = f"{path}.tmp-{uuid.uuid4().hex}"
        with open(tmp, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    else:
        fs.pipe_file(path, data)


def redact(options: dict[str, Any] | None) -> dict[str, Any]:
    """Storage options safe to print or store: secrets replaced, also in nested dicts
    (`client_kwargs={"aws_secret_access_key": ...}`, `config_kwargs`)."""

    def clean(k: str, v: Any) -> Any:
        if str(k).lower() in SECRET_KEYS:
            return "***"
        return {kk: clean(kk, vv) for kk, vv in v.items()} if isinstance(v, dict) else v

    return {k: clean(k, v) for k, v in (options or {}).items()}


def retry(fn, retries: int = 3, what: str = "storage call", base_delay: float = 0.2, until: float | None = None):
    """Call fn, retrying transient failures with exponential backoff and jitter.

    A missing object or a permission error is an answer, not a transient fault: raised at once. `until` (a
    `time.monotonic()` instant): the overall deadline; each attempt runs at most until then (in a thread of its
    own, abandoned if it does not answer), and no retry starts after it. Past it: TimeoutError.
    """
    import logging
    import random
    import time

    for attempt in range(retries + 1):
        try:
            return fn() if until is None else _within(fn, until, what)
        except (FileNotFoundError, PermissionError, IsADirectoryError, NotARegularFile):
            raise
        except Exception as exc:  # noqa: BLE001 - storage clients raise many transient types
            if attempt == retries:
                raise
            delay = base_delay * (2**attempt) * (1 + random.random())
            if until is not None and time.monotonic() + delay >= until:
                raise TimeoutError(f"{what}: gave up at the row's read deadline after {attempt + 1} attempt(s); "
                                   f"last: {type(exc).__name__}: {exc}") from exc
            logging.getLogger(__name__).warning("%s failed (%s: %s); retry %d/%d in %.1fs",
                                                what, type(exc).__name__, exc, attempt + 1, retries, delay)
            time.sleep(delay)


def _within(fn, until: float, what: str):
    """fn() if it answers before `until`, else TimeoutError; a call that does not answer is left to finish in a
    daemon thread (a blocked socket read cannot be interrupted from Python), never waited for."""
    import threading
    import time

    left = until - time.monotonic()
    if left <= 0:
        raise TimeoutError(f"{what}: the row's read deadline passed before this attempt")
    box: dict = {}

    def run():
        try:
            box["value"] = fn()
        except BaseException as exc:  # noqa: BLE001 - handed to the caller
            box["error"] = exc

    t = threading.Thread(target=run, name="storage-read", daemon=True)
    t.start()
    t.join(left)
    if t.is_alive():
        raise TimeoutError(f"{what}: no answer within {left:.0f} s (the row's read deadline)")
    if "error" in box:
        raise box["error"]
    return box["value"]


def read_with_retries(uri: str, options: dict[str, Any] | None, retries: int, until: float | None = None) -> bytes:
    return retry(lambda: read_bytes(uri, options), retries, f"read {uri}", until=until)


def write_with_retries(uri: str, data: bytes, options: dict[str, Any] | None, retries: int) -> None:
    retry(lambda: write_bytes_atomic(uri, data, options), retries, f"write {uri}")
