"""The stages of `harmony harmonize`: decode (CPU), model (GPU actors), finish (CPU)."""

from __future__ import annotations

import logging
import math
import posixpath
import re
import time
from dataclasses import dataclass

import numpy as np
import pandas as pd

from harmony_ops.regions import Prepared, finish, prepare
from harmony_ops.imageio import ImageError, encode_image
from harmony_ops.inputs import load_sample
from harmony_ops.metrics import fg_bucket

from schemas.metrics import to_arrow

from pipelines.config import HarmonizeJobConfig
from pipelines.jobs.row_metrics import row_metrics
from pipelines.core.stage import Resources, Stage, fail_row, pending, with_columns
from pipelines.io.storage import join, read_with_retries, write_with_retries

log = logging.getLogger(__name__)

# Columns that only travel between stages; the finish stage drops them.
TRANSIT = ("comp_bytes", "mask_bytes", "real_bytes", "region_rgb", "region_mask", "infer_rgb", "infer_mask",
           "region_w", "region_h", "crop_x0", "crop_y0", "result_rgb")


def pack(a: np.ndarray) -> bytes:
    return np.ascontiguousarray(a, dtype=np.uint8).tobytes()


def unpack(b: bytes, h: int, w: int, c: int | None = 3) -> np.ndarray:
    a = np.frombuffer(b, dtype=np.uint8)
    return a.reshape((h, w, c) if c else (h, w))


def resources_of(pool, default_gpus: float = 0.0) -> Resources:
    return Resources(
        num_cpus=pool.num_cpus,
        num_gpus=pool.num_gpus if pool.num_gpus is not None else default_gpus,
        batch_size=pool.batch_size,
        min_workers=pool.min_workers,
        max_workers=pool.max_workers,
        max_tasks_in_flight=pool.max_tasks_in_flight,
    )


def storage_error(exc: Exception) -> tuple[str, str]:
    if isinstance(exc, FileNotFoundError):
        return "missing_object", f"object not found: {exc}"
    return "storage_error", f"{type(exc).__name__}: {exc}"


@dataclass
class DecodeStage(Stage):
    """Fetch composite, mask (and ground truth), decode with guards, plan and crop/resize for the engine."""

    cfg: HarmonizeJobConfig
    needs_resize: bool
    name: str = "decode"
    resources: Resources = Resources()

    def process(self, batch: pd.DataFrame) -> pd.DataFrame:
        batch = with_columns(batch, TRANSIT + ("width", "height", "fg_ratio", "fg_bucket", "inference_width",
                                               "inference_height", "crop", "notes", "seconds_decode"))
        opts, policy = self.cfg.storage_options, self.cfg.resolution.policy()
        for i in batch.index[pending(batch)]:
            t = time.perf_counter()
            row = batch.loc[i]
            try:
                comp = read_with_retries(row["composite"], opts, self.cfg.retries)
                mask = read_with_retries(row["mask"], opts, self.cfg.retries)
                real_uri = row.get("real")
                real = read_with_retries(real_uri, opts, self.cfg.retries) if isinstance(real_uri, str) and real_uri else None
            except Exception as exc:  # noqa: BLE001 - any storage failure is this row's failure
                fail_row(batch, i, *storage_error(exc))
                continue
            try:
                sample = load_sample(comp, mask, real, max_pixels=self.cfg.max_pixels)
                item = prepare(sample.composite, sample.mask, policy, resize=self.needs_resize)
            except ImageError as exc:
                fail_row(batch, i, exc.kind, str(exc))
                continue
            except Exception as exc:  # noqa: BLE001
                fail_row(batch, i, "decode_error", f"{type(exc).__name__}: {exc}")
                continue
            plan = item.plan
            h, w = sample.mask.shape
            rx0, ry0, rx1, ry1 = plan.region
            batch.at[i, "comp_bytes"] = comp
            batch.at[i, "mask_bytes"] = mask
            batch.at[i, "real_bytes"] = real
            batch.at[i, "region_rgb"] = pack(item.region_image)
            batch.at[i, "region_mask"] = pack(item.region_mask.astype(np.uint8))
            batch.at[i, "region_w"], batch.at[i, "region_h"] = rx1 - rx0, ry1 - ry0
            batch.at[i, "crop_x0"], batch.at[i, "crop_y0"] = rx0, ry0
            if item.image is not None:
                batch.at[i, "infer_rgb"] = pack(item.image)
                batch.at[i, "infer_mask"] = pack(item.mask.astype(np.uint8))
            batch.at[i, "width"], batch.at[i, "height"] = w, h
            batch.at[i, "fg_ratio"] = plan.fg_ratio
            batch.at[i, "fg_bucket"] = fg_bucket(plan.fg_ratio)
            batch.at[i, "inference_width"] = plan.width if self.needs_resize else w
            batch.at[i, "inference_height"] = plan.height if self.needs_resize else h
            batch.at[i, "crop"] = ",".join(map(str, plan.crop)) if plan.crop else None
            batch.at[i, "notes"] = ",".join(sample.notes) or None
            batch.at[i, "seconds_decode"] = time.perf_counter() - t
        return batch


