"""`report.html`: one self-contained page for a person to audit a run (harmonize or evaluate).

Reads `metrics/metrics.parquet` and `summary.json` under an output prefix, fetches only the few
images it shows (through `pipelines.io.storage`, local or object storage) and writes
`report.html` next to them: the summary tables in the paper's layout, inline-SVG plots of the
metric distributions, image grids (composite | harmonized | ground truth | mask | error heat map)
for the worst, median and best rows by fMSE, the failed rows grouped by reason, and every row
(`rows.py`: a table and a per-row detail view over the review images the jobs wrote beside it).
The grids' images are embedded as base64 thumbnails (at most 256 px); no external URL; one script,
the row table's, allowed by its hash. Every piece of text from the data is HTML-escaped.
"""

from __future__ import annotations

import base64
import io
import json
import math
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from html import escape

import numpy as np
import pandas as pd
from PIL import Image

from harmony_ops.imageio import DEFAULT_MAX_PIXELS, apply_orientation, decode_image, decode_mask
from harmony_ops.inputs import load_cutout_sample, load_sample
from harmony_ops.review import HEAT_SCALE, abs_difference, heat_colours

from pipelines.report.rows import rows_section, script_hash
from pipelines.report import svg as svg_plots
from pipelines.io.storage import join, read_with_retries, write_bytes_atomic
from pipelines.io.tables import METRICS_FILE, SUMMARY_FILE, read_parquet_tree
from schemas.vocabulary import BAD, DONE, FG_BUCKETS, IHARMONY4_SUBSETS, Status

REPORT_FILE = "report.html"
TABLE_METRICS = (("MSE", "mse"), ("PSNR", "psnr"), ("fMSE", "fmse"))
ALL_METRICS = (("MSE", "mse"), ("PSNR", "psnr"), ("fMSE", "fmse"), ("fPSNR", "fpsnr"), ("bMSE", "bmse"),
               ("SSIM", "ssim"), ("MSE (full res.)", "mse_full"), ("PSNR (full res.)", "psnr_full"))
THUMB = 256
CASES = 3  # rows per worst / median / best grid
FAILED_THUMBS = 4  # composite thumbnails per failure reason
FAILED_LISTED = 50  # rows listed per failure reason


def esc(x) -> str:
    return escape("" if x is None else str(x), quote=True)


# --- tables ------------------------------------------------------------------------------


def _ordered_subsets(names) -> list[str]:
    names = [str(n) for n in names]
    return [s for s in IHARMONY4_SUBSETS if s in names] + sorted(n for n in names if n not in IHARMONY4_SUBSETS)


def paper_table(metrics: dict, compare: dict | None = None) -> dict:
    """The paper's layout from `aggregate()` blocks: rows per subset then All (and per foreground
    bucket), columns MSE / PSNR / fMSE for the prediction, the composite (and the compare method).
    Each row also says, per group and column, how many rows are in the mean (`n`) and how many
    had an infinite value left out of it (`infinite`); None where the summary predates them."""

    def cells(block: dict | None, prefix: str = "", suffix: str = "") -> dict:
        block = block or {}
        return {label: block.get(prefix + key + suffix) for label, key in TABLE_METRICS}

    def row(name: str, block: dict | None, other: dict | None) -> dict:
        r = {"name": name, "count": int((block or {}).get("count") or 0),
             "prediction": cells(block), "composite": cells(block, "composite_"),
             "n": {"prediction": cells(block, "", "_count"), "composite": cells(block, "composite_", "_count")},
             "infinite": {"prediction": cells(block, "", "_infinite"), "composite": cells(block, "composite_", "_infinite")}}
        if compare is not None:
            r["compare"] = cells(other)
            r["compare_count"] = int((other or {}).get("count") or 0)
            r["n"]["compare"] = cells(other, "", "_count")
            r["infinite"]["compare"] = cells(other, "", "_infinite")
        return r

    metrics = metrics or {}
    cmp = compare or {}
    by_subset = metrics.get("by_subset") or {}
    rows = [row(s, by_subset[s], (cmp.get("by_subset") or {}).get(s)) for s in _ordered_subsets(by_subset)]
    rows.append(row("All", metrics.get("all"), cmp.get("all")))
    by_bucket = metrics.get("by_fg_bucket") or {}
    buckets = [row(b, by_bucket.get(b), (cmp.get("by_fg_bucket") or {}).get(b)) for b in FG_BUCKETS]
    return {"columns": [label for label, _ in TABLE_METRICS], "rows": rows, "fg_buckets": buckets}


