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

import numpy as np
import pandas as pd

from harmony_ops.fidelity import within_bound
from pipelines.jobs.harmonize.config import HarmonizeJobConfig
from pipelines.core.run import JobResult, JobRun
from pipelines.core.stage import PoolConfig
from pipelines.errors import JobError
from pipelines.io.access import checkpoint_refusal
from pipelines.io.manifest import load_rows
from pipelines.io.storage import filesystem, join
from pipelines.io.tables import JOURNAL, METRICS_FILE, read_parquet_tree
from pipelines.jobs.harmonize.decode import DecodeStage
from pipelines.jobs.harmonize.finish import FinishStage, job_columns
from pipelines.jobs.harmonize.model import ModelStage
from pipelines.report.html import maybe_write_report
from pipelines.report.summary import build_summary, headline
from schemas.metrics import COLUMNS, to_arrow
from schemas.vocabulary import DONE, Status

log = logging.getLogger(__name__)


def model_identity(cfg: HarmonizeJobConfig) -> tuple[str, bool, tuple[int, int] | None]:
    """(model id, engine needs inference resize, the inference class sizes the model declares); checks
    every checkpoint part before Ray starts."""
    m = cfg.model
    if m.engine == "baseline":
        from harmony_ops.defaults import BASELINE_MODEL_ID

        return BASELINE_MODEL_ID, False, None
    from harmony_ops.checkpoints import resolve_checkpoint

    check_checkpoint_sources(cfg)
    ckpt = resolve_checkpoint(m.model, m.unet, m.vae, m.refiner, cfg.storage_options, m.allow_pickle, m.harmony_vae, m.decoder)
    return ckpt.model_id, True, ckpt.class_sizes


def check_checkpoint_sources(cfg: HarmonizeJobConfig) -> None:
    """Checkpoints are the operator's choice, but an HTTP(S) one needs an --allow-uri prefix (as rows do);
    raises JobError naming the field."""
    m = cfg.model
    refiner = None if m.refiner in (None, "auto", "none") else m.refiner
    for name, uri in (("model", m.model), ("unet", m.unet), ("vae", m.vae), ("refiner", refiner), ("harmony_vae", m.harmony_vae)):
        why = checkpoint_refusal(uri, cfg.allow_uri)
        if why:
            raise JobError(f"model.{name} {uri}: {why}")


# The baseline engine is milliseconds of numpy per row: its pool needs neither a GPU nor a whole CPU, and on a
# small node a whole CPU held by it would starve the decode and finish tasks that do most of its work.
BASELINE_MODEL_CPUS = 0.25


def model_pool(cfg: HarmonizeJobConfig, has_gpu: bool) -> PoolConfig:
    """The model stage's pool on this cluster: as configured, except that the baseline engine never takes a
    GPU and takes `BASELINE_MODEL_CPUS` unless the configuration sets `num_cpus` (or `num_gpus`)."""
    pool = cfg.pools.model
    if cfg.model.engine != "baseline":
        return pool.on_cluster(has_gpu)
    update: dict = {"num_gpus": 0.0} if pool.num_gpus is None else {}
    if "num_cpus" not in pool.model_fields_set:
        update["num_cpus"] = BASELINE_MODEL_CPUS
    return pool.model_copy(update=update)


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
    if cfg.soft_paste:  # the defaults leave the pixels as they were: earlier runs' keys stay valid
        parts["soft_paste"] = True
    if cfg.fidelity.mode != "free":
        parts["fidelity"] = {"mode": cfg.fidelity.mode, "max_chroma_shift": cfg.fidelity.audit_bound()}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def previous_results(cfg: HarmonizeJobConfig) -> pd.DataFrame:
    """Rows finished by earlier runs: the consolidated table, then journals (later wins)."""
    frames = [read_parquet_tree(join(cfg.output, METRICS_FILE), cfg.storage_options),
              read_parquet_tree(join(cfg.output, JOURNAL), cfg.storage_options, skip_truncated=True)]
    frames = [f for f in frames if len(f)]
    return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()


def existing_images(cfg: HarmonizeJobConfig) -> set[str]:
    fs, path = filesystem(join(cfg.output, "images"), cfg.storage_options)
    try:
        return {p.rsplit("/", 1)[-1] for p in fs.find(path)}
    except FileNotFoundError:
        return set()


def _same(x, y) -> bool:
    """Equal cells, two nulls (None, NaN, NA) included."""
    return bool(pd.isna(x) and pd.isna(y)) or (not pd.isna(x) and not pd.isna(y) and x == y)