def rebuild(row, needs_resize: bool, policy) -> Prepared:
    """The engine's input from the Arrow-friendly columns the decode stage wrote."""
    from harmony_ops.resolution import InferencePlan

    rw, rh = int(row["region_w"]), int(row["region_h"])
    x0, y0 = int(row["crop_x0"]), int(row["crop_y0"])
    crop = tuple(int(v) for v in row["crop"].split(",")) if isinstance(row["crop"], str) else None
    plan = InferencePlan(
        width=int(row["inference_width"]), height=int(row["inference_height"]), resolution_class=0, crop=crop,
        image_width=int(row["width"]), image_height=int(row["height"]), fg_ratio=float(row["fg_ratio"]),
    )
    assert plan.region[:2] == (x0, y0)
    item = Prepared(plan=plan, region_image=unpack(row["region_rgb"], rh, rw),
                    region_mask=unpack(row["region_mask"], rh, rw, None).astype(np.float32))
    if needs_resize:
        item.image = unpack(row["infer_rgb"], plan.height, plan.width)
        item.mask = unpack(row["infer_mask"], plan.height, plan.width, None).astype(np.float32)
    return item


@dataclass
class ModelStage(Stage):
    """Stage 1 + refinement. The engine is loaded once per actor in `setup`."""

    cfg: HarmonizeJobConfig
    name: str = "model"
    resources: Resources = Resources()
    stateful: bool = True

    def setup(self) -> None:
        import torch

        from harmony_ops.loader import load_engine

        m = self.cfg.model
        kwargs = m.engine_kwargs(self.cfg.storage_options)
        if self.resources.num_gpus == 0:
            # A CPU actor must not grab a GPU it was not given, nor more threads than its CPUs.
            torch.set_num_threads(max(1, math.ceil(self.resources.num_cpus)))
            if kwargs.get("device") == "auto":
                kwargs["device"] = "cpu"
        self.engine = load_engine(m.engine, **kwargs)

    def process(self, batch: pd.DataFrame) -> pd.DataFrame:
        batch = with_columns(batch, ("result_rgb", "seconds_stage1", "seconds_refine", "model_peak_host_mib",
                                     "model_peak_device_mib"))
        idx = list(batch.index[pending(batch)])
        if idx:
            self._run(batch, idx)
        for c in ("region_rgb", "infer_rgb", "infer_mask"):  # no longer needed: keep blocks small
            batch[c] = None
        return batch

    def _run(self, batch: pd.DataFrame, idx: list) -> None:
        """Run rows; on failure split the batch (out-of-memory is usually batch-size bound) down to
        single rows before failing any row."""
        policy = self.cfg.resolution.policy()
        try:
            items = [rebuild(batch.loc[i], self.engine.needs_resize, policy) for i in idx]
            result = self.engine.run(items, [int(batch.at[i, "seed"]) for i in idx])
        except Exception as exc:  # noqa: BLE001
            if len(idx) > 1:
                log.warning("batch of %d failed (%s: %s); retrying in halves", len(idx), type(exc).__name__, exc)
                _free_device_memory()
                half = len(idx) // 2
                self._run(batch, idx[:half])
                self._run(batch, idx[half:])
                return
            kind = "out_of_memory" if "out of memory" in str(exc).lower() else "model_error"
            fail_row(batch, idx[0], kind, f"{type(exc).__name__}: {exc}")
            _free_device_memory()
            return
        n = len(idx)
        host_mib, device_mib = _peak_memory_mib()
        for i, region in zip(idx, result.regions):
            batch.at[i, "model_peak_host_mib"] = host_mib
            batch.at[i, "model_peak_device_mib"] = device_mib
            batch.at[i, "result_rgb"] = pack(region)
            batch.at[i, "seconds_stage1"] = result.seconds.get("stage1", 0.0) / n
            batch.at[i, "seconds_refine"] = result.seconds.get("refine", 0.0) / n