def _num(v, digits: int = 2) -> str:
    if isinstance(v, (int, float)) and math.isinf(v):
        return "∞" if v > 0 else "−∞"
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return "—"
    return f"{v:.{digits}f}"


def _cell(v, n, infinite, total: int, digits: int = 2) -> str:
    """A mean for the page, with how many rows it is over when fewer than the row's N (rows without
    ground truth have no ground-truth metrics) and how many infinite values it leaves out."""
    notes = []
    if n is not None and n != total:
        notes.append(f"n={int(n)}")
    if infinite:
        notes.append(f"+{int(infinite)} ∞")
    return esc(_num(v, digits)) + (f' <span class="n">({esc(", ".join(notes))})</span>' if notes else "")


def table_text(table: dict) -> str:
    """The paper table for the terminal."""
    groups = ["prediction", "composite"] + (["compare"] if table["rows"] and "compare" in table["rows"][0] else [])
    width = 9 * len(table["columns"])
    lines = [f"{'':<19}" + "".join(f"  {g:^{width}}" for g in groups),
             f"{'':<12}{'N':>7}" + "".join("  " + "".join(f"{c:>9}" for c in table["columns"]) for _ in groups)]
    for r in table["rows"] + table["fg_buckets"]:
        lines.append(f"{r['name'][:12]:<12}{r['count']:>7}"
                     + "".join("  " + "".join(f"{_num(r[g][c]):>9}" for c in table["columns"]) for g in groups))
    return "\n".join(lines)


