"""`harmony harmonize`: manifest -> validated rows -> Ray Data stages -> images, metrics, summary.

Progress is journaled: each finished block of rows is written as parquet under
`_journal/` while the job streams. A re-run reads the journal (and an earlier
`metrics/`), skips rows done with the same configuration key whose image exists, and
runs the rest. At the end one consolidated `metrics/metrics.parquet` holds exactly one
row per manifest row, `summary.json` is written, and the journal is removed.
"""

from __future__ import annotations

import hashlib
import json
import logging
import sys
import time
import uuid
from dataclasses import dataclass

import pandas as pd

from schemas.metrics import to_arrow

from pipelines.config import HarmonizeJobConfig, JobError
from pipelines.jobs.harmonize.stages import DecodeStage, FinishStage, ModelStage, job_columns, resources_of
from pipelines.io.manifest import prepare_rows, read_manifest
from pipelines.core.adapter import apply_stages, ensure_ray
from pipelines.report.html import maybe_write_report
from pipelines.core.stage import PENDING
from pipelines.io.storage import filesystem, join, redact, write_bytes_atomic
from pipelines.report.summary import build_summary, headline
from pipelines.io.tables import JOURNAL, METRICS_FILE, journal_dataset, read_parquet_tree, remove_tree, write_table_atomic

log = logging.getLogger(__name__)


@dataclass
class JobResult:
    summary: dict
    metrics: pd.DataFrame
    exit_code: int


def model_identity(cfg: HarmonizeJobConfig) -> tuple[str, bool]:
    """(model id, engine needs inference resize); checks every checkpoint part before Ray starts."""
    m = cfg.model
    if m.engine == "baseline":
        from harmony_ops.defaults import BASELINE_MODEL_ID

        return BASELINE_MODEL_ID, False
    from harmony_ops.checkpoints import resolve_checkpoint

    ckpt = resolve_checkpoint(m.model, m.unet, m.vae, m.refiner, cfg.storage_options, m.allow_pickle)
    return ckpt.model_id, True


def config_key(cfg: HarmonizeJobConfig, model_id: str) -> str:
    """What makes an output reusable by a later run: everything that changes its pixels."""
    m = cfg.model
    parts = {
        "engine": m.engine,
        "model": model_id,
        "scheduler": m.scheduler,
        "steps": m.steps,
        "refine_max_pixels": m.refine_max_pixels,
        "seed": cfg.seed,
        "resolution": cfg.resolution.model_dump(mode="json"),
        "image_format": cfg.image_format,
    }
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def previous_results(cfg: HarmonizeJobConfig) -> pd.DataFrame:
    """Rows finished by earlier runs: the consolidated table, then journals (later wins)."""
    frames = [read_parquet_tree(join(cfg.output, METRICS_FILE), cfg.storage_options),
              read_parquet_tree(join(cfg.output, JOURNAL), cfg.storage_options)]
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def existing_images(cfg: HarmonizeJobConfig) -> set[str]:
    fs, path = filesystem(join(cfg.output, "images"), cfg.storage_options)
    try:
        return {p.rsplit("/", 1)[-1] for p in fs.find(path)}
    except FileNotFoundError:
        return set()