def _peak_memory_mib() -> tuple[float, float | None]:
    """Peak resident memory of this worker process and peak allocated device memory, in MiB."""
    import resource

    import torch

    host = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # Linux reports KiB
    device = torch.cuda.max_memory_allocated() / 2**20 if torch.cuda.is_available() and torch.cuda.is_initialized() else None
    return host, device


def _free_device_memory() -> None:
    try:
        import torch

        if torch.cuda.is_available():
            torch.cuda.empty_cache()
    except Exception:  # noqa: BLE001
        pass


@dataclass
class FinishStage(Stage):
    """Paste back at full resolution, encode, write atomically, compute metrics; drop transit columns."""

    cfg: HarmonizeJobConfig
    model_id: str
    config_key: str
    name: str = "finish"
    resources: Resources = Resources()

    def process(self, batch: pd.DataFrame) -> pd.DataFrame:
        batch = with_columns(batch, ("seconds_finish",))
        metric_cols: dict[str, dict] = {}
        for i in batch.index[pending(batch)]:
            t = time.perf_counter()
            row = batch.loc[i]
            try:
                # The encoded files travel from decode to here, not their pixels: a 12 MP image is a few MB
                # encoded but 36 MB raw in the object store; decoding again on a CPU worker is the cheaper side.
                sample = load_sample(row["comp_bytes"], row["mask_bytes"], row["real_bytes"], max_pixels=self.cfg.max_pixels)
                rw, rh = int(row["region_w"]), int(row["region_h"])
                region = unpack(row["result_rgb"], rh, rw)
                x0, y0 = int(row["crop_x0"]), int(row["crop_y0"])
                out = finish(sample.composite, sample.mask, (x0, y0, x0 + rw, y0 + rh), region, self.cfg.resolution.feather)
                data = encode_image(out, self.cfg.image_format)
                if not output_allowed(row["output"], self.cfg.output):
                    fail_row(batch, i, "unsafe_output", f"refusing to write {row['output']!r}: not one file "
                             f"name directly under {join(self.cfg.output, 'images')}")
                    continue
                write_with_retries(row["output"], data, self.cfg.storage_options, self.cfg.retries)
                metric_cols[i] = row_metrics(sample, out)
            except Exception as exc:  # noqa: BLE001
                kind = "storage_error" if isinstance(exc, OSError) else "finish_error"
                fail_row(batch, i, kind, f"{type(exc).__name__}: {exc}")
                continue
            batch.at[i, "status"] = "ok"
            batch.at[i, "seconds_finish"] = time.perf_counter() - t
        for i, values in metric_cols.items():
            for k, v in values.items():
                if k not in batch.columns:
                    batch[k] = np.nan
                batch.at[i, k] = v
        for k, v in job_columns(self.cfg, self.model_id, self.config_key).items():
            batch[k] = v
        failed = batch["status"].isin(["failed", "invalid"])
        batch.loc[failed, "output"] = None
        # Enforce the metrics schema on every block before it is journaled.
        return to_arrow(batch.drop(columns=[c for c in TRANSIT if c in batch.columns]))


_OUTPUT_NAME = re.compile(r"[A-Za-z0-9._-]+")


def output_allowed(uri, output: str) -> bool:
    """True only for `<output>/images/<one plain file name>`: whatever reached this row, the finish
    stage never writes elsewhere (defence in depth behind the manifest's id rules)."""
    if not isinstance(uri, str):
        return False
    images = join(output, "images").rstrip("/")
    if not uri.startswith(images + "/"):
        return False
    name = uri[len(images) + 1 :]
    if name in (".", "..") or not _OUTPUT_NAME.fullmatch(name):
        return False
    return posixpath.dirname(posixpath.normpath(uri.split("://", 1)[-1])) == posixpath.normpath(images.split("://", 1)[-1])


def job_columns(cfg: HarmonizeJobConfig, model_id: str, config_key: str) -> dict:
    """Columns every row of one run shares, whatever its status."""
    diffusion = cfg.model.engine == "diffharmony"
    return {
        "engine": cfg.model.engine,
        "model": model_id,
        "config_key": config_key,
        "steps": cfg.model.steps if diffusion else None,
        "scheduler": cfg.model.scheduler if diffusion else "none",
        "resolution_mode": cfg.resolution.mode,
    }


