"""summary.json: counts, aggregate metrics in the paper's table layout, throughput, config, versions."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pandas as pd

from pipelines.report.versions import versions
from schemas.metrics import COMPOSITE_METRICS, GT_METRICS, NOREF_METRICS, SECONDS
from schemas.vocabulary import DONE, FG_BUCKETS, Status


def _finite(s: pd.Series) -> np.ndarray:
    return pd.to_numeric(s, errors="coerce").to_numpy(dtype=float, na_value=np.nan)


def _mean(s: pd.Series) -> float | None:
    return metric_stats(s)[0]


def metric_stats(s: pd.Series) -> tuple[float | None, int, int]:
    """(mean over the finite values or None, how many finite values, how many infinite ones).
    Null cells (a row without the metric, e.g. without ground truth) are in neither count."""
    v = _finite(s)
    finite = v[np.isfinite(v)]
    return (float(finite.mean()) if finite.size else None), int(finite.size), int(np.isinf(v).sum())


def _max(s: pd.Series | None) -> float | None:
    if s is None:
        return None
    v = pd.to_numeric(s, errors="coerce").to_numpy(dtype=float)
    v = v[np.isfinite(v)]
    return float(v.max()) if v.size else None


def metric_block(df: pd.DataFrame) -> dict[str, Any]:
    """Means of every metric over the rows that have it (the paper averages per image). `count`: the
    block's rows; `<metric>_count`: the rows in `<metric>`'s mean (rows without ground truth have no
    ground-truth metrics); `<metric>_infinite`: rows whose value is infinite (the PSNR of an image
    identical to its ground truth), left out of the mean and counted here, so the JSON stays valid."""
    out: dict[str, Any] = {"count": int(len(df))}
    for m in GT_METRICS + COMPOSITE_METRICS + NOREF_METRICS:
        if m in df.columns:
            out[m], out[f"{m}_count"], out[f"{m}_infinite"] = metric_stats(df[m])
    if "fidelity_ok" in df.columns:  # colour fidelity against the run's bound: rows checked, rows within it
        checked = df["fidelity_ok"].dropna()
        if len(checked):
            out["fidelity_checked"], out["fidelity_ok"] = int(len(checked)), int(checked.astype(bool).sum())
    return out


def aggregate(df: pd.DataFrame) -> dict[str, Any]:
    """All / per subset / per foreground bucket (and subset x bucket), over ok and skipped rows."""
    done = df[df["status"].isin(DONE)]
    out: dict[str, Any] = {"all": metric_block(done), "by_subset": {}, "by_fg_bucket": {}, "by_subset_and_fg_bucket": {}}
    subsets = done["subset"].fillna("(none)") if "subset" in done.columns else pd.Series(["(none)"] * len(done), index=done.index)
    for name, part in done.groupby(subsets, sort=True):
        out["by_subset"][str(name)] = metric_block(part)
    for b in FG_BUCKETS:
        part = done[done["fg_bucket"] == b]
        out["by_fg_bucket"][b] = metric_block(part)
        for name, sub in part.groupby(subsets[part.index], sort=True):
            out["by_subset_and_fg_bucket"].setdefault(str(name), {})[b] = metric_block(sub)
    return out


def build_summary(df: pd.DataFrame, wall_seconds: float, processed_ok: int, config: dict, extra: dict | None = None) -> dict:
    counts = {s: int((df["status"] == s).sum()) for s in (Status.OK, Status.SKIPPED, Status.FAILED, Status.INVALID)}
    errors = df.loc[df["error_type"].notna(), "error_type"].value_counts().to_dict()
    stage_seconds = {c.removeprefix("seconds_"): _mean(df[c]) for c in SECONDS if c in df.columns}
    summary = {
        "rows": int(len(df)),
        "counts": counts,
        "errors_by_type": {str(k): int(v) for k, v in errors.items()},
        "metrics": aggregate(df),
        "throughput": {
            "wall_seconds": wall_seconds,
            "processed_ok": processed_ok,
            "images_per_second": processed_ok / wall_seconds if wall_seconds > 0 else None,
            "mean_seconds_per_stage": stage_seconds,
            "model_peak_host_mib": _max(df.get("model_peak_host_mib")),
            "model_peak_device_mib": _max(df.get("model_peak_device_mib")),
        },
        "config": config,
        "versions": versions(),
    }
    summary.update(extra or {})
    return _json_safe(summary)


def _json_safe(x):
    if isinstance(x, dict):
        return {str(k): _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    if isinstance(x, (np.floating, float)):
        return float(x) if math.isfinite(float(x)) else None
    if isinstance(x, np.integer):
        return int(x)
    return x


def _fmt(block: dict, key: str, digits: int, unit: str = "") -> str:
    v = block.get(key)  # None: no finite value (none at all, or only infinite ones, counted below)
    return "n/a" if v is None else f"{v:.{digits}f}{unit}"


def headline(summary: dict) -> str:
    """A few lines for the terminal."""
    c = summary["counts"]
    t = summary["throughput"]
    lines = [
        f"rows {summary['rows']}: ok {c['ok']}, skipped (already done) {c['skipped']}, failed {c['failed']}, invalid {c['invalid']}",
        f"wall {t['wall_seconds']:.1f}s, {t['images_per_second'] or 0:.2f} images/s",
    ]
    if summary["errors_by_type"]:
        lines.append("errors: " + ", ".join(f"{k} {v}" for k, v in summary["errors_by_type"].items()))
    a = summary["metrics"]["all"]
    # MSE is always finite: its count is the rows scored against ground truth.
    scored = a.get("mse_count", a["count"] if a.get("mse") is not None else 0)
    if scored:
        f = lambda k, d, u="": _fmt(a, k, d, u)  # noqa: E731
        lines.append(
            f"vs ground truth (256 px), {scored} of {a['count']} rows: PSNR {f('psnr', 2, ' dB')} (composite {f('composite_psnr', 2)}), "
            f"fMSE {f('fmse', 1)} (composite {f('composite_fmse', 1)}), MSE {f('mse', 1)} (composite {f('composite_mse', 1)})"
        )
        infinite = [f"{m} {a[f'{m}_infinite']}" for m in GT_METRICS + COMPOSITE_METRICS if a.get(f"{m}_infinite")]
        if infinite:
            lines.append("infinite (image identical to its ground truth), left out of the means: " + ", ".join(infinite))
    if a.get("delta_e_fg") is not None:
        lines.append(
            f"no-reference over {a.get('delta_e_fg_count', a['count'])} rows: foreground change dE {_fmt(a, 'delta_e_fg', 2)}, "
            f"fg/bg colour gap {_fmt(a, 'stat_gap_before', 2)} -> {_fmt(a, 'stat_gap_after', 2)}"
        )
    if a.get("fg_chroma_shift") is not None:
        within = f"; within the bound: {a['fidelity_ok']} of {a['fidelity_checked']}" if a.get("fidelity_checked") else ""
        lines.append(
            f"colour fidelity: chroma shift dE {_fmt(a, 'fg_chroma_shift', 2)}, hue shift {_fmt(a, 'fg_hue_shift', 1)} deg, "
            f"lightness shift {_fmt(a, 'fg_lightness_shift', 2)}{within}"
        )
    return "\n".join(lines)
