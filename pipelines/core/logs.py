"""Ray's own logs and warnings go to a file, not to the user's terminal (unless --verbose).

Ray prints its start-up notices, Ray Data's operator progress, Ray Train's reports and Python
warnings to the console; a 300-row run redirected to a file printed about 400 such lines. While a
command runs inside `ray_logs_to_file`, those records go to one log file under the temporary folder
(Ray's own session logs stay where Ray keeps them), Ray Data draws no progress bars, and Ray workers'
output is not forwarded to the driver. The job's own output goes through `pipelines.core.console`.
"""

from __future__ import annotations

import contextlib
import logging
import os
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

# Loggers whose console output is Ray's, not the job's.
RAY_LOGGERS = ("ray", "ray.data", "ray.train", "ray.tune", "ray.serve", "py.warnings")

_state = {"quiet": False}


def quiet() -> bool:
    """Whether Ray should keep its output off the terminal (read by `ensure_ray`)."""
    return _state["quiet"]


def log_path(command: str) -> Path:
    root = Path(os.environ.get("RAY_TMPDIR") or tempfile.gettempdir()) / "harmony-logs"
    root.mkdir(parents=True, exist_ok=True)
    return root / f"{command}-{time.strftime('%Y%m%dT%H%M%S')}-{os.getpid()}.log"


def route_ray_loggers() -> None:
    """Ray's loggers write to the log file only (again after ray.init, which resets them)."""
    handler = _state.get("handler")
    if handler is None:
        return
    for name in RAY_LOGGERS:
        lg = logging.getLogger(name)
        for h in list(lg.handlers):
            if isinstance(h, logging.StreamHandler) and h is not handler:
                lg.removeHandler(h)
        if handler not in lg.handlers:
            lg.addHandler(handler)
        lg.propagate = False


def silence_ray_data() -> None:
    """After ray.init: Ray Data configures a console handler and progress bars; undo both."""
    from ray.data import DataContext

    ctx = DataContext.get_current()
    ctx.enable_progress_bars = False
    ctx.enable_operator_progress_bars = False
    ctx.print_on_execution_start = False
    route_ray_loggers()


def _native_stderr_to(path: Path):
    """Point the process's stderr (file descriptor 2) at the log file and sys.stderr at a copy of where it
    pointed; returns the undo. Ray's native core worker writes its log lines to descriptor 2 itself, past
    Python's logging: an ERROR line about Ray Data's own actor arguments
    (https://github.com/ray-project/ray/issues/53727) appeared on every run. The job's own lines and
    Python tracebacks go through sys.stderr, so they still reach the user. Nothing is done when sys.stderr
    is not descriptor 2 (a test capturing it, an embedding application)."""
    import sys

    try:
        if sys.stderr.fileno() != 2:
            return lambda: None
    except (AttributeError, OSError, ValueError):
        return lambda: None
    sys.stderr.flush()
    saved, old = os.dup(2), sys.stderr
    new = os.fdopen(os.dup(2), "w", buffering=1, encoding=old.encoding or "utf-8", errors="backslashreplace")
    # The project's own warnings (lease, storage retries) go through handlers bound to the old stream: follow.
    moved = [h for h in logging.getLogger().handlers if isinstance(h, logging.StreamHandler) and h.stream is old]
    for h in moved:
        h.setStream(new)
    sys.stderr = new
    log = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    os.dup2(log, 2)
    os.close(log)

    def undo() -> None:
        try:
            new.flush()
        except (OSError, ValueError):  # a closed pipe on the other end: still put everything back
            pass
        finally:
            os.dup2(saved, 2)
            os.close(saved)
            for h in moved:
                h.setStream(old)
            sys.stderr = old
            try:
                new.close()
            except (OSError, ValueError):
                pass

    return undo


@contextlib.contextmanager
def ray_logs_to_file(command: str, verbose: bool = False) -> Iterator[Path | None]:
    """Route Ray's logs and Python warnings to a file while the block runs; yields its path (None
    when `verbose`: Ray prints as it would)."""
    if verbose:
        yield None
        return
    import ray  # noqa: F401 - its import configures the "ray" logger's console handler: route it after

    path = log_path(command)
    handler = logging.FileHandler(path, encoding="utf-8")
    handler.setLevel(logging.INFO)  # Ray Data logs DEBUG records by the thousand
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    saved = [(lg, list(lg.handlers), lg.propagate) for lg in map(logging.getLogger, RAY_LOGGERS)]
    last_resort = logging.lastResort
    # ray.init clears the "ray" logger's handlers: what it logs meanwhile finds no handler and would go
    # to the last-resort handler (stderr).
    logging.lastResort = handler
    _state.update(quiet=True, handler=handler)
    route_ray_loggers()
    logging.captureWarnings(True)
    native = _native_stderr_to(path)
    try:
        yield path
    finally:
        native()
        _state.update(quiet=False, handler=None)
        logging.lastResort = last_resort
        logging.captureWarnings(False)
        for lg, handlers, propagate in saved:
            lg.handlers[:] = handlers
            lg.propagate = propagate
        handler.close()
