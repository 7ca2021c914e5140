"""report/index.html of a training run: loss and validation curves (the report's SVG helpers)."""

from __future__ import annotations

import html

import pandas as pd

from pipelines.io.storage import join, write_bytes_atomic
from pipelines.report.svg import scatter


def write_report(output: str, train: pd.DataFrame, valid: pd.DataFrame, options: dict, grids: int = 0) -> str:
    """`grids`: how many validation grids (report/validation-<k>.png) the final validation wrote."""
    charts = [scatter(train["step"], train["loss"], title="training loss", xlabel="step", ylabel="loss", log_y=True)]
    for metric in ("fmse", "psnr", "mse"):
        if len(valid):
            charts.append(scatter(valid["step"], valid[metric], title=f"validation {metric}", xlabel="step", ylabel=metric))
    images = "".join(f'<img src="validation-{k}.png" alt="composite | output | real">' for k in range(grids))
    page = (f"<!doctype html><meta charset=utf-8><title>{html.escape('training report')}</title>"
            f"<h1>training</h1>{''.join(charts)}<h2>validation (composite | output | real)</h2>{images}")
    uri = join(output, "report", "index.html")
    write_bytes_atomic(uri, page.encode(), options)
    return uri
