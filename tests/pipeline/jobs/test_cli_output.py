"""What `harmony harmonize` prints, run as a user runs it (the harmony command, relative paths, the local
Ray it starts, output redirected as in CI or `kubectl logs`)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import pandas as pd

from tests.pipeline.conftest import enc, make_scene

HARMONY = str(Path(sys.executable).with_name("harmony"))


def test_json_log_format_lines_parse_and_ray_keeps_its_output_to_its_log_file(tmp_path):
    rows = []
    for k in range(24):
        comp, mask, _ = make_scene(k % 4, ratio=0.2)
        (tmp_path / f"c{k}.png").write_bytes(enc(comp))
        (tmp_path / f"m{k}.png").write_bytes(enc(mask))
        rows.append(dict(id=f"r{k}", composite=f"c{k}.png", mask=f"m{k}.png"))
    rows.append(dict(id="gone", composite="missing.png", mask="m0.png"))
    pd.DataFrame(rows).to_parquet(tmp_path / "manifest.parquet")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RAY_num_", "RAY_idle_", "RAY_ADDRESS"))}
    env["RAY_TMPDIR"] = tempfile.mkdtemp(prefix="rt-")
    r = subprocess.run([HARMONY, "harmonize", "--manifest", "manifest.parquet", "--output", "out", "--engine", "baseline",
                        "--log-format", "json", "--progress-every", "0", "--max-failed-fraction", "0.01"],
                       cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert r.returncode == 3, r.stderr[-3000:]
    events = [json.loads(line) for line in r.stdout.splitlines()]
    kinds = [e["event"] for e in events]
    assert "progress" in kinds and kinds.count("summary") == 1
    last = [e for e in events if e["event"] == "progress"][-1]
    assert last["done"] == last["total"] == 25 and last["ok"] == 24 and last["failed"] == 1
    summary = next(e["summary"] for e in events if e["event"] == "summary")
    assert summary["counts"]["ok"] == 24 and summary["counts"]["failed"] == 1
    # The failed --max-failed-fraction is said plainly on stdout too, not only by the exit code.
    assert any(e["event"] == "message" and e["text"].startswith("RUN FAILED (exit 3)") for e in events)
    said = [e["text"] for e in events if e["event"] == "message" and e["text"].startswith("Ray's logs")]
    assert len(said) == 1 and "Started a local Ray instance" in Path(said[0].split(": ", 1)[1]).read_text()
    for noise in ("Token authentication", "RayDeprecationWarning", "Total Progress", "UserWarning", "\x1b[",
                  "constructor arguments in the object store"):
        assert noise not in r.stderr and noise not in r.stdout, noise