def _html_table(rows: list[dict], columns: list[str], table_id: str, first: str) -> str:
    groups = [("prediction", "Prediction"), ("composite", "Composite (no harmonization)")]
    if rows and "compare" in rows[0]:
        groups.append(("compare", "Compare"))
    out = [f'<table class="paper" id="{esc(table_id)}"><thead><tr><th rowspan="2">{esc(first)}</th><th rowspan="2">N</th>']
    out += [f'<th colspan="{len(columns)}">{esc(label)}</th>' for _, label in groups]
    out.append("</tr><tr>")
    out += [f"<th>{esc(c)}{' ↓' if 'MSE' in c else ' ↑'}</th>" for _ in groups for c in columns]
    out.append("</tr></thead><tbody>")
    for r in rows:
        cls = ' class="all"' if r["name"] == "All" else ""
        out.append(f"<tr{cls}><th scope=\"row\">{esc(r['name'])}</th><td>{r['count']}</td>")
        n, inf = r.get("n") or {}, r.get("infinite") or {}
        total = {g: r["compare_count"] if g == "compare" else r["count"] for g, _ in groups}
        out += [f"<td>{_cell(r[g][c], (n.get(g) or {}).get(c), (inf.get(g) or {}).get(c), total[g])}</td>"
                for g, _ in groups for c in columns]
        out.append("</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _all_metrics_table(summary: dict) -> str:
    a = (summary.get("metrics") or {}).get("all") or {}
    cmp = ((summary.get("compare") or {}).get("metrics") or {}).get("all")
    head = "<tr><th>metric</th><th>prediction</th><th>composite</th>" + ("<th>compare</th>" if cmp is not None else "") + "</tr>"

    def cell(block: dict, key: str, digits: int) -> str:
        return _cell(block.get(key), block.get(f"{key}_count"), block.get(f"{key}_infinite"),
                     int(block.get("count") or 0), digits)

    body = []
    for label, key in ALL_METRICS:
        digits = 4 if key == "ssim" else 2
        cells = [cell(a, key, digits), cell(a, f"composite_{key}", digits)]
        if cmp is not None:
            cells.append(cell(cmp, key, digits) if key in ("mse", "psnr", "fmse", "fpsnr", "bmse", "ssim") else "—")
        body.append(f"<tr><th scope=\"row\">{esc(label)}</th>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    for label, key in (("Foreground change ΔE (Lab)", "delta_e_fg"), ("fg/bg colour gap, composite", "stat_gap_before"),
                       ("fg/bg colour gap, prediction", "stat_gap_after"),
                       ("Foreground chroma shift ΔE (mean a*b*)", "fg_chroma_shift"),
                       ("Foreground hue shift, degrees", "fg_hue_shift"),
                       ("Foreground lightness shift ΔL*", "fg_lightness_shift")):
        if a.get(key) is not None:
            body.append(f"<tr><th scope=\"row\">{esc(label)}</th><td>{cell(a, key, 2)}</td><td>—</td>"
                        + ("<td>—</td>" if cmp is not None else "") + "</tr>")
    if a.get("fidelity_checked"):
        body.append(f"<tr><th scope=\"row\">Within the colour-fidelity bound</th><td>{a['fidelity_ok']} of "
                    f"{a['fidelity_checked']}</td><td>—</td>" + ("<td>—</td>" if cmp is not None else "") + "</tr>")
    return f'<table class="paper" id="table-all-metrics"><thead>{head}</thead><tbody>{"".join(body)}</tbody></table>'


# --- selection ---------------------------------------------------------------------------


def scored(df: pd.DataFrame) -> pd.DataFrame:
    """Rows with a finite fMSE (ok or skipped), sorted by fMSE then manifest row."""
    if df.empty or "fmse" not in df.columns:
        return df.iloc[0:0]
    f = pd.to_numeric(df["fmse"], errors="coerce")
    keep = df["status"].isin(DONE) & np.isfinite(f.to_numpy(dtype=float, na_value=np.nan))
    out = df[keep].assign(_f=f[keep])
    sort = ["_f", "row"] if "row" in out.columns else ["_f"]
    return out.sort_values(sort, kind="mergesort").drop(columns="_f")


def select_cases(df: pd.DataFrame, k: int = CASES) -> dict[str, pd.DataFrame]:
    """Worst (highest fMSE first), median (the rows nearest the middle) and best (lowest first),
    k each, never the same row twice: with fewer than 3k rows, worst is filled first, then best."""
    s = scored(df)
    n = len(s)
    pos = pd.Series(range(n), index=s.index)
    worst = s.iloc[::-1].head(k)
    rest = s.drop(worst.index)
    best = rest.head(k)
    rest = rest.drop(best.index)
    centre = (n - 1) / 2
    order = sorted(rest.index, key=lambda i: (abs(pos[i] - centre), pos[i]))[:k]
    median = s.loc[sorted(order, key=lambda i: pos[i])]
    return {"worst": worst, "median": median, "best": best}


def failed_rows(df: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Failed and invalid rows grouped by reason (error_type), the most frequent reason first."""
    if df.empty:
        return {}
    bad = df[df["status"].isin(BAD)]
    reasons = bad["error_type"].fillna("(unknown)").astype(str)
    order = reasons.value_counts().index.tolist()
    return {r: bad[reasons == r] for r in sorted(order, key=lambda r: (-int((reasons == r).sum()), r))}


# --- images ------------------------------------------------------------------------------


def _data_uri(img: Image.Image, fmt: str = "JPEG") -> str:
    img = img.copy()
    img.thumbnail((THUMB, THUMB), Image.Resampling.BILINEAR)
    buf = io.BytesIO()
    if fmt == "JPEG":
        img.convert("RGB").save(buf, format="JPEG", quality=85)
        mime = "image/jpeg"
    else:
        img.save(buf, format="PNG", optimize=True)
        mime = "image/png"
    return f"data:{mime};base64,{base64.b64encode(buf.getvalue()).decode('ascii')}"


def heat_map(pred: np.ndarray, real: np.ndarray, scale: float = HEAT_SCALE) -> Image.Image:
    """Per-pixel mean absolute error (0-255 levels), averaged down to thumbnail size (so magnitudes
    survive), coloured black -> purple -> orange -> yellow, saturating at `scale`."""
    err = abs_difference(pred, real)
    h, w = err.shape
    f = min(1.0, THUMB / max(h, w))
    size = (max(1, round(w * f)), max(1, round(h * f)))
    small = np.asarray(Image.fromarray(err, mode="F").resize(size, Image.Resampling.BOX), dtype=np.float64)
    return Image.fromarray(heat_colours(small, scale))


# A picture of the report is not worth waiting for: each read stops after this (a failed row's object may be
# the one a store never answers).
REPORT_READ_SECONDS = 20.0


def _read(uri, options, retries):
    if not isinstance(uri, str) or not uri:
        return None, "no URI"
    try:
        return read_with_retries(uri, options, retries, time.monotonic() + REPORT_READ_SECONDS), None
    except Exception as exc:  # noqa: BLE001 - a report shows what it can
        return None, f"{type(exc).__name__}: {exc}"


def case_images(row, options: dict, max_pixels: int = DEFAULT_MAX_PIXELS, retries: int = 1) -> dict:
    """Thumbnails (data URIs, None where unavailable) of one row: composite, harmonized, real, mask, error."""
    cutout = row.get("layout") == "cutout"  # its composite is made from foreground and background
    keys = ("foreground", "background") if cutout else ("composite", "mask")
    got = {k: _read(row.get(u), options, retries)[0] for k, u in zip(("composite", "mask"), keys)}
    got.update({k: _read(row.get(k), options, retries)[0] for k in ("real", "output")})
    out = dict.fromkeys(("composite", "output", "real", "mask", "error"))
    comp = mask = real = pred = None
    try:
        if cutout:
            s, _ = load_cutout_sample(got["composite"], got["mask"], int(row["x"]), int(row["y"]),
                                      1.0 if pd.isna(row.get("scale")) else float(row["scale"]), got["real"],
                                      max_pixels=max_pixels)
        else:
            s = load_sample(got["composite"], got["mask"], got["real"], max_pixels=max_pixels)
        comp, mask, real = s.composite, (s.mask * 255).astype(np.uint8), s.real
    except Exception:  # noqa: BLE001 - fall back to whatever decodes on its own
        for key in ("composite", "real"):
            try:
                img, orientation, _ = decode_image(got[key], key, max_pixels)
                arr = np.asarray(apply_orientation(img, orientation))
                comp, real = (arr, real) if key == "composite" else (comp, arr)
            except Exception:  # noqa: BLE001
                pass
        try:
            mask = np.asarray(decode_mask(got["mask"], "mask", max_pixels)[0])
        except Exception:  # noqa: BLE001
            pass
    try:
        img, orientation, _ = decode_image(got["output"], "prediction", max_pixels)
        pred = np.asarray(apply_orientation(img, orientation))
    except Exception:  # noqa: BLE001
        pass
    for key, arr in (("composite", comp), ("output", pred), ("real", real)):
        if arr is not None:
            out[key] = _data_uri(Image.fromarray(arr))
    if mask is not None:
        out["mask"] = _data_uri(Image.fromarray(mask), "PNG")
    if pred is not None and real is not None and pred.shape == real.shape:
        out["error"] = _data_uri(heat_map(pred, real))
    return out


def composite_thumbnail(uri, options: dict, max_pixels: int = DEFAULT_MAX_PIXELS, retries: int = 1) -> tuple[str | None, str | None]:
    data, err = _read(uri, options, retries)
    if data is None:
        return None, err
    try:
        img, orientation, _ = decode_image(data, "composite", max_pixels)
        return _data_uri(apply_orientation(img, orientation)), None
    except Exception as exc:  # noqa: BLE001
        return None, str(exc)


# --- page --------------------------------------------------------------------------------

CSS = """
body{font-family:system-ui,-apple-system,"Segoe UI",Roboto,"DejaVu Sans",sans-serif;margin:24px;color:#222;background:#fafafa}
h1{margin:0 0 4px}h2{margin-top:32px;border-bottom:2px solid #3b6ea8;padding-bottom:4px}
.meta{color:#555;font-size:14px}.meta code{background:#eee;padding:1px 4px;border-radius:3px;overflow-wrap:anywhere}
table{border-collapse:collapse;margin:8px 0;background:#fff}
th,td{border:1px solid #d0d0d0;padding:4px 8px;font-size:13px;text-align:right}
thead th{background:#e8eef6;text-align:center}tbody th{text-align:left;background:#f4f6f9}
tr.all th,tr.all td{font-weight:bold;background:#fff6dc}
.counts td,.counts th{text-align:left}
.plots{display:flex;flex-wrap:wrap;gap:12px}
/* narrow windows: plots and grid thumbnails scale down (never up) instead of widening the page */
.plots svg{max-width:100%;height:auto}
.grid{width:100%;max-width:1560px;table-layout:fixed}.grid thead th:first-child{width:150px}
.grid td{text-align:center;vertical-align:top}
.grid img{max-width:100%;max-height:256px;width:auto;height:auto;display:block;margin:auto}
.grid .cap{text-align:left;font-size:12px;overflow-wrap:anywhere}
.missing{width:120px;max-width:100%;height:90px;background:repeating-linear-gradient(45deg,#eee,#eee 6px,#f8f8f8 6px,#f8f8f8 12px);
color:#888;font-size:11px;display:flex;align-items:center;justify-content:center}
.failed td{text-align:left;vertical-align:top}.failed img{max-width:160px;max-height:160px}
.legend{display:inline-block;width:160px;height:12px;vertical-align:middle;
background:linear-gradient(to right,rgb(0,0,4),rgb(87,16,110),rgb(188,55,84),rgb(249,142,9),rgb(252,255,164))}
.n{color:#666;font-size:11px;white-space:nowrap}
.msg{font-family:ui-monospace,monospace;font-size:12px;white-space:pre-wrap;word-break:break-word;max-width:640px}
.rows-controls{display:flex;flex-wrap:wrap;gap:6px;align-items:center;margin:8px 0}
.rows-wrap{max-width:100%}
table.rows{width:100%;table-layout:fixed}
table.rows td,table.rows th{white-space:nowrap;overflow:hidden;text-overflow:ellipsis;padding:2px 4px;font-size:12px}
table.rows img{width:64px;height:auto;display:block}
table.rows td.t{text-align:left}table.rows th.c-image{width:72px}table.rows th.c-row{width:3.5em}table.rows th.c-id{width:16%}
table.rows th.c-error_message{width:14%}table.rows th.c-status{width:5em}
table.rows button.sort{border:0;background:none;font:inherit;font-weight:bold;cursor:pointer}
table.rows button.open{border:0;background:none;font:inherit;color:#1a56a0;text-decoration:underline;cursor:pointer;padding:0}
table.rows img.open{cursor:zoom-in}
body.detail-open{overflow:hidden}
.detail{position:fixed;inset:0;background:#1d1d1f;color:#eee;z-index:10;display:flex;flex-direction:column}
.detail[hidden]{display:none}
.detail-bar{display:flex;flex-wrap:wrap;gap:8px;align-items:center;padding:8px 12px;background:#2a2a2e;font-size:13px}
.detail-bar button{font:inherit;cursor:pointer}.detail-zoom button.on{font-weight:bold;outline:2px solid #6aa0e0}
#detail-title{font-size:15px}#detail-meta{color:#bbb}.detail-zoom{margin-left:auto}
#detail-note{margin:4px 12px;font-size:12px;color:#f3c27a;white-space:pre-wrap}
#detail-panels{flex:1;min-height:0;display:grid;grid-auto-rows:minmax(0,1fr);gap:8px;padding:8px 12px}
.panel{margin:0;display:flex;flex-direction:column;min-width:0;min-height:0}
.panel figcaption{font-size:12px;color:#ccc;margin-bottom:2px}
.panel .scroll{flex:1;min-height:0;overflow:auto;background:#111}
.panel img{max-width:100%;max-height:100%;display:block;margin:auto;cursor:zoom-in}
#detail-panels.zoomed img{max-width:none;max-height:none;margin:0;image-rendering:pixelated;cursor:default}
"""


def _img(uri: str | None, alt: str) -> str:
    if not uri:
        return f'<div class="missing">{esc(alt)}: not available</div>'
    return f'<img src="{uri}" alt="{esc(alt)}">'


def _row_link(r) -> str:
    """The row's id, linking to its detail view in the row table (`#row=N`)."""
    row = r.get("row")
    if row is None or pd.isna(row):
        return esc(r.get("id"))
    return f'<a href="#row={int(row)}">{esc(r.get("id"))}</a>'


def _caption(r) -> str:
    parts = [f"<b>{_row_link(r)}</b>"]
    if isinstance(r.get("subset"), str):
        parts.append(f"subset {esc(r['subset'])}")
    for label, key, digits in (("fMSE", "fmse", 2), ("PSNR", "psnr", 2), ("MSE", "mse", 2), ("fg ratio", "fg_ratio", 3)):
        v = r.get(key)
        if v is not None and not pd.isna(v):
            parts.append(f"{label} {_num(float(v), digits)}")
    if isinstance(r.get("fg_bucket"), str):
        parts.append(f"bucket {esc(r['fg_bucket'])}")
    return "<br>".join(parts)


def _grid(rows: pd.DataFrame, thumbs: dict, grid_id: str) -> str:
    if rows.empty:
        return "<p>No rows with ground-truth metrics.</p>"
    head = "".join(f"<th>{esc(h)}</th>" for h in ("row", "composite", "harmonized", "ground truth", "mask", "error"))
    out = [f'<table class="grid" id="{esc(grid_id)}"><thead><tr>{head}</tr></thead><tbody>']
    for i, r in rows.iterrows():
        t = thumbs.get(i, {})
        cells = [_img(t.get(k), label) for k, label in (("composite", "composite"), ("output", "harmonized"),
                                                         ("real", "ground truth"), ("mask", "mask"), ("error", "error"))]
        out.append(f'<tr><td class="cap">{_caption(r)}</td>' + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    out.append("</tbody></table>")
    return "".join(out)


def _failed_section(groups: dict[str, pd.DataFrame], thumbs: dict) -> str:
    if not groups:
        return "<p>No failed or invalid rows.</p>"
    out = []
    for reason, part in groups.items():
        out.append(f'<h3 class="reason">{esc(reason)} ({len(part)})</h3><table class="failed"><thead><tr><th>id</th>'
                   "<th>status</th><th>error_type</th><th>error_message</th><th>composite</th></tr></thead><tbody>")
        for i, r in part.head(FAILED_LISTED).iterrows():
            if i in thumbs:
                uri, err = thumbs[i]
                thumb = _img(uri, "composite") if uri else f'<span class="msg">cannot be read: {esc(err)}</span>'
            else:
                thumb = "—"
            out.append(f"<tr><td>{_row_link(r)}</td><td>{esc(r.get('status'))}</td><td>{esc(r.get('error_type'))}</td>"
                       f"<td class=\"msg\">{esc(r.get('error_message'))}</td><td>{thumb}</td></tr>")
        out.append("</tbody></table>")
        if len(part) > FAILED_LISTED:
            out.append(f"<p>… and {len(part) - FAILED_LISTED} more (see metrics/metrics.parquet).</p>")
    return "".join(out)


def _plots(df: pd.DataFrame) -> str:
    ok = df[df["status"].isin(DONE)] if not df.empty else df
    col = lambda c: ok[c].tolist() if c in ok.columns else []  # noqa: E731
    ids = ok["id"].tolist() if "id" in ok.columns else None
    figs = [
        svg_plots.histogram(col("psnr"), title="PSNR (256 px)", xlabel="PSNR, dB"),
        svg_plots.histogram(col("fmse"), title="fMSE (256 px)", xlabel="fMSE", log_x=True),
        svg_plots.scatter(col("fg_ratio"), col("fmse"), labels=ids, title="fMSE against foreground ratio",
                          xlabel="foreground ratio", ylabel="fMSE", log_y=True),
    ]
    return '<div class="plots">' + "".join(figs) + "</div>"


def render_html(df: pd.DataFrame, summary: dict, prefix: str, case_thumbs: dict | None = None,
                failed_thumbs: dict | None = None) -> str:
    """The page from the metrics rows, the summary and already fetched thumbnails (keyed by row index)."""
    case_thumbs, failed_thumbs = case_thumbs or {}, failed_thumbs or {}
    compare = summary.get("compare") or {}
    table = paper_table(summary.get("metrics") or {}, compare.get("metrics") if compare else None)
    ev = summary.get("evaluation") or {}
    engines = sorted({str(e) for e in df["engine"].dropna()}) if "engine" in df.columns else []
    counts = summary.get("counts") or {}
    meta = [f"output <code>{esc(prefix)}</code>", f"{int(summary.get('rows', len(df)))} rows"]
    meta.append(", ".join(f"{esc(k)} {int(v)}" for k, v in counts.items()))
    if engines:
        meta.append("engine " + esc(", ".join(engines)))
    if ev:
        meta.append(f"predictions <code>{esc(ev.get('predictions'))}</code>")
        if ev.get("compare"):
            meta.append(f"compare <code>{esc(ev.get('compare'))}</code>")
        meta.append("ground-truth background pasted (use_gt_bg)" if ev.get("use_gt_bg") else "predictions as they are (no background paste)")
    meta.append("generated " + esc(time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())))

    errors = summary.get("errors_by_type") or {}
    err_html = ("<table class=\"counts\" id=\"table-errors\"><thead><tr><th>error_type</th><th>rows</th></tr></thead><tbody>"
                + "".join(f"<tr><td>{esc(k)}</td><td>{int(v)}</td></tr>" for k, v in errors.items()) + "</tbody></table>") if errors else "<p>No errors.</p>"
    cases = select_cases(df)
    groups = failed_rows(df)
    delta = ""
    if compare.get("delta"):
        d = compare["delta"].get("all") or {}
        n = lambda k: int(d.get(f"{k}_count", d.get("count")) or 0)  # noqa: E731 - the finite deltas
        delta = (f"<p>Compare method minus prediction, mean per image over the rows where both are finite: "
                 f"ΔPSNR {_num(d.get('delta_psnr'))} dB ({n('delta_psnr')} rows), "
                 f"ΔfMSE {_num(d.get('delta_fmse'))} ({n('delta_fmse')} rows).</p>")
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8"><meta name="viewport" content="width=device-width">',
        # Offline and self-contained: no network, no script but the row table's own (by hash).
        f'<meta http-equiv="Content-Security-Policy" content="default-src \'none\'; img-src \'self\' data: file:; '
        f'style-src \'unsafe-inline\'; script-src {script_hash()}">',
        f"<title>harmony report: {esc(prefix)}</title><style>{CSS}</style></head><body>",
        "<h1>Harmonization report</h1>",
        f'<p class="meta">{" · ".join(meta)}</p>',
        '<h2 id="results-by-subset">Results by subset</h2>',
        "<p>iHarmony4 protocol at 256 px, mean per image over ok rows; MSE and fMSE lower is better, PSNR higher. "
        "(n=K): the mean is over K rows, fewer than N (rows without ground truth have no ground-truth metrics); "
        "(+K ∞): K rows had an infinite value (an image identical to its ground truth), left out of the mean.</p>",
        _html_table(table["rows"], table["columns"], "table-subsets", "Subset"),
        '<h2 id="results-by-foreground-ratio">Results by foreground ratio</h2>',
        _html_table(table["fg_buckets"], table["columns"], "table-buckets", "Foreground"),
        '<h2 id="all-metrics">All metrics (All)</h2>',
        _all_metrics_table(summary),
        delta,
        '<h2 id="errors">Rows by status and error</h2>',
        err_html,
        '<h2 id="distributions">Distributions</h2>',
        _plots(df),
        '<h2 id="examples">Examples by fMSE</h2>',
        f'<p>Columns: composite | harmonized | ground truth | mask | error heat map (mean absolute error per pixel, '
        f'<span class="legend"></span> 0 to ≥ {HEAT_SCALE:g} levels).</p>',
    ]
    for name, title in (("worst", "Worst (highest fMSE)"), ("median", "Median"), ("best", "Best (lowest fMSE)")):
        parts.append(f'<h3 id="examples-{name}">{esc(title)}</h3>')
        parts.append(_grid(cases[name], case_thumbs, f"grid-{name}"))
    parts.append('<h2 id="failed">Failed rows</h2>')
    parts.append(_failed_section(groups, failed_thumbs))
    # In a row's detail view, evaluate's two methods are named by their folders (e.g. results/ and results-x/).
    sources = {k: ev.get(v) for k, v in (("harmonized", "predictions"), ("compare", "compare")) if ev.get(v)}
    parts.append(rows_section(df, prefix, sources))
    parts.append("</body></html>")
    return "\n".join(parts)


def build_report(df: pd.DataFrame, summary: dict, prefix: str, options: dict | None = None,
                 max_pixels: int = DEFAULT_MAX_PIXELS, retries: int = 1) -> str:
    """Fetch the thumbnails the page shows (in parallel) and render it."""
    options = options or {}
    df = df.reset_index(drop=True)
    cases = select_cases(df)
    shown = [i for part in cases.values() for i in part.index]
    # Thumbnails of failed rows only: an invalid row was never read (its URIs may be refused ones).
    failed = [i for part in failed_rows(df).values() for i in part.index[part["status"] == Status.FAILED][:FAILED_THUMBS]]
    with ThreadPoolExecutor(max_workers=8) as pool:
        case_f = {i: pool.submit(case_images, df.loc[i].to_dict(), options, max_pixels, retries) for i in shown}
        fail_f = {i: pool.submit(composite_thumbnail, df.at[i, "composite"], options, max_pixels, retries) for i in failed}
        case_thumbs = {i: f.result() for i, f in case_f.items()}
        failed_thumbs = {i: f.result() for i, f in fail_f.items()}
    return render_html(df, summary, prefix, case_thumbs, failed_thumbs)


def write_report(prefix: str, options: dict | None = None, metrics: pd.DataFrame | None = None,
                 summary: dict | None = None, max_pixels: int = DEFAULT_MAX_PIXELS) -> str:
    """Write `report.html` under `prefix` (reading metrics and summary from it unless given); returns its URI."""
    from pipelines.errors import JobError
    from pipelines.io.storage import read_bytes
    from pipelines.report.summary import build_summary

    options = options or {}
    if metrics is None:
        metrics = read_parquet_tree(join(prefix, METRICS_FILE), options)
        if metrics.empty:
            raise JobError(f"no metrics table at {join(prefix, METRICS_FILE)}")
    if summary is None:
        try:
            summary = json.loads(read_bytes(join(prefix, SUMMARY_FILE), options))
        except FileNotFoundError:
            summary = build_summary(metrics, 0.0, 0, {})
    html = build_report(metrics, summary, prefix, options, max_pixels)
    uri = join(prefix, REPORT_FILE)
    write_bytes_atomic(uri, html.encode("utf-8"), options)
    return uri


def maybe_write_report(prefix: str, options: dict, metrics: pd.DataFrame, summary: dict, echo=print) -> str | None:
    """At the end of a job: write the report when any row is done (with or without ground truth); a failure is
    reported, never raised."""
    if metrics.empty or not metrics["status"].isin(DONE).any():
        return None
    try:
        uri = write_report(prefix, options, metrics, summary)
    except Exception as exc:  # noqa: BLE001 - the job's results are written; the report is a view of them
        echo(f"report not written: {type(exc).__name__}: {exc}", file=sys.stderr)
        return None
    echo(f"report: {uri}")
    return uri
