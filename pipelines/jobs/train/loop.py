"""The training loop each Ray Train worker runs: build the task's models from --init, restore the
latest checkpoint, then optimise until max_steps, reporting a checkpoint every N steps.

Everything a resumed run needs travels in the checkpoint: weights, EMA, optimiser and lr state,
the step, and the metric rows so far (train and validation), so steps lost to a dead worker are
redone from the last checkpoint and no step is ever recorded twice.
"""

from __future__ import annotations

import tempfile
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import torch

STATE = "state.pt"
TRAINED = "trained"
ROWS = "train_rows.parquet"
VAL_ROWS = "validation_rows.parquet"
SKIPPED = "skipped.parquet"
# Key of the value train_loop returns when setting up failed for good (Result.return_value, rank 0).
FATAL = "fatal"


def _models(cfg: dict, device):
    from diffusers import AutoencoderKL, UNet2DConditionModel

    from harmony_ops.checkpoints import load_model, load_null_embedding, load_scheduler_config, resolve_checkpoint
    from harmony_ops.refiner import UNet2DCustom

    ck = resolve_checkpoint(cfg["init"], refiner="auto", storage_options=cfg["storage_options"])
    unet = load_model(UNet2DConditionModel, ck.unet, "unet").to(device)
    vae = load_model(AutoencoderKL, ck.vae, "vae").to(device).eval().requires_grad_(False)
    null, _ = load_null_embedding(ck.root, unet.config.cross_attention_dim)
    sched = load_scheduler_config(ck.root)
    refiner = cvae = None
    if cfg["task"] == "harmony-vae":
        from harmony_ops.condition_vae import ConditionVAE

        # From the checkpoint's own Harmony-VAE when it has one, else from its VAE, as the reference starts.
        cvae = (load_model(ConditionVAE, ck.harmony_vae, "harmony-vae") if ck.harmony_vae is not None
                else ConditionVAE.from_vae(vae)).to(device)
        unet.eval().requires_grad_(False)
    if cfg["task"] == "vae":
        vae.train().requires_grad_(True)
        unet.eval().requires_grad_(False)
    if cfg["task"] == "refiner":
        if ck.refiner is None:
            raise ValueError(f"--task refiner: {cfg['init']} has no refiner/ to start from")
        refiner = load_model(UNet2DCustom, ck.refiner, "refiner").to(device)
        unet.eval().requires_grad_(False)
    return unet, vae, null.to(device), sched, refiner, cvae


def _autocast(cfg: dict, device):
    from harmony_ops.training.steps import autocast  # shared with `harmony bench --sections train`

    return autocast(device, cfg["precision"])


def _validate(cfg, sampler, refiner, val, step, device):
    """fMSE/PSNR/MSE of the (frozen) current model on the validation rows, with the project's metrics."""
    from harmony_ops.metrics import evaluate_arrays
    from harmony_ops.refiner import make_refiner_input
    from pipelines.jobs.train.data import to_tensors

    comp, mask, real = to_tensors(val, cfg["resolution"])
    cond, target = (real, comp) if cfg["task"] == "inverse" else (comp, real)
    seeds = [cfg["seed"] + k for k in range(len(val))]
    if cfg["task"] == "vae":  # reconstruction of the real images (the posterior's mode)
        with torch.no_grad():
            vae = sampler.vae
            out = (vae(target.to(device=vae.device), sample_posterior=False).sample / 2 + 0.5).clamp(0, 1).float().cpu()
    else:
        out = sampler(cond, mask, seeds=seeds, num_inference_steps=cfg["sampler_steps"])
    if refiner is not None:
        with torch.no_grad():
            x = make_refiner_input(out.to(device) * 2 - 1, mask.to(device), cond.to(device), refiner.config.in_channels)
            out = (refiner(x).sample / 2 + 0.5).clamp(0, 1).float().cpu()
    pred = (out.permute(0, 2, 3, 1).numpy() * 255).round().astype(np.uint8)
    gt = ((target.permute(0, 2, 3, 1).numpy() + 1) * 127.5).round().astype(np.uint8)
    m = mask[:, 0].numpy()
    scores = [evaluate_arrays(p, g, k) for p, g, k in zip(pred, gt, m)]
    row = dict(step=step, fmse=float(np.mean([s.fmse for s in scores])), psnr=float(np.mean([s.psnr for s in scores])),
               mse=float(np.mean([s.mse for s in scores])), images=len(scores))
    return row, pred


