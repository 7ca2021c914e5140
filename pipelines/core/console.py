"""What a job prints, for a person at a terminal, a log collector, or a program.

A `Console` is the `echo` a job is given. It prints the job's own lines (`text` format), or one JSON
object per line (`json`); `quiet` keeps only the final summary and errors. Progress has one shape
for every job (rows done of total, ok and failed so far, rows/s, ETA): a tqdm bar on a terminal, a
plain line every `every` seconds when redirected, a JSON object per update in `json`. Nothing it
writes to a file or pipe holds terminal escape codes.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Mapping
from typing import IO, Literal

Format = Literal["text", "json"]


def _eta(done: int, total: int | None, rate: float) -> float | None:
    if not total or rate <= 0:
        return None
    return max(total - done, 0) / rate


def progress_fields(done: int, total: int | None, counts: Mapping[str, int], elapsed: float, base: int = 0) -> dict:
    """The fields every progress event carries (pure: what the line, the bar and the JSON show); `base`:
    what was done before this run started (a resumed training run's step), not counted in the rate."""
    rate = (done - base) / elapsed if elapsed > 0 else 0.0
    failed = sum(v for k, v in counts.items() if k != "ok")
    return {"done": done, "total": total, "ok": int(counts.get("ok", 0)), "failed": int(failed),
            "rows_per_second": round(rate, 3), "eta_seconds": None if (e := _eta(done, total, rate)) is None else round(e, 1),
            "elapsed_seconds": round(elapsed, 1)}


def progress_line(what: str, f: dict, unit: str = "rows") -> str:
    total = f"/{f['total']}" if f["total"] is not None else ""
    eta = f", ETA {f['eta_seconds']:.0f}s" if f["eta_seconds"] is not None else ""
    extra = "".join(f", {k} {v:.4g}" if isinstance(v, float) else f", {k} {v}" for k, v in f.get("extra", {}).items())
    return (f"{what}: {f['done']}{total} {unit}, ok {f['ok']}, failed {f['failed']}{extra}, "
            f"{f['rows_per_second']:.2f} {unit}/s{eta}")


class Progress:
    """One job's progress: `advance(n, counts)` after each finished block, `close()` at the end."""

    def __init__(self, console: "Console", what: str, total: int | None, unit: str = "rows"):
        self.console, self.what, self.total, self.unit = console, what, total, unit
        self.done, self.base, self.counts, self.extra = 0, 0, {}, {}
        self.t0 = self.said = time.monotonic()
        self.bar = None
        if console.format == "text" and not console.quiet and console.is_tty:
            from tqdm import tqdm

            self.bar = tqdm(total=total, desc=what, unit=unit[:-1] if unit.endswith("s") else unit,
                            file=console.err, dynamic_ncols=True, leave=False)

    def fields(self) -> dict:
        f = progress_fields(self.done, self.total, self.counts, time.monotonic() - self.t0, self.base)
        return {**f, "extra": dict(self.extra)} if self.extra else f

    def advance(self, n: int, counts: Mapping[str, int] | None = None, **extra) -> None:
        """`n` more done; `counts` by status (ok, failed, ...); `extra` fields shown as they are (a loss)."""
        self.done += n
        self.extra.update(extra)
        for k, v in (counts or {}).items():
            self.counts[k] = self.counts.get(k, 0) + int(v)
        c = self.console
        if self.bar is not None:
            f = self.fields()
            self.bar.set_postfix(ok=f["ok"], failed=f["failed"], **self.extra, refresh=False)
            self.bar.update(n)
            return
        now = time.monotonic()
        if c.quiet or now - self.said < c.every:
            return
        self.said = now
        self._emit()

    def _emit(self) -> None:
        f = self.fields()
        if self.console.format == "json":
            self.console.emit({"event": "progress", "job": self.what, **f})
        else:
            self.console.out.write(progress_line(self.what, f, self.unit) + "\n")
            self.console.out.flush()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None


class Console:
    """The `echo` of a job run from the command line (see the module's docstring)."""

    def __init__(self, format: Format = "text", quiet: bool = False, every: float = 10.0,
                 out: IO[str] | None = None, err: IO[str] | None = None):
        self.format, self.quiet, self.every = format, quiet, every
        self._out, self._err = out, err
        self.final = False  # set once the run's summary is written: what follows is the final summary

    # Resolved when written to, not when made: while a job runs, `ray_logs_to_file` may point sys.stderr
    # at a copy of the terminal and the process's own stderr at the log file.
    @property
    def out(self) -> IO[str]:
        return self._out or sys.stdout

    @property
    def err(self) -> IO[str]:
        return self._err or sys.stderr

    @property
    def is_tty(self) -> bool:
        return bool(getattr(self.err, "isatty", lambda: False)())

    def emit(self, obj: dict) -> None:
        self.out.write(json.dumps(obj, default=str) + "\n")
        self.out.flush()

    def __call__(self, *parts, file: IO[str] | None = None, sep: str = " ", end: str = "\n", **_) -> None:
        text = sep.join(str(p) for p in parts)
        error = file is not None and (file is self.err or file is sys.stderr)
        if self.quiet and not error and not self.final:
            return
        if self.format == "json":
            self.emit({"event": "error" if error else "message", "text": text})
            return
        stream = self.err if error else self.out
        stream.write(text + end)
        stream.flush()

    def progress(self, what: str, total: int | None, unit: str = "rows") -> Progress:
        return Progress(self, what, total, unit)

    def summary(self, summary: dict) -> None:
        """The run's summary is written: the lines after it are the final summary (kept by --quiet);
        `json` prints the whole summary as one object."""
        self.final = True
        if self.format == "json":
            self.emit({"event": "summary", "summary": summary})


def progress_of(echo, what: str, total: int | None, unit: str = "rows") -> Progress | None:
    """The echo's progress reporter when it has one (a Console); plain callables (tests, the recipe
    runner) get none."""
    make = getattr(echo, "progress", None)
    return make(what, total, unit) if make is not None else None
