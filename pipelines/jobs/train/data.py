"""The data side of training (Ray Data CPU tasks): fetch, decode with the input guards, augment and
resize each triple; trainers receive raw uint8 pixels and never decode images themselves."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from harmony_ops.inputs import load_sample
from harmony_ops.training.augment import augment
from pipelines.config import TrainJobConfig
from pipelines.core.stage import PoolConfig, Stage, fail_with, pending, set_values
from pipelines.io.storage import read_with_retries
from schemas.vocabulary import ErrorKind

PIXELS = ("comp_px", "mask_px", "real_px")


@dataclass
class TrainDecodeStage(Stage):
    cfg: TrainJobConfig
    train: bool = True  # False: validation rows, resized without random crop or flip
    pool: PoolConfig = field(default_factory=PoolConfig)

    name = "decode"
    reads = ("status", "id", "composite", "mask", "real")
    writes = PIXELS

    def process(self, batch: pd.DataFrame) -> pd.DataFrame:
        opts, retries, side = self.cfg.storage_options, self.cfg.retries, self.cfg.resolution
        # Fresh entropy per batch: every pass over the data (epoch) draws new crops and flips.
        rng = np.random.default_rng()
        for i in batch.index[pending(batch)]:
            row = batch.loc[i]
            try:
                raw = [read_with_retries(row[c], opts, retries) for c in ("composite", "mask", "real")]
            except Exception as exc:  # noqa: BLE001 - any storage failure is this row's failure
                fail_with(batch, i, exc, ErrorKind.STORAGE_ERROR)
                continue
            try:
                s = load_sample(*raw, max_pixels=self.cfg.max_pixels)
                comp, mask, real = augment(s.composite, s.mask, s.real, side, rng,
                                           flip=self.train and self.cfg.random_flip, crop=self.train and self.cfg.random_crop)
            except Exception as exc:  # noqa: BLE001 - ImageError says which guard
                fail_with(batch, i, exc, ErrorKind.DECODE_ERROR, storage=False)
                continue
            set_values(batch, i, {"comp_px": comp.tobytes(), "mask_px": mask.tobytes(), "real_px": real.tobytes(),
                                  "status": "ok"})
        return batch


def to_tensors(batch: pd.DataFrame, side: int):
    """Decoded rows -> (composite, mask, real) torch tensors in [-1, 1], {0, 1}, [-1, 1]."""
    import torch

    def images(col):
        a = np.stack([np.frombuffer(b, np.uint8).reshape(side, side, 3) for b in batch[col]])
        return torch.from_numpy(a.copy()).permute(0, 3, 1, 2).float() / 127.5 - 1

    m = np.stack([np.frombuffer(b, np.uint8).reshape(side, side) for b in batch["mask_px"]])
    return images("comp_px"), torch.from_numpy(m.copy())[:, None].float(), images("real_px")


def decoded_dataset(run, rows: pd.DataFrame, cfg: TrainJobConfig, train: bool):
    """The rows as a lazy Ray dataset through the decode stage (re-run on every pass)."""
    from pipelines.core.adapter import apply_stages

    stage = TrainDecodeStage(cfg, train=train, pool=cfg.decode_pool)
    cols = ["row", "id", "composite", "mask", "real", "status", "error_type", "error_message"]
    return apply_stages(run.blocks(rows[cols]), [stage], inputs=cols, keep=cols)