def _restore(ckpt, trained, opt, ema, device):
    """Weights, optimiser, EMA and the metric rows of a Ray Train checkpoint, into the built models."""
    with ckpt.as_directory() as d:
        state = torch.load(Path(d) / STATE, map_location=device, weights_only=True)
        trained.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        if ema is not None and state.get("ema") is not None:
            ema.load_state_dict(state["ema"])
        var = state["latent_var"].to(torch.float64).cpu() if state.get("latent_var") is not None else None
        rows = pd.read_parquet(Path(d) / ROWS).to_dict("records")
        val_rows = pd.read_parquet(Path(d) / VAL_ROWS).to_dict("records") if (Path(d) / VAL_ROWS).exists() else []
        skipped = ({r["id"]: r for r in pd.read_parquet(Path(d) / SKIPPED).to_dict("records")}
                   if (Path(d) / SKIPPED).exists() else {})
    return int(state["step"]), rows, val_rows, skipped, var


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


def train_loop(cfg: dict) -> dict | None:
    import ray.train
    import ray.train.torch

    shard = ray.train.get_dataset_shard("train")

    def epoch_batches():
        return shard.iter_batches(batch_size=cfg["batch_size"], batch_format="pandas")

    epoch = FirstBatchAhead(epoch_batches())

    import torch.distributed as dist
    from diffusers.training_utils import EMAModel

    from harmony_ops.sampler import DiffHarmonySampler
    from harmony_ops.training.steps import VAEObjective, harmony_vae_loss, noise_scheduler, refiner_loss, stage1_loss
    from pipelines.jobs.train.data import harmonized_tensor, to_tensors

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    device = ray.train.torch.get_device()
    torch.manual_seed(cfg["seed"] + rank)
    if device.type == "cpu":  # Ray pins a worker to one thread unless told; use what it reserved
        torch.set_num_threads(max(1, round(cfg.get("cpus_per_worker") or 1)))
    # Building the models and restoring the checkpoint fail the same way on every attempt (a missing or
    # broken checkpoint, a shape that does not match): every rank learns of any rank's error at the same
    # point and returns it instead of raising, so Ray Train does not restart the worker group for it.
    try:
        unet, vae, null, sched_cfg, refiner, cvae = _models(cfg, device)
        trained = {"refiner": refiner, "harmony-vae": cvae, "vae": vae}.get(cfg["task"], unet)
        if device.type == "cuda" and trained._supports_gradient_checkpointing:
            trained.enable_gradient_checkpointing()  # memory for batch size; on CPU it only costs time
        trained.train()
        params = [p for p in trained.parameters() if p.requires_grad]
        opt = torch.optim.AdamW(params, lr=cfg["lr"], weight_decay=cfg["weight_decay"])
        ema = EMAModel(params, decay=cfg["ema_decay"]) if cfg["ema"] else None
        error, ckpt, restored = None, ray.train.get_checkpoint(), None
        if ckpt is not None:
            error = "resuming from the run's last checkpoint (made by another task or model? use a new --output)"
            restored = _restore(ckpt, trained, opt, ema, device)
            error = None
    except Exception as exc:  # noqa: BLE001 - sorted by is_permanent below
        if not is_permanent(exc):
            raise
        lines = f"{type(exc).__name__}: {exc}".strip().splitlines()
        error = (f"{error}: " if error else "") + "\n".join(lines[:4] + (["..."] if len(lines) > 4 else []))
    errors = [error] * world
    if world > 1:
        dist.all_gather_object(errors, error)
    fatal = next((e for e in errors if e), None)
    if fatal is not None:
        return {FATAL: fatal}
    warm = cfg["warmup_steps"]
    lr_at = lambda s: min(1.0, (s + 1) / warm) if warm else 1.0  # noqa: E731 - constant after linear warmup
    step, rows, val_rows, skipped = 0, [], [], {}
    # --task vae: running mean of the latents' variance; the exported scaling_factor is 1/std, as
    # LDM set SD's 0.18215, so stage 1 sees unit-variance latents.
    latent_var = torch.zeros(2, dtype=torch.float64)
    if restored is not None:
        step, rows, val_rows, skipped, var = restored
        if var is not None:
            latent_var = var
    objective = VAEObjective(trained) if cfg["task"] == "vae" else trained
    model = ray.train.torch.prepare_model(objective) if world > 1 else objective
    scheduler = noise_scheduler(sched_cfg)
    sampler = DiffHarmonySampler(unet, vae, sched_cfg, null, "euler_a", harmony_vae=cvae)
    gen = torch.Generator().manual_seed(cfg["seed"] * 1000 + rank * 7919 + step)
    val = ray.get(cfg["validate_ref"]) if cfg.get("validate_ref") is not None else None
    fail_at, marker = int(cfg.get("fail_at") or 0), cfg.get("fail_marker")
    side, t_start, first_step = cfg["resolution"], time.perf_counter(), step

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
                     "ema": ema.state_dict() if ema is not None else None, "latent_var": latent_var}
            torch.save(state, Path(d) / STATE)
            export = trained
            if cfg["task"] == "vae" and latent_var[1] > 0:
                std = float((latent_var[0] / latent_var[1]).sqrt())
                trained.register_to_config(scaling_factor=round(1.0 / max(std, 1e-6), 5))
            if ema is not None:
                ema.store(trained.parameters())
                ema.copy_to(trained.parameters())
            export.save_pretrained(Path(d) / TRAINED, safe_serialization=True)
            if ema is not None:
                ema.restore(trained.parameters())
            pd.DataFrame(rows).to_parquet(Path(d) / ROWS)
            pd.DataFrame(val_rows).to_parquet(Path(d) / VAL_ROWS)
            pd.DataFrame(list(skipped.values()), columns=["id", "error_type", "error_message"]).to_parquet(Path(d) / SKIPPED)
            ray.train.report(metrics, checkpoint=ray.train.Checkpoint.from_directory(d))

    while step < cfg["max_steps"]:
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
            for g in opt.param_groups:
                g["lr"] = cfg["lr"] * lr_at(step)
            with _autocast(cfg, device):
                if cfg["task"] == "refiner" and "harm_px" in batch.columns:  # --stage1-cache
                    harm = harmonized_tensor(batch, side).to(device)
                    loss = refiner_loss(model, harm, mask, comp, real, trained.config.in_channels)
                elif cfg["task"] == "refiner":
                    with torch.no_grad():
                        seeds = [int(x) for x in torch.randint(0, 2**31 - 1, (len(batch),), generator=gen)]
                        harm = sampler(comp, mask, seeds=seeds, num_inference_steps=cfg["sampler_steps"]).to(device) * 2 - 1
                    loss = refiner_loss(model, harm, mask, comp, real, trained.config.in_channels)
                elif cfg["task"] == "harmony-vae":
                    loss = harmony_vae_loss(model, real, comp, mask, gen)
                elif cfg["task"] == "vae":  # both images of a row: more views of the same photographs
                    loss, z = model(torch.cat([real, comp]), gen)
                    latent_var += torch.tensor([float(z.double().var()) * z.numel(), float(z.numel())], dtype=torch.float64)
                else:
                    target, cond = (comp, real) if cfg["task"] == "inverse" else (real, comp)
                    loss = stage1_loss(model, vae, scheduler, null, target, cond, mask, gen, cfg["plain_mse"])
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
            if rank == 0 and (step % cfg["log_every"] == 0 or step == cfg["max_steps"]):
                done = step - first_step
                eta = (time.perf_counter() - t_start) / max(done, 1) * (cfg["max_steps"] - step)
                if cfg.get("progress") is not None:  # the driver's console shows it (workers' output is not forwarded)
                    cfg["progress"].put_nowait({"step": step, "loss": float(mean), "lr": rows[-1]["lr"]})
                else:
                    print(f"train {cfg['task']}: step {step}/{cfg['max_steps']} loss {float(mean):.4f} "
                          f"lr {rows[-1]['lr']:.2e} {rows[-1]['samples_per_second']:.1f} samples/s ETA {eta:.0f}s",
                          flush=True)
            last = step >= cfg["max_steps"]
            if val is not None and rank == 0 and (step % cfg["validate_every"] == 0 or last):
                if ema is not None:
                    ema.store(trained.parameters())
                    ema.copy_to(trained.parameters())
                trained.eval()
                row, pred = _validate(cfg, sampler, refiner, val, step, device)
                trained.train()
                if ema is not None:
                    ema.restore(trained.parameters())
                val_rows.append(row)
                if last:
                    _write_grids(cfg, val, pred)
            if step % cfg["checkpoint_every"] == 0 or last:
                save(step)
            if last:
                break
        epoch = epoch_batches()
    if step == first_step and rank == 0 and ckpt is None:
        raise RuntimeError("no training step ran: the manifest has no usable row")


def _write_grids(cfg, val, pred, n: int = 4) -> None:
    """composite | output | real per validation row, under report/ of the output prefix."""
    from harmony_ops.imageio import encode_image
    from pipelines.io.storage import join, write_bytes_atomic

    side = cfg["resolution"]
    for k, (r, p) in enumerate(zip(val.head(n).itertuples(), pred)):
        comp = np.frombuffer(r.comp_px, np.uint8).reshape(side, side, 3)
        real = np.frombuffer(r.real_px, np.uint8).reshape(side, side, 3)
        grid = np.concatenate([comp, p, real], axis=1)
        write_bytes_atomic(join(cfg["output"], "report", f"validation-{k}.png"), encode_image(grid, "png"),
                           cfg["storage_options"])
