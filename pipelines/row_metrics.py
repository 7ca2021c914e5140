"""The metric columns of one output row; shared by every job that writes the metrics table."""

from __future__ import annotations

import numpy as np

from harmony_ops.metrics import evaluate_arrays, full_resolution_metrics, no_reference_metrics


def gt_columns(pred: np.ndarray, real: np.ndarray, mask: np.ndarray, prefix: str = "") -> dict[str, float]:
    """iHarmony4 protocol at 256 px plus full-resolution MSE/PSNR of `pred` against `real`."""
    ref = evaluate_arrays(pred, real, mask)
    full = full_resolution_metrics(pred, real)
    return {
        f"{prefix}mse": ref.mse, f"{prefix}psnr": ref.psnr, f"{prefix}fmse": ref.fmse, f"{prefix}fpsnr": ref.fpsnr,
        f"{prefix}bmse": ref.bmse, f"{prefix}ssim": ref.ssim, f"{prefix}mse_full": full.mse, f"{prefix}psnr_full": full.psnr,
    }


def row_metrics(sample, out: np.ndarray) -> dict[str, float]:
    """No-reference metrics always; against ground truth (for the output and for the untouched
    composite, the do-nothing baseline) when the sample has it."""
    nr = no_reference_metrics(sample.composite, out, sample.mask)
    cols = {"delta_e_fg": nr.delta_e_fg, "stat_gap_before": nr.stat_gap_before, "stat_gap_after": nr.stat_gap_after}
    if sample.real is not None:
        cols.update(gt_columns(out, sample.real, sample.mask))
        cols.update(gt_columns(sample.composite, sample.real, sample.mask, prefix="composite_"))
    return cols
