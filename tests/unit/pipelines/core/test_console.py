"""pipelines/core/console.py: progress fields, plain lines, JSON lines, --quiet; no escape codes off a terminal."""

from __future__ import annotations

import io
import json
import sys

from pipelines.core.console import Console, progress_fields, progress_line


def test_progress_fields_rate_and_eta():
    f = progress_fields(30, 120, {"ok": 28, "failed": 1, "invalid": 1}, elapsed=10.0)
    assert f == {"done": 30, "total": 120, "ok": 28, "failed": 2, "rows_per_second": 3.0, "eta_seconds": 30.0,
                 "elapsed_seconds": 10.0}
    assert progress_fields(0, None, {}, 0.0)["eta_seconds"] is None
    # A resumed run: what was done before it does not count in its rate.
    assert progress_fields(40, 40, {"ok": 10}, elapsed=5.0, base=30)["rows_per_second"] == 2.0


def test_progress_line():
    f = progress_fields(30, 120, {"ok": 29, "failed": 1}, elapsed=10.0)
    assert progress_line("harmony harmonize", f) == "harmony harmonize: 30/120 rows, ok 29, failed 1, 3.00 rows/s, ETA 30s"


def test_redirected_progress_prints_at_most_one_line_per_interval():
    out, err = io.StringIO(), io.StringIO()
    c = Console("text", every=3600, out=out, err=err)
    p = c.progress("harmony harmonize", 100)
    for _ in range(10):
        p.advance(10, {"ok": 10})
    p.close()
    lines = out.getvalue().splitlines()
    assert lines == [] and err.getvalue() == ""  # the first interval has not passed
    c.every = 0
    p = c.progress("harmony harmonize", 100)
    p.advance(5, {"ok": 4, "failed": 1})
    assert out.getvalue().startswith("harmony harmonize: 5/100 rows, ok 4, failed 1")
    assert "\x1b" not in out.getvalue() + err.getvalue()


def test_json_lines_parse_and_the_summary_is_one_object():
    out = io.StringIO()
    c = Console("json", every=0, out=out, err=out)
    c("harmony harmonize: 3 rows")
    p = c.progress("harmony harmonize", 3)
    p.advance(3, {"ok": 3})
    c.summary({"counts": {"ok": 3}})
    c("failed or invalid rows: 1/3", file=sys.stderr)
    events = [json.loads(line) for line in out.getvalue().splitlines()]
    assert [e["event"] for e in events] == ["message", "progress", "summary", "error"]
    assert events[1]["done"] == 3 and events[1]["ok"] == 3 and events[2]["summary"] == {"counts": {"ok": 3}}


def test_quiet_keeps_the_final_summary_and_errors():
    out, err = io.StringIO(), io.StringIO()
    c = Console("text", quiet=True, every=0, out=out, err=err)
    c("start banner")
    c.progress("harmony harmonize", 2).advance(2, {"ok": 2})
    c("an error", file=sys.stderr)
    c.summary({})
    c("rows 2: ok 2")
    assert out.getvalue() == "rows 2: ok 2\n" and err.getvalue() == "an error\n"
