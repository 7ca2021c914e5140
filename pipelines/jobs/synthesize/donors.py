"""The donor pool of colour transfer: Lab statistics of the foregrounds of the first input rows."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from harmony_ops.perturb import DonorPool, fg_lab_stats
from pipelines.jobs.synthesize.config import SynthesizeJobConfig
from pipelines.core.stage import PoolConfig, Stage
from pipelines.jobs.synthesize.sources import input_columns, input_problem, load_source, sample_mask


@dataclass
class DonorStatsStage(Stage):
    """Lab statistics of each row's foreground (sample 1's mask): the donor pool of colour transfer.
    Rows that cannot be read are left out."""

    cfg: SynthesizeJobConfig
    pool: PoolConfig = field(default_factory=PoolConfig)

    name = "donor-stats"
    keeps_rows = False
    writes = ("id",) + tuple(f"{s}_{c}" for s in ("mean", "std") for c in "Lab")

    @property
    def reads(self) -> tuple[str, ...]:
        return input_columns(self.cfg)

    def crashed(self, batch: pd.DataFrame, message: str) -> pd.DataFrame:
        return pd.DataFrame(columns=list(self.writes))  # a donor that crashes its worker is no donor

    def process(self, batch: pd.DataFrame) -> pd.DataFrame:
        out = []
        for rec in batch.to_dict("records"):
            if input_problem(rec, self.cfg):
                continue
            try:
                source = load_source(rec, self.cfg)
                mask, _ = sample_mask(self.cfg, rec["id"], source, 1)
                stats = fg_lab_stats(source.real, mask)
            except Exception:  # noqa: BLE001 - a donor that cannot be read is no donor; its row reports it
                continue
            out.append({"id": rec["id"], **{f"mean_{c}": float(stats.mean[i]) for i, c in enumerate("Lab")},
                        **{f"std_{c}": float(stats.std[i]) for i, c in enumerate("Lab")}})
        return pd.DataFrame(out, columns=list(self.writes))


def donor_pool_from(rows: list[dict]) -> DonorPool:
    return DonorPool(
        ids=tuple(r["id"] for r in rows),
        mean=np.array([[r[f"mean_{c}"] for c in "Lab"] for r in rows], dtype=np.float64).reshape(-1, 3),
        std=np.array([[r[f"std_{c}"] for c in "Lab"] for r in rows], dtype=np.float64).reshape(-1, 3),
    )