def mark_resumable(rows: pd.DataFrame, cfg: HarmonizeJobConfig, key: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split pending rows into (to run, done before). Done = ok with the same key, same inputs, image present."""
    prev = previous_results(cfg)
    if prev.empty or "config_key" not in prev.columns:
        return rows, rows.iloc[0:0]
    ok = prev[(prev["status"].isin(["ok", "skipped"])) & (prev["config_key"] == key)]
    ok = ok.drop_duplicates("id", keep="last").set_index("id")
    images = existing_images(cfg)
    prev = ok[["composite", "mask"]].reindex(rows["id"].to_numpy())  # vectorised: manifests can be large
    names = rows["output"].map(lambda o: o.rsplit("/", 1)[-1] if isinstance(o, str) else None)
    done_mask = pd.Series(
        (rows["status"].to_numpy() == PENDING)
        & (prev["composite"].to_numpy() == rows["composite"].to_numpy())
        & (prev["mask"].to_numpy() == rows["mask"].to_numpy())
        & names.isin(images).to_numpy(),
        index=rows.index,
    )
    done = rows[done_mask]
    carried = ok.loc[done["id"]].reset_index()
    carried["row"] = done["row"].to_numpy()
    carried["status"] = "skipped"
    return rows[~done_mask], carried


def run_harmonize(cfg: HarmonizeJobConfig, echo=print) -> JobResult:
    t0 = time.perf_counter()
    try:
        manifest = read_manifest(cfg.manifest, cfg.storage_options)
    except ValueError as exc:
        raise JobError(str(exc)) from exc
    if cfg.limit:
        manifest = manifest.head(cfg.limit)
    rows = prepare_rows(manifest, cfg.manifest, cfg.output, cfg.image_format, cfg.seed)
    try:
        model_id, needs_resize = model_identity(cfg)
    except Exception as exc:  # noqa: BLE001 - CheckpointError and storage errors alike stop the job
        raise JobError(str(exc)) from exc
    key = config_key(cfg, model_id)

    carried = rows.iloc[0:0]
    if cfg.resume:
        try:
            rows, carried = mark_resumable(rows, cfg, key)
        except Exception as exc:  # noqa: BLE001
            raise JobError(f"cannot read earlier results under {cfg.output}: {type(exc).__name__}: {exc}") from exc
    settled = rows[rows["status"] != PENDING].assign(**job_columns(cfg, model_id, key))  # invalid rows never enter Ray
    todo = rows[rows["status"] == PENDING]

    ensure_ray(cfg.ray_address, cfg.num_cpus)
    import ray

    has_gpu = ray.cluster_resources().get("GPU", 0) > 0
    decode = DecodeStage(cfg=cfg, needs_resize=needs_resize, resources=resources_of(cfg.pools.decode))
    model = ModelStage(cfg=cfg, resources=resources_of(cfg.pools.model, 1.0 if has_gpu else 0.0))
    fin = FinishStage(cfg=cfg, model_id=model_id, config_key=key,
                      resources=resources_of(cfg.pools.finish))
    echo(
        f"harmony harmonize: {len(rows) + len(carried)} rows ({len(todo)} to run, {len(carried)} already done, "
        f"{len(settled)} invalid); engine {cfg.model.engine} ({model_id}), resolution {cfg.resolution.mode}, "
        f"model pool {model.resources.min_workers}-{model.resources.max_workers} x "
        f"{model.resources.num_gpus:g} GPU, batch {model.resources.batch_size}"
    )

    run_journal = join(cfg.output, JOURNAL, f"run-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}")
    if len(todo):
        ds = ray.data.from_pandas([todo.iloc[i : i + cfg.block_rows] for i in range(0, len(todo), cfg.block_rows)])
        ds = apply_stages(ds, [decode, model, fin])
        fresh = journal_dataset(ds, run_journal, cfg.storage_options)
    else:
        fresh = pd.DataFrame()

    final = pd.concat([f for f in (settled, carried, fresh) if len(f)], ignore_index=True)
    final = final.sort_values("row").reset_index(drop=True)
    expected = len(rows) + len(carried)
    if len(final) != expected or final["row"].duplicated().any():
        raise JobError(f"internal error: {len(final)} metrics rows for {expected} manifest rows")
    table = to_arrow(final)
    write_table_atomic(table, join(cfg.output, METRICS_FILE), cfg.storage_options)
    metrics = table.to_pandas()

    wall = time.perf_counter() - t0
    processed_ok = int((metrics["status"] == "ok").sum())
    config = cfg.model_dump(mode="json")
    config["storage_options"] = redact(cfg.storage_options)
    summary = build_summary(metrics, wall, processed_ok, config, {"model_id": model_id, "config_key": key})
    write_bytes_atomic(join(cfg.output, "summary.json"), json.dumps(summary, indent=2).encode(), cfg.storage_options)
    _remove_journal(cfg)
    _remove_stale_temporaries(cfg)

    echo(headline(summary))
    echo(f"images: {join(cfg.output, 'images')}\nmetrics: {join(cfg.output, METRICS_FILE)}\nsummary: {join(cfg.output, 'summary.json')}")
    maybe_write_report(cfg.output, cfg.storage_options, metrics, summary, echo)  # when any row has ground truth
    bad = summary["counts"]["failed"] + summary["counts"]["invalid"]
    code = 0
    if cfg.max_failed_fraction is not None and len(metrics) and bad / len(metrics) > cfg.max_failed_fraction:
        echo(f"failed or invalid rows: {bad}/{len(metrics)} > max_failed_fraction {cfg.max_failed_fraction}", file=sys.stderr)
        code = 3
    return JobResult(summary=summary, metrics=metrics, exit_code=code)


def _remove_journal(cfg: HarmonizeJobConfig) -> None:
    remove_tree(join(cfg.output, JOURNAL), cfg.storage_options)


def _remove_stale_temporaries(cfg: HarmonizeJobConfig) -> None:
    """Temporary siblings a killed worker left between write and rename (file systems only: object
    stores publish whole PUTs). They never carry a final name; this only tidies the folder."""
    fs, path = filesystem(join(cfg.output, "images"), cfg.storage_options)
    if "file" not in fs.protocol:
        return
    for p in fs.glob(f"{path}/*.tmp-*"):
        fs.rm(p)
