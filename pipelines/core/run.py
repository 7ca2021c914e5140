"""The run skeleton every Ray job uses.

A job builds its rows and stages, then a `JobRun` does the rest: a fresh journal under the output
prefix, blocks of rows, the stages through the one adapter, the journal streamed as blocks finish,
consolidation with the one-row-per-input check, the summary with the configuration redacted, and
tidying up. Jobs differ only in the stages they declare and the summary extras they add.

A run holds the output prefix's lease (`pipelines.io.lease`) from `claim()` to the end of its `with`
block: `claim()` runs before Ray starts and before anything is written (`start_ray`, `consolidate` and
`close` claim too, so a job cannot write first), and a second run on the same prefix is refused there.
"""

from __future__ import annotations

import json
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import pandas as pd

from pipelines.core.adapter import apply_stages, ensure_ray
from pipelines.core.console import progress_of
from pipelines.core.crashes import CrashLedger
from pipelines.core.stage import Stage
from pipelines.errors import JobError, LeaseLost
from pipelines.io import lease as leases
from pipelines.io.outputs import output_problem
from pipelines.io.storage import filesystem, join, redact, write_bytes_atomic
from pipelines.io.tables import JOURNAL, METRICS_FILE, SUMMARY_FILE, journal_dataset, remove_tree, write_table_atomic


@dataclass
class JobResult:
    summary: dict
    exit_code: int = 0
    metrics: pd.DataFrame | None = None


class JobRun:
    """One run of a job on `cfg.output` (any `JobConfig` with an `output` prefix). Use it as a context
    manager: the lease on the prefix is released when the block ends, however it ends."""

    def __init__(self, cfg, echo=print):
        self.cfg = cfg
        self.opts = cfg.storage_options
        self.echo = echo
        self.t0 = time.perf_counter()
        self.journal = join(cfg.output, JOURNAL, f"run-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}")
        self.lease: leases.Lease | None = None
        self.command = "harmony " + type(cfg).__name__.removesuffix("JobConfig").lower()

    def __enter__(self) -> "JobRun":
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        lease, self.lease = self.lease, None
        if lease is not None:
            lease.release()
            if exc_type is not None and lease.lost.is_set():  # the heartbeat stopped this run: say why
                raise LeaseLost(lease.lost_message()) from None
        return False

    def claim(self) -> None:
        """Hold the output prefix's lease (raises `LeaseHeld` naming the run that holds it); once held,
        check it is still this run's (raises `LeaseLost` when a `--force` run took it over)."""
        if self.lease is not None:
            self.lease.check()
            return
        command = self.command
        problem = output_problem(self.cfg.output, self.opts)
        if problem:
            raise JobError(f"--output: {problem}")
        main = threading.current_thread() is threading.main_thread()
        on_lost = _interrupt_main if main else None  # stop the stream now, not at the next claim
        self.lease = leases.acquire(self.cfg.output, self.opts, ttl=self.cfg.lease_ttl_seconds, force=self.cfg.force,
                                    command=command, on_lost=on_lost)
        if self.lease.took_over:
            other, why = self.lease.took_over
            what = {"expired": "an expired lease", "gone": "the lease of a process that no longer exists",
                    "forced": "a live lease (--force)"}[why]
            self.echo(f"{command}: took over {what} on {self.cfg.output}: {other.describe()}", file=sys.stderr)

    @property
    def wall(self) -> float:
        return time.perf_counter() - self.t0

    def start_ray(self) -> None:
        self.claim()
        ensure_ray(self.cfg.ray_address, self.cfg.num_cpus)

    def blocks(self, rows: pd.DataFrame):
        """Rows as a Ray dataset of `block_rows`-row blocks: the unit of streaming and of journal files."""
        import ray

        n = self.cfg.block_rows
        return ray.data.from_pandas([rows.iloc[i : i + n] for i in range(0, len(rows), n)])

    def stream(self, source, stages: Sequence[Stage], keep: Iterable[str] = (), finalize: Callable | None = None,
               columns: Iterable[str] | None = None, read_back: bool = True, transit: Iterable[str] = ()) -> pd.DataFrame:
        """Run `stages` over `source` (a DataFrame of pending rows, or a Ray dataset with `columns`),
        journaling each finished block; returns the journaled rows (empty when there was nothing).
        `keep`, `finalize`, `transit`: as in `pipelines.core.adapter.apply_stages`."""
        total = None
        if isinstance(source, pd.DataFrame):
            if source.empty:
                return pd.DataFrame()
            self.start_ray()
            total, columns, source = len(source), list(source.columns), self.blocks(source)
        ledger = CrashLedger(join(self.journal, "_attempts"), self.opts, self.cfg.max_worker_crashes)
        ds = apply_stages(source, stages, inputs=columns or (), keep=keep, finalize=finalize, transit=transit,
                          ledger=ledger, wait_s=self.cfg.resource_wait_seconds,
                          echo=lambda m: self.echo(m, file=sys.stderr))
        progress = progress_of(self.echo, self.command, total)
        try:
            return journal_dataset(ds, self.journal, self.opts, read_back=read_back,
                                   on_block=progress.advance if progress is not None else None)
        finally:
            if progress is not None:
                progress.close()

    def consolidate(self, parts: Iterable[pd.DataFrame], expected: int, to_arrow: Callable) -> pd.DataFrame:
        """One table sorted by manifest row, exactly one row per input, written to metrics/metrics.parquet."""
        self.claim()
        parts = [p for p in parts if len(p)]
        final = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame({"row": pd.Series([], dtype="int64")})
        if len(final) != expected or final["row"].duplicated().any():
            raise JobError(f"internal error: {len(final)} metrics rows for {expected} manifest rows")
        final = final.sort_values("row").reset_index(drop=True)
        table = to_arrow(final)
        write_table_atomic(table, join(self.cfg.output, METRICS_FILE), self.opts)
        return table.to_pandas()

    def config(self) -> dict:
        """The job's configuration as it goes into summaries: storage secrets redacted."""
        config = self.cfg.model_dump(mode="json")
        config["storage_options"] = redact(self.cfg.storage_options)
        return config

    def close(self, summary: dict, tidy: Sequence[str] = ()) -> str:
        """Write summary.json, remove the journal and temporaries a killed worker left in `tidy` folders;
        returns the summary's URI."""
        self.claim()
        uri = join(self.cfg.output, SUMMARY_FILE)
        write_bytes_atomic(uri, json.dumps(summary, indent=2).encode(), self.opts)
        if hasattr(self.echo, "summary"):
            self.echo.summary(summary)
        remove_tree(join(self.cfg.output, JOURNAL), self.opts)
        for folder in tidy:
            remove_stale_temporaries(join(self.cfg.output, folder), self.opts)
        return uri


def _interrupt_main() -> None:
    import _thread

    _thread.interrupt_main()  # KeyboardInterrupt in the job; JobRun.__exit__ turns it into LeaseLost


def remove_stale_temporaries(uri: str, options: dict) -> None:
    """Temporary siblings a killed worker left between write and rename (file systems only: object
    stores publish whole PUTs). They never carry a final name; this only tidies the folder."""
    fs, path = filesystem(uri, options)
    if "file" not in fs.protocol:
        return
    for p in fs.glob(f"{path}/*.tmp-*"):
        fs.rm(p)