def mark_resumable(rows: pd.DataFrame, cfg: HarmonizeJobConfig, key: str) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Split pending rows into (to run, done before). Done = ok with the same key, same inputs, image present."""
    prev = previous_results(cfg)
    if prev.empty or "config_key" not in prev.columns:
        return rows, rows.iloc[0:0]
    ok = prev[(prev["status"].isin(DONE)) & (prev["config_key"] == key)]
    ok = ok.drop_duplicates("id", keep="last").set_index("id")
    images = existing_images(cfg)
    # The same inputs: a composite row's composite and mask, a cutout row's files and placement.
    inputs = ["composite", "mask", "foreground", "background", "x", "y", "scale"]
    prev = ok.reindex(columns=inputs).reindex(rows["id"].to_numpy())  # vectorised: manifests can be large
    names = rows["output"].map(lambda o: o.rsplit("/", 1)[-1] if isinstance(o, str) else None)
    same = np.ones(len(rows), dtype=bool)
    for c in (c for c in inputs if c in rows.columns):
        same &= np.array([_same(x, y) for x, y in zip(prev[c].to_numpy(dtype=object), rows[c].to_numpy(dtype=object))],
                         dtype=bool)
    done_mask = pd.Series(
        (rows["status"].to_numpy() == Status.PENDING) & same & names.isin(images).to_numpy(),
        index=rows.index,
    )
    done = rows[done_mask]
    carried = ok.loc[done["id"]].reset_index()
    carried["row"] = done["row"].to_numpy()
    if "fg_chroma_shift" in carried.columns:  # the audit bound is not in the key (free mode): judge against this run's
        bound = cfg.fidelity.audit_bound()
        shift = pd.to_numeric(carried["fg_chroma_shift"], errors="coerce")
        carried["fidelity_ok"] = [within_bound(None if pd.isna(v) else float(v), bound) for v in shift]
    carried["status"] = Status.SKIPPED
    return rows[~done_mask], carried


def run_harmonize(cfg: HarmonizeJobConfig, echo=print) -> JobResult:
    with JobRun(cfg, echo) as run:
        return _harmonize(run, cfg, echo)


def _harmonize(run: JobRun, cfg: HarmonizeJobConfig, echo) -> JobResult:
    rows = load_rows(cfg, cfg.image_format, cfg.seed)
    try:
        model_id, needs_resize, class_sizes = model_identity(cfg)
    except Exception as exc:  # noqa: BLE001 - CheckpointError and storage errors alike stop the job
        raise JobError(str(exc)) from exc
    # The model's inference sizes, unless the configuration sets them: they go into the config key and
    # the stages, so the job's configuration from here on is the adopted one.
    cfg = run.cfg = cfg.model_copy(update={"resolution": cfg.resolution.adopted(class_sizes)})
    key = config_key(cfg, model_id)
    run.claim()  # one run per output prefix: before earlier results are read, anything is written or Ray starts

    carried = rows.iloc[0:0]
    if cfg.resume:
        try:
            rows, carried = mark_resumable(rows, cfg, key)
        except Exception as exc:  # noqa: BLE001
            raise JobError(f"cannot read earlier results under {cfg.output}: {type(exc).__name__}: {exc}") from exc
    columns = job_columns(cfg, model_id, key)
    settled = rows[rows["status"] != Status.PENDING].assign(**columns)  # invalid rows never enter Ray
    todo = rows[rows["status"] == Status.PENDING]

    run.start_ray()
    import ray

    has_gpu = ray.cluster_resources().get("GPU", 0) > 0
    pools = cfg.pools
    problem = cfg.model.device_problem(model_pool(cfg, has_gpu).num_gpus or 0.0)
    if problem:
        raise JobError(problem)
    stages = [
        DecodeStage.for_job(cfg, needs_resize, pools.decode.on_cluster(False)),
        ModelStage(model=cfg.model, storage_options=cfg.storage_options, pool=model_pool(cfg, has_gpu)),
        FinishStage.for_job(cfg, columns, pools.finish.on_cluster(False)),
    ]
    model = stages[1].pool
    echo(
        f"harmony harmonize: {len(rows) + len(carried)} rows ({len(todo)} to run, {len(carried)} already done, "
        f"{len(settled)} invalid); {cfg.model.label()} (id {model_id}), "
        f"resolution {cfg.resolution.mode} at {cfg.resolution.class_sizes[0]}/{cfg.resolution.class_sizes[1]} px, "
        f"model pool {model.min_workers}-{model.max_workers} x {model.num_gpus:g} GPU, batch {model.batch_size}"
    )
    fresh = run.stream(todo, stages, keep=COLUMNS, finalize=to_arrow)
    metrics = run.consolidate([settled, carried, fresh], len(rows) + len(carried), to_arrow)

    summary = build_summary(metrics, run.wall, int((metrics["status"] == Status.OK).sum()), run.config(),
                            {"model_id": model_id, "config_key": key})
    summary_uri = run.close(summary, tidy=("images",))
    echo(headline(summary))
    echo(f"images: {join(cfg.output, 'images')}\nmetrics: {join(cfg.output, METRICS_FILE)}\nsummary: {summary_uri}")
    maybe_write_report(cfg.output, cfg.storage_options, metrics, summary, echo)  # when any row has ground truth
    bad = summary["counts"]["failed"] + summary["counts"]["invalid"]
    code = 0
    if cfg.max_failed_fraction is not None and len(metrics) and bad / len(metrics) > cfg.max_failed_fraction:
        echo(f"failed or invalid rows: {bad}/{len(metrics)} > max_failed_fraction {cfg.max_failed_fraction}", file=sys.stderr)
        echo(f"RUN FAILED (exit 3): {bad} of {len(metrics)} rows failed or were invalid, more than "
             f"--max-failed-fraction {cfg.max_failed_fraction}; the outputs above hold the rows that succeeded")
        code = 3
    return JobResult(summary=summary, metrics=metrics, exit_code=code)
