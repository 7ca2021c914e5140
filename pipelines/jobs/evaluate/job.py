"""`harmony evaluate`: score a folder of harmonized images (ours or any method's) against ground truth.

manifest -> validated rows (driver; the harmonize job's `prepare_rows`) -> the predictions folder is
listed once on the driver and each row gets its prediction URI -> one CPU stage on Ray Data
(fetch with retries, guarded decoding, iHarmony4 protocol) -> journal -> consolidated
`metrics/metrics.parquet` (the harmonize job's schema), `summary.json` (+ a paper-layout "table"),
`report.html`.
"""

from __future__ import annotations

import hashlib
import json
import posixpath
import time
import uuid

import numpy as np
import pandas as pd

from schemas.metrics import COMPARE_METRICS, GT_METRICS, to_arrow

from pipelines.config import EvaluateJobConfig, JobError
from pipelines.jobs.evaluate.stage import EvaluateStage
from pipelines.jobs.harmonize.job import JobResult
from pipelines.jobs.harmonize.stages import resources_of
from pipelines.io.manifest import prepare_rows, read_manifest
from pipelines.core.adapter import apply_stages, ensure_ray
from pipelines.core.stage import PENDING
from pipelines.io.storage import filesystem, join, redact, write_bytes_atomic
from pipelines.report.summary import aggregate, build_summary, headline
from pipelines.io.tables import JOURNAL, METRICS_FILE, SUMMARY_FILE, journal_dataset, remove_tree, write_table_atomic

PREDICTION_EXTS = ("png", "jpg", "jpeg", "webp")
ENGINE = "evaluate"
PROTOCOL = "iHarmony4, 256 px (DiffHarmony scripts/evaluate/main.py)"


def list_predictions(uri: str, options: dict) -> tuple[str, dict[str, str]]:
    """(folder URI, {file name with a lower-case extension: URI}) of the images in a predictions folder.

    A harmonize output prefix (a folder with images/) means its images/ folder. One listing on the
    driver: names are small next to the images.
    """
    uri = uri.rstrip("/") or uri
    fs, path = filesystem(uri, options)
    try:
        if fs.isdir(posixpath.join(path, "images")):
            uri, path = join(uri, "images"), posixpath.join(path, "images")
        if not fs.isdir(path):
            raise JobError(f"predictions folder {uri} does not exist")
        entries = fs.ls(path, detail=True)
    except JobError:
        raise
    except Exception as exc:  # noqa: BLE001 - storage clients raise many types; the job cannot run either way
        raise JobError(f"cannot list predictions folder {uri}: {type(exc).__name__}: {exc}") from exc
    names: dict[str, str] = {}
    for e in sorted(entries, key=lambda e: e["name"]):
        if e.get("type") != "file":
            continue
        name = e["name"].rstrip("/").rsplit("/", 1)[-1]
        stem, dot, ext = name.rpartition(".")
        if dot and stem and ext.lower() in PREDICTION_EXTS:
            names.setdefault(f"{stem}.{ext.lower()}", join(uri, name))
    return uri, names


def candidate_names(row_id: str, composite) -> list[str]:
    """`<id>.<ext>` in the order png, jpg, jpeg, webp; then the reference repository's naming,
    `<composite stem>.png`."""
    names = [f"{row_id}.{ext}" for ext in PREDICTION_EXTS]
    if isinstance(composite, str) and composite:
        stem = composite.rstrip("/").rsplit("/", 1)[-1].rsplit(".", 1)[0]
        if stem and f"{stem}.png" not in names:
            names.append(f"{stem}.png")
    return names


def match_prediction(row_id: str, composite, names: dict[str, str]) -> str | None:
    for n in candidate_names(row_id, composite):
        if n in names:
            return names[n]
    return None


def evaluation_key(cfg: EvaluateJobConfig, folder: str, compare: str | None) -> str:
    parts = {"engine": ENGINE, "predictions": folder, "compare": compare, "use_gt_bg": cfg.use_gt_bg, "protocol": PROTOCOL}
    return hashlib.sha256(json.dumps(parts, sort_keys=True).encode()).hexdigest()[:16]


def compare_summary(metrics: pd.DataFrame, folder: str) -> dict:
    """The compare method's aggregates in the same layout (over rows scored for both methods), and
    the mean per-image deltas (compare minus main)."""
    done = metrics[metrics["status"].isin(["ok", "skipped"]) & metrics["compare_mse"].notna()]
    own = [c for c in metrics.columns if c in GT_METRICS or c.startswith("composite_") or c in ("delta_e_fg", "stat_gap_before", "stat_gap_after")]
    as_main = done.drop(columns=own).rename(columns={c: c.removeprefix("compare_") for c in COMPARE_METRICS})
    blocks = aggregate(as_main)

    def deltas(part: pd.DataFrame) -> dict:
        out = {"count": int(len(part))}
        for c in ("delta_psnr", "delta_fmse"):
            v = part[c].to_numpy(dtype=float)
            v = v[np.isfinite(v)]
            out[c] = float(v.mean()) if v.size else None
        return out

    subsets = done["subset"].fillna("(none)")
    return {
        "predictions": folder,
        "rows": int(len(done)),
        "not_scored": int(metrics["notes"].fillna("").str.contains("compare_").sum()),
        "metrics": blocks,
        "delta": {"all": deltas(done), "by_subset": {str(k): deltas(p) for k, p in done.groupby(subsets, sort=True)}},
    }


