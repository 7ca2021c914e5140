"""The training loop each Ray Train worker runs: build the task's objective from --init, restore the
latest checkpoint, then optimise until max_steps, reporting a checkpoint every N steps.

Everything a resumed run needs travels in the checkpoint: weights, EMA, optimiser and lr state,
the step, the objective's own state and the metric rows so far (train and validation), so steps lost
to a dead worker are redone from the last checkpoint and no step is ever recorded twice. The loop
never asks which task it runs: the task's objective (harmony_ops/training/objectives.py) answers.
"""

from __future__ import annotations

import contextlib
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import torch

from pipelines.jobs.train.config import TrainJobConfig

STATE = "state.pt"
TRAINED = "trained"
ROWS = "train_rows.parquet"
VAL_ROWS = "validation_rows.parquet"
SKIPPED = "skipped.parquet"
# Key of the value train_loop returns when setting up failed for good (Result.return_value, rank 0).
FATAL = "fatal"


@dataclass
class LoopConfig:
    """What every worker's loop is given: the job's typed configuration and what the driver prepared."""

    job: TrainJobConfig
    cpus_per_worker: float
    validate_ref: Any = None  # Ray object ref of the decoded validation rows
    progress: Any = None  # a Ray queue the driver's console reads; None: print the progress line
    fail_at: str | None = None  # test hook (pipelines/core/test_hooks.py)
    fail_marker: str | None = None


@contextlib.contextmanager
def ema_weights(ema, model):
    """The model holds its EMA weights inside the block (validation, export), its own after."""
    if ema is None:
        yield
        return
    ema.store(model.parameters())
    ema.copy_to(model.parameters())
    try:
        yield
    finally:
        ema.restore(model.parameters())


