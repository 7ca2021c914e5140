"""`harmony train`: the driver. Validates the manifests, builds the Ray Data input, runs the
TorchTrainer (resuming from the latest checkpoint under <output>/checkpoints), then writes
model/, metrics/, summary.json and report/ from the final checkpoint."""

from __future__ import annotations

import contextlib
import io
import os
import tempfile
import threading
from pathlib import Path

import pandas as pd

from pipelines.jobs.train.config import TrainJobConfig
from pipelines.core.console import progress_of
from pipelines.core.resources import TrainPlan, await_resources, plan_train
from pipelines.core.run import JobResult, JobRun
from pipelines.core.test_hooks import train_fail_hook
from pipelines.errors import JobError
from pipelines.io.manifest import prepare_rows, read_manifest
from pipelines.io.storage import arrow_filesystem, join, write_bytes_atomic
from pipelines.jobs.train import loop
from pipelines.jobs.train.card import training_card, write_card
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


def _preflight(cfg: TrainJobConfig) -> str:
    """What every worker would find wrong with --init, found once on the driver before Ray starts."""
    from harmony_ops.checkpoints import CheckpointError, resolve_checkpoint
    from harmony_ops.training.objectives import OBJECTIVES, check_parts

    try:
        ck = resolve_checkpoint(cfg.init, refiner="auto", storage_options=cfg.storage_options)
        check_parts(ck, OBJECTIVES[cfg.task].needs, cfg.init)
    except ValueError as exc:
        raise JobError(str(exc)) from None
    except (CheckpointError, FileNotFoundError) as exc:
        raise JobError(f"--init: {exc}") from None
    return ck.model_id


def _plan(cfg: TrainJobConfig, echo) -> TrainPlan:
    """The trainers' resources on this cluster, leaving the decode stage its share; on a cluster that
    may grow (joined by address) waits for them, up to --resource-wait-seconds."""
    import ray

    fixed = not (cfg.ray_address or os.environ.get("RAY_ADDRESS"))
    plan = plan_train(ray.cluster_resources(), cfg.workers, cfg.cpus_per_worker, cfg.gpus_per_worker,
                      cfg.pools.decode.num_cpus or 0.0, fixed)
    if not fixed:
        await_resources(plan.need, ray.cluster_resources, cfg.resource_wait_seconds, echo)
    echo(f"harmony train: {plan.describe()}")
    return plan


@contextlib.contextmanager
def _progress_feed(echo, cfg: TrainJobConfig, loop_cfg: loop.LoopConfig):
    """Rank 0's step reports (a Ray queue) shown by the driver's console while training runs."""
    progress = progress_of(echo, "harmony train", cfg.max_steps, unit="steps")
    if progress is None:
        yield
        return
    from ray.util.queue import Empty, Queue

    queue, stop = Queue(actor_options={"num_cpus": 0}), threading.Event()
    loop_cfg.progress = queue

    def feed():
        first = True
        while not stop.is_set():
            try:
                event = queue.get(timeout=0.5)
            except Empty:
                continue
            except Exception:  # noqa: BLE001 - the queue's actor is gone: the run is ending
                return
            if first:  # this attempt's first report: it started at its checkpoint's step (0 from --init)
                progress.done = progress.base = event["from"]
                first = False
            steps = max(event["step"] - progress.done, 0)
            progress.advance(steps, {"ok": steps}, loss=event["loss"])

    thread = threading.Thread(target=feed, name="train-progress", daemon=True)
    thread.start()
    try:
        yield
    finally:
        stop.set()
        thread.join(timeout=5)
        progress.close()
        with contextlib.suppress(Exception):
            queue.shutdown()


def _cause(exc: BaseException) -> str:
    """The first worker's error of a TrainingFailedError, in one line."""
    failures = getattr(exc, "worker_failures", None) or {}
    first = next(iter(failures.values()), None) or getattr(exc, "controller_failure", None) or exc
    return f"{type(first).__name__}: {str(first).strip().splitlines()[-1] if str(first).strip() else ''}"


def _write_parquet(df: pd.DataFrame, uri: str, options: dict) -> None:
    buf = io.BytesIO()
    df.to_parquet(buf, index=False)
    write_bytes_atomic(uri, buf.getvalue(), options)


def run_train(cfg: TrainJobConfig, echo=print) -> JobResult:
    import ray
    from ray.train import CheckpointConfig, FailureConfig, RunConfig, ScalingConfig, TrainingFailedError
    from ray.train.torch import TorchTrainer

    init_id = _preflight(cfg)
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
        plan = _plan(cfg, echo)
        fs, path = arrow_filesystem(join(cfg.output, "checkpoints"), cfg.storage_options)
        loop_cfg = loop.LoopConfig(job=cfg, cpus_per_worker=plan.cpus_per_worker, validate_ref=val_ref,
                                   **train_fail_hook())
        trainer = TorchTrainer(
            loop.train_loop,
            train_loop_config={"cfg": loop_cfg},
            scaling_config=ScalingConfig(num_workers=cfg.workers, use_gpu=cfg.gpus_per_worker > 0,
                                         resources_per_worker={"CPU": plan.cpus_per_worker,
                                                               **({"GPU": cfg.gpus_per_worker} if cfg.gpus_per_worker else {})}),
            # Worker deaths and errors while training are retried from the last checkpoint, max_failures
            # times; so are worker groups that fail to start (Ray's default retries those for ever).
            run_config=RunConfig(name=RUN_NAME, storage_path=path, storage_filesystem=fs,
                                 failure_config=FailureConfig(max_failures=cfg.max_failures,
                                                              controller_failure_limit=cfg.max_failures),
                                 checkpoint_config=CheckpointConfig(num_to_keep=2)),
            datasets={"train": ds},
        )
        try:
            with _progress_feed(echo, cfg, loop_cfg):
                result = trainer.fit()
        except TrainingFailedError as exc:
            raise JobError(f"training failed after {cfg.max_failures} restart(s) (--max-failures): {_cause(exc)}") from None
        fatal = (result.return_value or {}).get(loop.FATAL) if isinstance(result.return_value, dict) else None
        if fatal:
            raise JobError(f"training stopped: {fatal}")
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
        write_card(model_uri, training_card(summary, init_id, len(train_rows)), cfg.storage_options)
        write_report(cfg.output, train, valid, cfg.storage_options, grids=min(4, n_val) if len(valid) else 0)
        run.close(summary)
        echo(f"harmony train: {cfg.task} at step {summary['steps']}, loss {summary['final_loss']:.4f}; "
             f"{summary['rows_skipped']} rows skipped; model at {model_uri}")
        return JobResult(summary=summary)
