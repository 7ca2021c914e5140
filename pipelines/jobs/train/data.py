"""The data side of training (Ray Data CPU tasks): fetch, decode with the input guards, augment and
resize each triple; trainers receive raw uint8 pixels and never decode images themselves."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from harmony_ops.inputs import load_sample
from harmony_ops.imageio import decode_image
from harmony_ops.training.augment import augment, augment_many
from pipelines.jobs.train.config import TrainJobConfig
from pipelines.config import FetchSettings
from pipelines.core.stage import PoolConfig, Stage, fail_with, pending, set_values
from pipelines.io.storage import read_with_retries
from schemas.vocabulary import ErrorKind

PIXELS = ("comp_px", "mask_px", "real_px")


@dataclass
class TrainDecodeStage(Stage):
    fetch: FetchSettings
    side: int  # training resolution
    random_crop: bool = True
    random_flip: bool = True
    train: bool = True  # False: validation rows, resized without random crop or flip
    pool: PoolConfig = field(default_factory=PoolConfig)
    # Rows of a stage-1 cache manifest: also decode `harmonized` (the cached stage-1 output, made at
    # the training side from the un-augmented resize) and apply one crop/flip to all four images.
    cached: bool = False

    name = "decode"

    @property
    def reads(self) -> tuple[str, ...]:
        return ("status", "id", "composite", "mask", "real") + (("harmonized",) if self.cached else ())

    @property
    def writes(self) -> tuple[str, ...]:
        return PIXELS + (("harm_px",) if self.cached else ())

    def process(self, batch: pd.DataFrame) -> pd.DataFrame:
        opts, retries, side = self.fetch.storage_options, self.fetch.retries, self.side
        # Fresh entropy per batch: every pass over the data (epoch) draws new crops and flips.
        rng = np.random.default_rng()
        for i in batch.index[pending(batch)]:
            row = batch.loc[i]
            try:
                until = self.fetch.until()  # one deadline for the row's reads
                raw = [read_with_retries(row[c], opts, retries, until) for c in ("composite", "mask", "real")]
            except Exception as exc:  # noqa: BLE001 - any storage failure is this row's failure
                fail_with(batch, i, exc, ErrorKind.STORAGE_ERROR)
                continue
            try:
                s = load_sample(*raw, max_pixels=self.fetch.max_pixels)
                flip, crop = self.train and self.random_flip, self.train and self.random_crop
                extra = {}
                if self.cached:
                    # The stage-1 output was made from the plain resize: resize first, then crop/flip all four alike.
                    comp, mask, real = augment(s.composite, s.mask, s.real, side, rng, flip=False, crop=False)
                    harm = np.asarray(decode_image(read_with_retries(row["harmonized"], opts, retries, until), "harmonized")[0])
                    if harm.shape != comp.shape:
                        raise ValueError(f"cached stage-1 output is {harm.shape[1]}x{harm.shape[0]}, not {side}x{side}")
                    (comp, real, harm), mask = augment_many([comp, real, harm], mask, side, rng, flip=flip, crop=crop)
                    extra = {"harm_px": harm.tobytes()}
                else:
                    comp, mask, real = augment(s.composite, s.mask, s.real, side, rng, flip=flip, crop=crop)
            except Exception as exc:  # noqa: BLE001 - ImageError says which guard
                fail_with(batch, i, exc, ErrorKind.DECODE_ERROR, storage=False)
                continue
            set_values(batch, i, {"comp_px": comp.tobytes(), "mask_px": mask.tobytes(), "real_px": real.tobytes(),
                                  **extra, "status": "ok"})
        return batch


def to_tensors(batch: pd.DataFrame, side: int):
    """Decoded rows -> (composite, mask, real) torch tensors in [-1, 1], {0, 1}, [-1, 1]."""
    import torch

    def images(col):
        a = np.stack([np.frombuffer(b, np.uint8).reshape(side, side, 3) for b in batch[col]])
        return torch.from_numpy(a.copy()).permute(0, 3, 1, 2).float() / 127.5 - 1

    m = np.stack([np.frombuffer(b, np.uint8).reshape(side, side) for b in batch["mask_px"]])
    return images("comp_px"), torch.from_numpy(m.copy())[:, None].float(), images("real_px")


def harmonized_tensor(batch: pd.DataFrame, side: int):
    """Cached stage-1 outputs of decoded rows -> N x 3 x side x side in [-1, 1]."""
    import torch

    a = np.stack([np.frombuffer(b, np.uint8).reshape(side, side, 3) for b in batch["harm_px"]])
    return torch.from_numpy(a.copy()).permute(0, 3, 1, 2).float() / 127.5 - 1


def decoded_dataset(run, rows: pd.DataFrame, cfg: TrainJobConfig, train: bool, cached: bool = False, stages=()):
    """The rows as a lazy Ray dataset through the decode stage (re-run on every pass), then `stages`."""
    from pipelines.core.adapter import apply_stages

    stage = TrainDecodeStage(cfg.fetch, cfg.resolution, cfg.random_crop, cfg.random_flip, train=train, pool=cfg.pools.decode,
                             cached=cached)
    cols = ["row", "id", "composite", "mask", "real", "status", "error_type", "error_message"]
    cols += ["harmonized"] if cached else ["seed"] if stages else []
    keep = cols + [c for s in stages for c in s.writes]
    return apply_stages(run.blocks(rows[cols]), [stage, *stages], inputs=cols, keep=keep)
