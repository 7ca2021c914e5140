"""The refiner's stage-1 cache (`--stage1-cache URI`): the frozen `--init` stage-1 sampler (Euler-A,
`sampler_steps` steps) runs once over the training manifest as a Ray Data stage; its outputs are
written as PNGs under the URI with a cache manifest (`stage1.parquet`: id, composite, mask, real,
harmonized, seed, status) and `cache.json` naming what they were made from (the init model id, the
resolution, the sampler steps, the seed).

A later refiner run with the same URI reuses the cache when `cache.json` matches and the manifest
holds every training row; otherwise it rebuilds it. Each stage-1 output is made at the training side
from the plain (un-augmented) resize of its composite, with the row's seed (the seed of
`prepare_rows`, as `harmony harmonize` seeds rows); training then draws one crop and flip per row
and applies it alike to composite, mask, real and the cached output (`TrainDecodeStage(cached=True)`).
"""

from __future__ import annotations

import io
import json
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from pipelines.jobs.train.config import TrainJobConfig
from pipelines.config import FetchSettings
from pipelines.core.stage import PoolConfig, Stage, fail_with, set_values
from pipelines.io.storage import filesystem, join, read_bytes, write_bytes_atomic, write_with_retries
from schemas.vocabulary import ErrorKind

MANIFEST = "stage1.parquet"
META = "cache.json"
COLUMNS = ["id", "composite", "mask", "real", "harmonized", "seed", "status", "error_type", "error_message"]

def cache_key(cfg: TrainJobConfig) -> dict:
    from harmony_ops.checkpoints import resolve_checkpoint

    ck = resolve_checkpoint(cfg.init, refiner="auto", storage_options=cfg.storage_options)
    return dict(model_id=ck.model_id, resolution=cfg.resolution, sampler_steps=cfg.sampler_steps, seed=cfg.seed,
                scheduler="euler_a")


@dataclass
class Stage1CacheStage(Stage):
    """Decoded (un-augmented) rows -> the frozen stage-1 output as a PNG under the cache URI."""

    init: str  # the frozen stage 1's checkpoint
    uri: str  # the cache's prefix
    side: int
    sampler_steps: int
    fetch: FetchSettings
    pool: PoolConfig = field(default_factory=PoolConfig)

    name = "stage1-cache"
    stateful = True
    reads = ("status", "id", "seed", "comp_px", "mask_px")
    writes = ("harmonized",)

    def setup(self) -> None:
        import torch

        from harmony_ops.sampler import DiffHarmonySampler
        from harmony_ops.training.objectives import load_train_models

        device = torch.device("cuda" if torch.cuda.is_available() and (self.pool.num_gpus or 0) > 0 else "cpu")
        # The same frozen stage 1 as the online path: --init's UNet, VAE and null text, Euler-A, no Harmony-VAE.
        m = load_train_models(self.init, device, self.fetch.storage_options)
        self.sampler = DiffHarmonySampler(m.unet.eval(), m.vae, m.scheduler_config, m.null, "euler_a")

    def process(self, batch: pd.DataFrame) -> pd.DataFrame:
        from harmony_ops.imageio import encode_image
        from pipelines.jobs.train.data import to_tensors

        idx = list(batch.index[batch["status"] == "ok"])
        if not idx:
            return batch
        side, sub = self.side, batch.loc[idx]
        comp, mask, _ = to_tensors(sub.assign(real_px=sub["comp_px"]), side)
        out = self.sampler(comp, mask, seeds=[int(s) for s in sub["seed"]], num_inference_steps=self.sampler_steps)
        pred = (out.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
        for i, p in zip(idx, pred):
            uri = join(self.uri, "harmonized", f"{batch.at[i, 'id']}.png")
            try:
                write_with_retries(uri, encode_image(p, "png"), self.fetch.storage_options, self.fetch.retries)
            except Exception as exc:  # noqa: BLE001 - a storage failure is this row's failure
                fail_with(batch, i, exc, ErrorKind.STORAGE_ERROR)
                continue
            set_values(batch, i, {"harmonized": uri})
        return batch


def _read(cfg: TrainJobConfig, key: dict, rows: pd.DataFrame) -> pd.DataFrame | None:
    uri, opts = cfg.stage1_cache, cfg.storage_options
    fs, _ = filesystem(uri, opts)
    if not (fs.exists(filesystem(join(uri, META), opts)[1]) and fs.exists(filesystem(join(uri, MANIFEST), opts)[1])):
        return None
    if json.loads(read_bytes(join(uri, META), opts)) != key:
        return None
    cached = pd.read_parquet(io.BytesIO(read_bytes(join(uri, MANIFEST), opts)))
    if not set(rows["id"]) <= set(cached["id"]):
        return None
    return cached


def stage1_cache(run, cfg: TrainJobConfig, rows: pd.DataFrame, echo=print) -> tuple[pd.DataFrame, bool]:
    """The cache manifest's rows for the training `rows` (built now unless a matching one exists),
    and whether it was reused."""
    from pipelines.jobs.train.data import decoded_dataset

    key = cache_key(cfg)
    cached = _read(cfg, key, rows)
    reused = cached is not None
    if cached is None:
        echo(f"harmony train: building the stage-1 cache at {cfg.stage1_cache} ({len(rows)} rows)")
        # Before training starts: the trainers' share of the cluster is free (1 CPU each unless set).
        pool = PoolConfig(num_cpus=cfg.cpus_per_worker or 1.0, num_gpus=cfg.gpus_per_worker,
                          batch_size=min(cfg.batch_size, 8), max_workers=cfg.workers)
        stage = Stage1CacheStage(cfg.init, cfg.stage1_cache, cfg.resolution, cfg.sampler_steps, cfg.fetch, pool=pool)
        ds = decoded_dataset(run, rows, cfg, False, stages=[stage])
        cached = ds.to_pandas()
        cached = cached.reindex(columns=COLUMNS)
        cached.loc[cached["status"] != "ok", "harmonized"] = None
        buf = io.BytesIO()
        cached.to_parquet(buf, index=False)
        write_bytes_atomic(join(cfg.stage1_cache, MANIFEST), buf.getvalue(), cfg.storage_options)
        write_bytes_atomic(join(cfg.stage1_cache, META), json.dumps(key, indent=1).encode(), cfg.storage_options)
    else:
        echo(f"harmony train: reusing the stage-1 cache at {cfg.stage1_cache}")
    cached = cached.set_index("id").loc[list(rows["id"])].reset_index()
    return cached, reused