def run_evaluate(cfg: EvaluateJobConfig, echo=print) -> JobResult:
    from pipelines.report.html import maybe_write_report, paper_table, table_text

    t0 = time.perf_counter()
    opts = cfg.storage_options
    try:
        manifest = read_manifest(cfg.manifest, opts)
    except ValueError as exc:
        raise JobError(str(exc)) from exc
    if "real" not in manifest.columns:
        raise JobError(f"manifest {cfg.manifest} has no `real` column: there is no ground truth to evaluate against")
    if cfg.limit:
        manifest = manifest.head(cfg.limit)
    rows = prepare_rows(manifest, cfg.manifest, cfg.output, "png", 0)
    folder, names = list_predictions(cfg.predictions, opts)
    compare_folder, compare_names = list_predictions(cfg.compare, opts) if cfg.compare else (None, {})

    todo_mask = rows["status"] == PENDING
    rows["seed"] = None
    rows["output"] = [match_prediction(i, c, names) if ok else None
                      for i, c, ok in zip(rows["id"], rows["composite"], todo_mask)]
    if cfg.compare:
        rows["compare_prediction"] = [match_prediction(i, c, compare_names) if ok else None
                                      for i, c, ok in zip(rows["id"], rows["composite"], todo_mask)]
    no_real = todo_mask & ~rows["real"].map(lambda v: isinstance(v, str) and bool(v))
    rows.loc[no_real, "status"] = "failed"
    rows.loc[no_real, "error_type"] = "missing_real"
    rows.loc[no_real, "error_message"] = "row has no ground truth (`real`): nothing to evaluate against"
    no_pred = (rows["status"] == PENDING) & rows["output"].isna()
    rows.loc[no_pred, "status"] = "failed"
    rows.loc[no_pred, "error_type"] = "missing_prediction"
    rows.loc[no_pred, "error_message"] = [
        f"no prediction in {folder}: looked for {', '.join(candidate_names(i, c))}"
        for i, c in zip(rows.loc[no_pred, "id"], rows.loc[no_pred, "composite"])
    ]

    key = evaluation_key(cfg, folder, compare_folder)
    job_cols = {"engine": ENGINE, "model": folder, "config_key": key, "steps": None, "scheduler": "none",
                "resolution_mode": "none"}
    settled = rows[rows["status"] != PENDING].drop(columns=["compare_prediction"], errors="ignore").assign(**job_cols)
    todo = rows[rows["status"] == PENDING]
    echo(f"harmony evaluate: {len(rows)} rows ({len(todo)} to score, {len(settled)} failed or invalid before "
         f"scoring); predictions {folder} ({len(names)} images)"
         + (f", compare {compare_folder} ({len(compare_names)} images)" if cfg.compare else "")
         + (", ground-truth background pasted" if cfg.use_gt_bg else ""))

    run_journal = join(cfg.output, JOURNAL, f"run-{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}")
    if len(todo):
        ensure_ray(cfg.ray_address, cfg.num_cpus)
        import ray

        stage = EvaluateStage(cfg=cfg, job_columns=job_cols, resources=resources_of(cfg.pool))
        ds = ray.data.from_pandas([todo.iloc[i : i + cfg.block_rows] for i in range(0, len(todo), cfg.block_rows)])
        fresh = journal_dataset(apply_stages(ds, [stage]), run_journal, opts)
    else:
        fresh = pd.DataFrame()

    final = pd.concat([f for f in (settled, fresh) if len(f)], ignore_index=True)
    final = final.sort_values("row").reset_index(drop=True)
    if len(final) != len(rows) or final["row"].duplicated().any():
        raise JobError(f"internal error: {len(final)} metrics rows for {len(rows)} manifest rows")
    if cfg.compare:
        for c in COMPARE_METRICS + ("delta_psnr", "delta_fmse"):
            if c not in final.columns:
                final[c] = np.nan
    table = to_arrow(final)
    write_table_atomic(table, join(cfg.output, METRICS_FILE), opts)
    metrics = table.to_pandas()

    wall = time.perf_counter() - t0
    config = cfg.model_dump(mode="json")
    config["storage_options"] = redact(opts)
    extra = {"evaluation": {"predictions": folder, "compare": compare_folder, "use_gt_bg": cfg.use_gt_bg,
                            "protocol": PROTOCOL, "config_key": key}}
    if cfg.compare:
        extra["compare"] = compare_summary(metrics, compare_folder)
    summary = build_summary(metrics, wall, int((metrics["status"] == "ok").sum()), config, extra)
    summary["table"] = paper_table(summary["metrics"], (summary.get("compare") or {}).get("metrics"))
    write_bytes_atomic(join(cfg.output, SUMMARY_FILE), json.dumps(summary, indent=2).encode(), opts)
    remove_tree(join(cfg.output, JOURNAL), opts)

    echo(headline(summary))
    echo(table_text(summary["table"]))
    echo(f"metrics: {join(cfg.output, METRICS_FILE)}\nsummary: {join(cfg.output, SUMMARY_FILE)}")
    if cfg.report:
        maybe_write_report(cfg.output, opts, metrics, summary, echo)
    return JobResult(summary=summary, metrics=metrics, exit_code=0)

