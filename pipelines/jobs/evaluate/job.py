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

import numpy as np
import pandas as pd

from pipelines.jobs.evaluate.config import EvaluateJobConfig
from pipelines.core.run import JobResult, JobRun
from pipelines.errors import JobError
from pipelines.io.manifest import load_rows
from pipelines.io.storage import filesystem, join
from pipelines.io.tables import METRICS_FILE
from pipelines.jobs.evaluate.stage import COMPARE_INPUT, EvaluateStage
from pipelines.report.summary import aggregate, build_summary, headline
from schemas.metrics import COLUMNS, COMPARE_METRICS, DELTA_METRICS, GT_METRICS, NOREF_METRICS, to_arrow
from schemas.vocabulary import DONE, ErrorKind, Status

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
    done = metrics[metrics["status"].isin(DONE) & metrics["compare_mse"].notna()]
    own = [c for c in metrics.columns if c in GT_METRICS or c.startswith("composite_") or c in NOREF_METRICS + ("fidelity_ok",)]
    as_main = done.drop(columns=own).rename(columns={c: c.removeprefix("compare_") for c in COMPARE_METRICS})
    blocks = aggregate(as_main)

    def deltas(part: pd.DataFrame) -> dict:
        out = {"count": int(len(part))}
        for c in ("delta_psnr", "delta_fmse"):
            v = pd.to_numeric(part[c], errors="coerce").to_numpy(dtype=float, na_value=np.nan)
            v = v[np.isfinite(v)]  # null where either side is not finite (e.g. an infinite PSNR)
            out[c] = float(v.mean()) if v.size else None
            out[f"{c}_count"] = int(v.size)
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
    with JobRun(cfg, echo) as run:  # holds the output prefix's lease from its first write or Ray start
        return _evaluate(run, cfg, echo)


def _evaluate(run: JobRun, cfg: EvaluateJobConfig, echo) -> JobResult:
    from pipelines.report.html import maybe_write_report, paper_table, table_text

    opts = cfg.storage_options
    rows = load_rows(cfg, "png", 0)
    cutout = (rows["layout"] == "cutout") & (rows["status"] == Status.PENDING)
    rows.loc[cutout, ["status", "error_type"]] = [Status.INVALID, ErrorKind.INVALID_ROW]
    rows.loc[cutout, "error_message"] = ("a cutout row: evaluate scores composite + mask rows (the iHarmony4 "
                                         "protocol); harmonize scores cutout rows against their real image")
    folder, names = list_predictions(cfg.predictions, opts)
    compare_folder, compare_names = list_predictions(cfg.compare, opts) if cfg.compare else (None, {})

    todo_mask = rows["status"] == Status.PENDING
    rows["seed"] = None
    rows["output"] = [match_prediction(i, c, names) if ok else None
                      for i, c, ok in zip(rows["id"], rows["composite"], todo_mask)]
    if cfg.compare:
        rows[COMPARE_INPUT] = [match_prediction(i, c, compare_names) if ok else None
                               for i, c, ok in zip(rows["id"], rows["composite"], todo_mask)]
    no_pred = (rows["status"] == Status.PENDING) & rows["output"].isna()
    rows.loc[no_pred, "status"] = Status.FAILED
    rows.loc[no_pred, "error_type"] = ErrorKind.MISSING_PREDICTION
    rows.loc[no_pred, "error_message"] = [
        f"no prediction in {folder}: looked for {', '.join(candidate_names(i, c))}"
        for i, c in zip(rows.loc[no_pred, "id"], rows.loc[no_pred, "composite"])
    ]

    key = evaluation_key(cfg, folder, compare_folder)
    job_cols = {"engine": ENGINE, "model": folder, "config_key": key, "steps": None, "scheduler": "none",
                "resolution_mode": "none"}
    settled = rows[rows["status"] != Status.PENDING].drop(columns=[COMPARE_INPUT], errors="ignore").assign(**job_cols)
    todo = rows[rows["status"] == Status.PENDING]
    echo(f"harmony evaluate: {len(rows)} rows ({len(todo)} to score, {len(settled)} failed or invalid before "
         f"scoring); predictions {folder} ({len(names)} images)"
         + (f", compare {compare_folder} ({len(compare_names)} images)" if cfg.compare else "")
         + (", ground-truth background pasted" if cfg.use_gt_bg else ""))

    stage = EvaluateStage.for_job(cfg, job_cols, cfg.pools.evaluate.on_cluster(False))
    fresh = run.stream(todo, [stage], keep=COLUMNS + COMPARE_METRICS + DELTA_METRICS, finalize=to_arrow,
                       transit=(COMPARE_INPUT,))
    if cfg.compare:
        for c in COMPARE_METRICS + DELTA_METRICS:
            if c not in settled.columns:
                settled[c] = np.nan
    metrics = run.consolidate([settled, fresh], len(rows), to_arrow)

    extra = {"evaluation": {"predictions": folder, "compare": compare_folder, "use_gt_bg": cfg.use_gt_bg,
                            "protocol": PROTOCOL, "config_key": key}}
    if cfg.compare:
        extra["compare"] = compare_summary(metrics, compare_folder)
    summary = build_summary(metrics, run.wall, int((metrics["status"] == Status.OK).sum()), run.config(), extra)
    summary["table"] = paper_table(summary["metrics"], (summary.get("compare") or {}).get("metrics"))
    summary_uri = run.close(summary)

    echo(headline(summary))
    echo(table_text(summary["table"]))
    echo(f"metrics: {join(cfg.output, METRICS_FILE)}\nsummary: {summary_uri}")
    if cfg.report:
        maybe_write_report(cfg.output, opts, metrics, summary, echo)
    return JobResult(summary=summary, metrics=metrics, exit_code=0)
