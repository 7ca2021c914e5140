"""The metric columns of one output row; shared by every job that writes the metrics table."""

from __future__ import annotations

import numpy as np

from harmony_ops.fidelity import fidelity_metrics
from harmony_ops.metrics import (
    ProtocolReference,
    evaluate_arrays,
    full_resolution_metrics,
    no_reference_metrics,
    protocol_reference_arrays,
)
from schemas.metrics import COMPOSITE_METRICS, GT_METRICS, NOREF_METRICS, NULLABLE_BOOL_COLUMNS

# Every column `row_metrics` may fill (ground-truth ones only for rows that have ground truth).
ROW_METRICS = NOREF_METRICS + NULLABLE_BOOL_COLUMNS + GT_METRICS + COMPOSITE_METRICS


def gt_columns(pred: np.ndarray, real: np.ndarray, mask: np.ndarray, prefix: str = "", *,
               use_gt_bg: bool = False, reference: ProtocolReference | None = None) -> dict[str, float]:
    """iHarmony4 protocol at 256 px plus full-resolution MSE/PSNR of `pred` against `real`
    (`use_gt_bg`: the reference's paste of the ground-truth background before any metric)."""
    full = full_resolution_metrics(pred, real, mask, use_gt_bg=use_gt_bg)
    return {**protocol_columns(pred, real, mask, prefix, use_gt_bg=use_gt_bg, reference=reference),
            f"{prefix}mse_full": full.mse, f"{prefix}psnr_full": full.psnr}


def protocol_columns(pred: np.ndarray, real: np.ndarray, mask: np.ndarray, prefix: str = "", *,
                     use_gt_bg: bool = False, reference: ProtocolReference | None = None) -> dict[str, float]:
    """The 256 px iHarmony4 protocol alone; `pred` may have any size (the protocol resizes it).
    `reference`: `protocol_reference_arrays(real, mask)`, when several predictions share it."""
    ref = evaluate_arrays(pred, real, mask, use_gt_bg=use_gt_bg, reference=reference)
    return {f"{prefix}mse": ref.mse, f"{prefix}psnr": ref.psnr, f"{prefix}fmse": ref.fmse, f"{prefix}fpsnr": ref.fpsnr,
            f"{prefix}bmse": ref.bmse, f"{prefix}ssim": ref.ssim}


def row_metrics(sample, out: np.ndarray, *, eval_mask: np.ndarray | None = None, use_gt_bg: bool = False,
                max_chroma_shift: float | None = None) -> dict[str, float]:
    """No-reference metrics always; against ground truth (for the output and for the untouched
    composite, the do-nothing baseline) when the sample has it. `eval_mask` (default: the
    sample's binarised mask) is the mask the ground-truth protocol sees, e.g. a soft mask's
    8-bit values, which the protocol dithers as the reference does. `max_chroma_shift`: the colour
    fidelity bound that `fidelity_ok` checks (None: no bound, fidelity_ok null)."""
    fg = sample.mask >= 0.5  # the sample's binarised mask as bool: what every metric reads, made once
    nr = no_reference_metrics(sample.composite, out, fg)
    cols = {"delta_e_fg": nr.delta_e_fg, "stat_gap_before": nr.stat_gap_before, "stat_gap_after": nr.stat_gap_after,
            **fidelity_metrics(sample.composite, out, fg, max_chroma_shift)}
    if sample.real is not None:
        m = fg if eval_mask is None else eval_mask
        # The ground truth and mask at 256 px are the same for both predictions: prepared once.
        ref = protocol_reference_arrays(sample.real, m)
        cols.update(gt_columns(out, sample.real, m, use_gt_bg=use_gt_bg, reference=ref))
        cols.update(gt_columns(sample.composite, sample.real, m, prefix="composite_", use_gt_bg=use_gt_bg, reference=ref))
    return cols
