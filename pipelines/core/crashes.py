"""Bounding the retries of a batch that kills its worker.

Ray retries the batch of a worker that died (a native crash in a decoder, the kernel's OOM killer)
without limit, so one poisonous row could stall a job for ever. Before a stage processes a batch it
leaves an attempt marker in shared storage (under the run's journal) and removes it when the batch
is done: markers that outlive their attempt count the worker deaths of that batch. A batch that has
killed `max_crashes` workers is split in halves (as the out-of-memory path does), each half with
markers of its own, down to the single row that still kills its worker, which is then failed with
`worker_crashed` without being run again. Every other row completes.
"""

from __future__ import annotations

import hashlib
import os
import uuid
from dataclasses import dataclass

import pandas as pd

from pipelines.io.storage import filesystem, join, write_bytes_atomic

@dataclass(frozen=True)
class CrashLedger:
    uri: str  # a folder under the run's journal, reachable from every worker
    options: dict
    max_crashes: int

    def _folder(self, ids: list[str]) -> str:
        digest = hashlib.blake2b("\x00".join(ids).encode(), digest_size=12).hexdigest()
        return join(self.uri, digest)

    def deaths(self, ids: list[str]) -> int:
        fs, path = filesystem(self._folder(ids), self.options)
        try:
            return len(fs.ls(path, detail=False))
        except FileNotFoundError:
            return 0

    def begin(self, ids: list[str]) -> str:
        marker = join(self._folder(ids), f"attempt-{uuid.uuid4().hex}")
        write_bytes_atomic(marker, f"{os.getpid()}\n".encode(), self.options)
        return marker

    def end(self, marker: str) -> None:
        fs, path = filesystem(marker, self.options)
        try:
            fs.rm(path)
        except FileNotFoundError:
            pass


def row_ids(batch: pd.DataFrame) -> list[str]:
    col = "row" if "row" in batch.columns else "id"
    return [str(v) for v in batch[col].tolist()]
