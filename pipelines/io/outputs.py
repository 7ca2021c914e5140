"""Whether an output prefix can be a job's output, decided before anything is written there (lease, journal,
images): a folder-like location on a store the job can write."""

from __future__ import annotations

import os

from harmony_ops.remote import is_http
from pipelines.io.storage import filesystem, normalise_uri, protocol_of


def output_problem(uri: str, options: dict | None = None) -> str | None:
    """One line saying why `uri` cannot be an output prefix, or None."""
    if not isinstance(uri, str) or not uri.strip():
        return "the output prefix is empty: name a folder or a bucket prefix"
    uri = normalise_uri(uri)
    if is_http(uri):
        return f"{uri}: HTTP(S) is read-only here; write to a local folder or an object store (s3://...)"
    proto = protocol_of(uri)
    if proto == "file":
        path = os.path.abspath(uri.removeprefix("file://"))
        if os.path.exists(path) and not os.path.isdir(path):
            return f"{path} is a file, not a folder"
        parent = path
        while not os.path.exists(parent):  # the nearest existing ancestor must be a folder we may write in
            parent = os.path.dirname(parent)
        if not os.path.isdir(parent):
            return f"{path} lies below {parent}, which is a file, not a folder"
        if not os.access(parent, os.W_OK | os.X_OK):
            return f"{parent} is not writable by this user"
        return None
    if proto in ("s3", "s3a"):
        bucket = uri.split("://", 1)[1].split("/", 1)[0]
        if not bucket:
            return f"{uri}: no bucket named"
        try:
            fs, _ = filesystem(f"{proto}://{bucket}", options)
            fs.call_s3("head_bucket", Bucket=bucket)
        except FileNotFoundError:  # a definite 404: no such bucket
            return f"bucket {bucket!r} does not exist"
        except Exception:  # noqa: BLE001 - forbidden to list, throttled, ...: the job's own writes will tell
            return None
    return None
