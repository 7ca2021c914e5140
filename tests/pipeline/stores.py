"""One place for the pipeline tests that run the same CLI command on local files and on the S3
endpoint (moto): a root URI, how to put and read objects under it, and the CLI's storage flags."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

STORES = ("local", "s3")


@dataclass
class Store:
    root: str  # a local folder or an s3:// prefix
    put: Callable[[str, bytes], None]  # (path relative to root, bytes)
    read: Callable[[str], bytes]
    flags: list[str] = field(default_factory=list)  # --storage-option ... for the CLI


def make_store(kind: str, tmp_path: Path, request) -> Store:
    """`kind` "local" (under tmp_path) or "s3" (a fresh bucket on the moto endpoint, credentials as
    storage options: Ray workers may have started before the endpoint's environment was set)."""
    if kind == "local":
        base = tmp_path / "store"

        def put(rel: str, data: bytes) -> None:
            p = base / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            p.write_bytes(data)

        return Store(str(base), put, lambda rel: (base / rel).read_bytes())
    from pipelines.io.storage import filesystem

    bucket, opts = request.getfixturevalue("s3_bucket")
    opts = {**opts, "key": os.environ["AWS_ACCESS_KEY_ID"], "secret": os.environ["AWS_SECRET_ACCESS_KEY"]}
    fs, path = filesystem(bucket, opts)
    flags = [a for k, v in opts.items() for a in ("--storage-option", f"{k}={v}")]
    return Store(bucket, lambda rel, data: fs.pipe_file(f"{path}/{rel}", data), lambda rel: fs.cat_file(f"{path}/{rel}"),
                 flags)
