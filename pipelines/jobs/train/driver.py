"""`harmony train`: the driver. Validates the manifests, builds the Ray Data input, runs the
TorchTrainer (resuming from the latest checkpoint under <output>/checkpoints), then writes
model/, metrics/, summary.json and report/ from the final checkpoint."""

from __future__ import annotations

import io
import os
import tempfile
from pathlib import Path

import pandas as pd

from pipelines.config import TrainJobConfig
from pipelines.core.run import JobResult, JobRun
from pipelines.errors import JobError
from pipelines.io.manifest import prepare_rows, read_manifest
from pipelines.io.storage import arrow_filesystem, join, write_bytes_atomic
from pipelines.jobs.train import loop
from pipelines.jobs.train.data import decoded_dataset
from pipelines.jobs.train.export import export_model
from pipelines.jobs.train.report import write_report
from schemas.training import TRAIN_FILE, VALIDATION_FILE, train_table, validation_table
from schemas.vocabulary import Status

RUN_NAME = "train"


def _rows(cfg: TrainJobConfig, uri: str) -> pd.DataFrame:
    df = read_manifest(uri, cfg.storage_options)
    for c in ("composite", "mask", "real"):
        if c not in df.columns:
            raise JobError(f"manifest {uri} has no `{c}` column: training needs composite, mask and real")
    if cfg.limit:
        df = df.head(cfg.limit)
    rows = prepare_rows(df, uri, cfg.output, "png", cfg.seed, allow=cfg.allow_uri)
    no_real = rows["real"].isna() & (rows["status"] == Status.PENDING)
    rows.loc[no_real, ["status", "error_type", "error_message"]] = [Status.INVALID, "invalid_row", "no real image"]
    return rows


def _write_parquet(df: pd.DataFrame, uri: str, options: dict) -> None:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    write_bytes_atomic(uri, buf.getvalue(), options)


def run_train(cfg: TrainJobConfig, echo=print) -> JobResult:
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchTrainer

    rows = _rows(cfg, cfg.data)
    invalid = rows[rows["status"] != Status.PENDING]
    train_rows = rows[rows["status"] == Status.PENDING]
    if train_rows.empty:
        raise JobError(f"manifest {cfg.data} has no valid row to train on")
    with JobRun(cfg, echo) as run:
        run.start_ray()
        cache = None
        if cfg.stage1_cache:
            from pipelines.jobs.train.cache import stage1_cache

            cached, reused = stage1_cache(run, cfg, train_rows, echo)
            ok = (cached["status"] == "ok").to_numpy() & cached["harmonized"].notna().to_numpy()
            cache = dict(uri=cfg.stage1_cache, reused=reused, rows=int(ok.sum()))
            invalid = pd.concat([invalid, cached[~ok][["id", "error_type", "error_message"]]], ignore_index=True)
            train_rows = train_rows.assign(harmonized=cached["harmonized"].to_numpy())[ok]
            if train_rows.empty:
                raise JobError(f"the stage-1 cache at {cfg.stage1_cache} has no usable row")
        ds = decoded_dataset(run, train_rows, cfg, True, cached=cache is not None)
        val_ref, val_skipped, n_val = None, 0, 0
        if cfg.validate_data:
            vrows = _rows(cfg, cfg.validate_data)
            vrows = vrows[vrows["status"] == Status.PENDING]
            val = decoded_dataset(run, vrows, cfg, False).to_pandas()
            val_skipped = int((val["status"] != "ok").sum())
            val = val[val["status"] == "ok"].head(cfg.validate_rows).reset_index(drop=True)
            val_ref, n_val = (ray.put(val) if len(val) else None), len(val)
        fs, path = arrow_filesystem(join(cfg.output, "checkpoints"), cfg.storage_options)
        loop_cfg = dict(cfg.model_dump(include={"task", "init", "resolution", "lr", "weight_decay", "warmup_steps", "ema",
                                                "ema_decay", "precision", "seed", "max_steps", "batch_size", "plain_mse",
                                                "checkpoint_every", "validate_every", "log_every", "sampler_steps",
                                                "output", "storage_options", "cpus_per_worker"}),
                        validate_ref=val_ref, fail_at=os.environ.get(loop.FAIL_AT_ENV),
                        fail_marker=os.environ.get(loop.FAIL_MARKER_ENV))
        trainer = TorchTrainer(
            loop.train_loop,
            train_loop_config=loop_cfg,
            scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.gpus_per_worker > 0,
                                         resources_per_worker={"CPU": cfg.cpus_per_worker,
                                                               **({"GPU": cfg.gpus_per_worker} if cfg.gpus_per_worker else {})}),
            run_config=RunConfig(name=RUN_NAME, storage_path=path, storage_filesystem=fs,
                                 failure_config=FailureConfig(max_failures=cfg.max_failures),
                                 checkpoint_config=CheckpointConfig(num_to_keep=2)),
            datasets={"train": ds},
        )
        result = trainer.fit()
        if result.checkpoint is None:
            raise JobError("training ended without a checkpoint")
        with result.checkpoint.as_directory() as d, tempfile.TemporaryDirectory():
            d = Path(d)
            train = train_table(pd.read_parquet(d / loop.ROWS))
            valid = pd.read_parquet(d / loop.VAL_ROWS)
            skipped = pd.read_parquet(d / loop.SKIPPED)
            run.claim()
            model_uri = export_model(cfg.init, d / loop.TRAINED, cfg.task, cfg.output, cfg.storage_options)
        _write_parquet(train, join(cfg.output, TRAIN_FILE), cfg.storage_options)
        valid = validation_table(valid) if len(valid) else valid
        if len(valid):
            _write_parquet(valid, join(cfg.output, VALIDATION_FILE), cfg.storage_options)
        reasons = pd.concat([invalid["error_type"], skipped["error_type"]]).value_counts().to_dict()
        summary = dict(
            command="harmony train", task=cfg.task, steps=int(train["step"].max()), max_steps=cfg.max_steps,
            resumed_from_step=int((result.metrics or {}).get("resumed_from", 0)),
            final_loss=float(train["loss"].iloc[-1]), rows=len(rows), rows_skipped=int(len(invalid) + len(skipped)),
            skipped_reasons={str(k): int(v) for k, v in reasons.items()}, validation_rows_skipped=val_skipped,
            validation=valid.iloc[-1].to_dict() if len(valid) else None, model=model_uri, stage1_cache=cache,
            wall_seconds=run.wall, config=run.config(),
        )
        write_report(cfg.output, train, valid, cfg.storage_options, grids=min(4, n_val) if len(valid) else 0)
        run.close(summary)
        echo(f"harmony train: {cfg.task} at step {summary['steps']}, loss {summary['final_loss']:.4f}; "
             f"{summary['rows_skipped']} rows skipped; model at {model_uri}")
        return JobResult(summary=summary)
