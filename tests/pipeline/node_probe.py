"""A model stage that leaves evidence of where it ran, for the node-loss test (imported by Ray workers).

Per row it touches `start.<node id>.<row id>` before the model runs and `done.<node id>.<row id>`
after, under `probe_dir`. On the node named in `probe_dir/doomed`, once that node has finished two
rows, it holds the next row (`held.<node id>.<row id>`) for up to `hold_s` seconds, so the node
is removed while that row is in flight (at most once per run).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from pipelines.core.stage import pending
from pipelines.jobs.harmonize.model import ModelStage


@dataclass
class ProbedModelStage(ModelStage):
    probe_dir: str = ""
    hold_s: float = 60.0

    def process(self, batch: pd.DataFrame) -> pd.DataFrame:
        import ray

        node = ray.get_runtime_context().get_node_id()
        d = Path(self.probe_dir)
        ids = [str(i) for i in batch.loc[pending(batch), "id"]]
        for i in ids:
            (d / f"start.{node}.{i}").touch()
        doomed = (d / "doomed").read_text().strip()
        if ids and node == doomed and len(list(d.glob(f"done.{node}.*"))) >= 2 and not any(d.glob("held.*")):
            (d / f"held.{node}.{ids[0]}").touch()
            time.sleep(self.hold_s)  # the node is removed meanwhile, and this call with it
        out = super().process(batch)
        for i in ids:
            (d / f"done.{node}.{i}").touch()
        return out


def markers(probe_dir: Path) -> set[tuple[str, str, str]]:
    """(event, node id, row id) of every marker."""
    return {tuple(p.name.split(".", 2)) for p in probe_dir.iterdir() if p.name.count(".") >= 2}