def _validate(job: TrainJobConfig, objective, val, step: int):
    """fMSE/PSNR/MSE of the (frozen) current model on the validation rows, with the project's metrics."""
    from harmony_ops.metrics import evaluate_arrays
    from pipelines.jobs.train.data import to_tensors

    comp, mask, real = to_tensors(val, job.resolution)
    out = objective.predict(comp, mask, real, [job.seed + k for k in range(len(val))])
    target = objective.validation_target(comp, real)
    pred = (out.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    gt = ((target.permute(0, 2, 3, 1).numpy() + 1) * 127.5).round().astype(np.uint8)
    m = mask[:, 0].numpy()
    scores = [evaluate_arrays(p, g, k) for p, g, k in zip(pred, gt, m)]
    row = dict(step=step, fmse=float(np.mean([s.fmse for s in scores])), psnr=float(np.mean([s.psnr for s in scores])),
               mse=float(np.mean([s.mse for s in scores])), images=len(scores))
    return row, pred


def _restore(ckpt, objective, opt, ema, device):
    """Weights, optimiser, EMA, the objective's state and the metric rows of a Ray Train checkpoint."""
    with ckpt.as_directory() as d:
        state = torch.load(Path(d) / STATE, map_location=device, weights_only=True)
        objective.trained.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        objective.load_extra_state(state)
        rows = pd.read_parquet(Path(d) / ROWS).to_dict("records")
        val_rows = pd.read_parquet(Path(d) / VAL_ROWS).to_dict("records") if (Path(d) / VAL_ROWS).exists() else []
        skipped = ({r["id"]: r for r in pd.read_parquet(Path(d) / SKIPPED).to_dict("records")}
                   if (Path(d) / SKIPPED).exists() else {})
    return int(state["step"]), rows, val_rows, skipped


def is_permanent(exc: BaseException) -> bool:
    """Whether setting a worker up failed in a way no restart can fix. A store that did not answer
    (a connection reset, a timeout: OSErrors) may answer the next attempt; a missing file, a broken
    checkpoint, a configuration or shape error will not."""
    if isinstance(exc, (FileNotFoundError, NotADirectoryError, IsADirectoryError, PermissionError)):
        return True
    return not isinstance(exc, OSError)


class FirstBatchAhead:
    """Iterates `batches`, having fetched the first one on a thread, started at construction.

    Ray Data starts a shard's streaming execution on the first batch asked for: its coordinator
    actor, the decode tasks' workers and their first blocks take seconds to come, the same seconds
    this worker spends importing diffusers and building its models."""

    def __init__(self, batches):
        self._batches, self._first, self._error = iter(batches), [], None
        self._thread = threading.Thread(target=self._fetch, name="first-batch", daemon=True)
        self._thread.start()

    def _fetch(self) -> None:
        try:
            self._first.append(next(self._batches))
        except StopIteration:
            pass
        except BaseException as exc:  # noqa: BLE001 - raised where the batches are consumed
            self._error = exc

    def __iter__(self):
        self._thread.join()
        if self._error is not None:
            raise self._error
        yield from self._first
        yield from self._batches


def _setup(job: TrainJobConfig, device):
    """The task's objective, its optimiser and EMA, and what the run's last checkpoint restores."""
    import ray.train
    from diffusers.training_utils import EMAModel

    from harmony_ops.training.objectives import OBJECTIVES, load_train_models

    kind = OBJECTIVES[job.task]
    objective = kind(load_train_models(job.init, device, job.storage_options, kind.needs), job.plain_mse,
                     job.sampler_steps)
    trained = objective.trained
    if device.type == "cuda" and trained._supports_gradient_checkpointing:
        trained.enable_gradient_checkpointing()  # memory for batch size; on CPU it only costs time
    trained.train()
    params = [p for p in trained.parameters() if p.requires_grad]
    opt = torch.optim.AdamW(params, lr=job.lr, weight_decay=job.weight_decay)
    ema = EMAModel(params, decay=job.ema_decay) if job.ema else None
    restored, ckpt = None, ray.train.get_checkpoint()
    if ckpt is not None:
        try:
            restored = _restore(ckpt, objective, opt, ema, device)
        except Exception as exc:
            if not is_permanent(exc):
                raise
            raise ResumeError(f"resuming from the run's last checkpoint (made by another task or model? use a new "
                              f"--output): {type(exc).__name__}: {exc}") from exc
    return objective, params, opt, ema, restored


class ResumeError(RuntimeError):
    """The run's last checkpoint does not fit the models this run builds."""


def train_loop(config: dict) -> dict | None:
    import ray.train
    import ray.train.torch

    cfg: LoopConfig = config["cfg"]
    job = cfg.job
    shard = ray.train.get_dataset_shard("train")

    def epoch_batches():
        return shard.iter_batches(batch_size=job.batch_size, batch_format="pandas")

    epoch = FirstBatchAhead(epoch_batches())

    import torch.distributed as dist

    from harmony_ops.training.steps import autocast
    from pipelines.jobs.train.data import harmonized_tensor, to_tensors

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(job.seed + rank)
    if device.type == "cpu":  # Ray pins a worker to one thread unless told; use what it reserved
        torch.set_num_threads(max(1, round(cfg.cpus_per_worker or 1)))
    # Building the models and restoring the checkpoint fail the same way on every attempt (a missing or
    # broken checkpoint, a shape that does not match): every rank learns of any rank's error at the same
    # point and returns it instead of raising, so Ray Train does not restart the worker group for it.
    try:
        objective, params, opt, ema, restored = _setup(job, device)
        error = None
    except Exception as exc:  # noqa: BLE001 - sorted by is_permanent below
        if not is_permanent(exc):
            raise
        lines = (str(exc) if isinstance(exc, ResumeError) else f"{type(exc).__name__}: {exc}").strip().splitlines()
        error = "\n".join(lines[:4] + (["..."] if len(lines) > 4 else []))
    errors = [error] * world
    if world > 1:
        dist.all_gather_object(errors, error)
    fatal = next((e for e in errors if e), None)
    if fatal is not None:
        return {FATAL: fatal}
    trained = objective.trained
    warm = job.warmup_steps
    lr_at = lambda s: min(1.0, (s + 1) / warm) if warm else 1.0  # noqa: E731 - constant after linear warmup
    step, rows, val_rows, skipped = restored if restored is not None else (0, [], [], {})
    model = ray.train.torch.prepare_model(objective.module()) if world > 1 else objective.module()
    gen = torch.Generator().manual_seed(job.seed * 1000 + rank * 7919 + step)
    val = ray.get(cfg.validate_ref) if cfg.validate_ref is not None else None
    fail_at, marker = int(cfg.fail_at or 0), cfg.fail_marker
    side, t_start, first_step = job.resolution, time.perf_counter(), step

    def save(step):
        # resumed_from: the step this attempt restored (0 from --init), for summary.json
        metrics = {"step": step, "loss": rows[-1]["loss"] if rows else float("nan"), "resumed_from": first_step}
        if world > 1:  # each rank saw other rows: the checkpoint holds every rank's skipped rows
            seen = [None] * world
            dist.all_gather_object(seen, skipped)
            for other in seen:
                for k, v in other.items():
                    skipped.setdefault(k, v)
        if rank != 0:
            ray.train.report(metrics, checkpoint=None)
            return
        with tempfile.TemporaryDirectory() as d:
            state = {"model": trained.state_dict(), "optimizer": opt.state_dict(), "step": step,
                     "ema": ema.state_dict() if ema is not None else None, **objective.extra_state()}
            torch.save(state, Path(d) / STATE)
            objective.before_export()
            with ema_weights(ema, trained):
                trained.save_pretrained(Path(d) / TRAINED, safe_serialization=True)
            pd.DataFrame(rows).to_parquet(Path(d) / ROWS)
            pd.DataFrame(val_rows).to_parquet(Path(d) / VAL_ROWS)
            pd.DataFrame(list(skipped.values()), columns=["id", "error_type", "error_message"]).to_parquet(Path(d) / SKIPPED)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))

    while step < job.max_steps:
        for batch in epoch:
            bad = batch[batch["status"] != "ok"]
            for r in bad.itertuples():
                skipped.setdefault(r.id, {"id": r.id, "error_type": r.error_type, "error_message": r.error_message})
            batch = batch[batch["status"] == "ok"]
            # Every rank takes part in every step (DDP's all-reduce): a rank whose batch held only bad
            # rows waits for the next one; the counts keep the ranks in step.
            have = torch.tensor([len(batch)], dtype=torch.long)
            if world > 1:
                dist.all_reduce(have, op=dist.ReduceOp.MIN)
            if int(have) == 0:
                continue
            t0 = time.perf_counter()
            comp, mask, real = (x.to(device) for x in to_tensors(batch, side))
            harm = harmonized_tensor(batch, side).to(device) if "harm_px" in batch.columns else None  # --stage1-cache
            for g in opt.param_groups:
                g["lr"] = job.lr * lr_at(step)
            with autocast(device, job.precision):
                loss = objective.loss(model, comp, mask, real, gen, harmonized=harm)
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(params, 1.0)
            opt.step()
            if ema is not None:
                ema.step(params)
            step += 1
            if fail_at and step == fail_at and rank == world - 1 and marker and not Path(marker).exists():
                Path(marker).write_text(str(step))
                raise RuntimeError(f"test hook: worker {rank} fails at step {step}")
            mean = loss.detach().float().reshape(1).cpu()
            n = torch.tensor([float(len(batch))])
            if world > 1:
                dist.all_reduce(mean)
                dist.all_reduce(n)
                mean /= world
            dt = time.perf_counter() - t0
            rows.append(dict(step=step, loss=float(mean), lr=opt.param_groups[0]["lr"], samples=int(n),
                             samples_per_second=float(n) / dt, seconds=dt))
            if rank == 0 and (step % job.log_every == 0 or step == job.max_steps):
                done = step - first_step
                eta = (time.perf_counter() - t_start) / max(done, 1) * (job.max_steps - step)
                if cfg.progress is not None:  # the driver's console shows it (workers' output is not forwarded)
                    cfg.progress.put_nowait({"step": step, "from": first_step, "loss": float(mean), "lr": rows[-1]["lr"]})
                else:
                    print(f"train {job.task}: step {step}/{job.max_steps} loss {float(mean):.4f} "
                          f"lr {rows[-1]['lr']:.2e} {rows[-1]['samples_per_second']:.1f} samples/s ETA {eta:.0f}s",
                          flush=True)
            last = step >= job.max_steps
            if val is not None and rank == 0 and (step % job.validate_every == 0 or last):
                trained.eval()
                with ema_weights(ema, trained):
                    row, pred = _validate(job, objective, val, step)
                trained.train()
                val_rows.append(row)
                if last:
                    _write_grids(job, val, pred)
            if step % job.checkpoint_every == 0 or last:
                save(step)
            if last:
                break
        epoch = epoch_batches()
    if step == first_step and rank == 0 and restored is None:
        raise RuntimeError("no training step ran: the manifest has no usable row")


def _write_grids(job: TrainJobConfig, val, pred, n: int = 4) -> None:
    """composite | output | real per validation row, under report/ of the output prefix."""
    from harmony_ops.imageio import encode_image
    from pipelines.io.storage import join, write_bytes_atomic

    side = job.resolution
    for k, (r, p) in enumerate(zip(val.head(n).itertuples(), pred)):
        comp = np.frombuffer(r.comp_px, np.uint8).reshape(side, side, 3)
        real = np.frombuffer(r.real_px, np.uint8).reshape(side, side, 3)
        grid = np.concatenate([comp, p, real], axis=1)
        write_bytes_atomic(join(job.output, "report", f"validation-{k}.png"), encode_image(grid, "png"),
                           job.storage_options)
