"""The report's row table: every row of the run (ok, skipped, failed, invalid) with its status and reason,
subset, foreground bucket and metrics, sortable by any column, filterable by status, subset, bucket and a
metric range, searchable by id, paged. The rows travel in the page as one JSON array and are drawn a page
at a time, so a 10,000-row report opens in a browser at once; a row's harmonized image, when it lies under
the report's own prefix (harmonize's images/), is a lazily loaded thumbnail that links to the full image."""

from __future__ import annotations

import json
import math
import posixpath

import pandas as pd

from schemas.metrics import GT_METRICS, NOREF_METRICS

PAGE = 100
TEXT = ("id", "status", "error_type", "error_message", "subset", "fg_bucket")
METRICS = tuple(m for m in ("fmse", "psnr", "mse", "fpsnr", "ssim") if m in GT_METRICS) + NOREF_METRICS
LABELS = {"fmse": "fMSE", "psnr": "PSNR", "mse": "MSE", "fpsnr": "fPSNR", "ssim": "SSIM", "delta_e_fg": "ΔE fg",
          "stat_gap_before": "gap before", "stat_gap_after": "gap after", "fg_chroma_shift": "chroma shift",
          "fg_hue_shift": "hue shift", "fg_lightness_shift": "ΔL"}


def _relative(uri, prefix: str) -> str | None:
    """The output image's path relative to the report (only under the report's own prefix: it travels with it)."""
    if not isinstance(uri, str) or not uri:
        return None
    root = prefix.rstrip("/") + "/"
    return posixpath.relpath(uri, prefix.rstrip("/")) if uri.startswith(root) else None


def _value(v):
    if v is None or (isinstance(v, float) and not math.isfinite(v)) or v is pd.NA:
        return None
    return round(float(v), 4) if isinstance(v, float) else v


def rows_json(df: pd.DataFrame, prefix: str) -> str:
    """{"columns": [...], "rows": [[...], ...]} of every row, ordered by manifest row; safe inside <script>."""
    metrics = [m for m in METRICS if m in df.columns]
    columns = ["row", *[c for c in TEXT if c in df.columns], *metrics, "image"]
    ordered = df.sort_values("row") if "row" in df.columns else df
    records = []
    for rec in ordered.to_dict("records"):
        msg = rec.get("error_message")
        if isinstance(msg, str) and len(msg) > 300:
            rec["error_message"] = msg[:300] + "…"
        rec["image"] = _relative(rec.get("output"), prefix)
        records.append([_value(rec.get(c)) for c in columns])
    text = json.dumps({"columns": columns, "labels": LABELS, "metrics": metrics, "rows": records}, separators=(",", ":"),
                      default=str)
    # No markup can appear in the page's JSON: a cell holding "<img onerror=...>" stays text.
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def rows_section(df: pd.DataFrame, prefix: str) -> str:
    return "\n".join([
        '<h2 id="rows">All rows</h2>',
        '<div class="rows-controls">',
        '<input id="rows-search" type="search" placeholder="id contains…" aria-label="search by id">',
        '<select id="rows-status" aria-label="status"><option value="">every status</option></select>',
        '<select id="rows-subset" aria-label="subset"><option value="">every subset</option></select>',
        '<select id="rows-bucket" aria-label="foreground bucket"><option value="">every bucket</option></select>',
        '<select id="rows-metric" aria-label="metric"></select>',
        '<input id="rows-min" type="number" step="any" placeholder="min" aria-label="minimum">',
        '<input id="rows-max" type="number" step="any" placeholder="max" aria-label="maximum">',
        '<span id="rows-count"></span>',
        '</div>',
        '<div class="rows-wrap"><table class="rows" id="table-rows"><thead></thead><tbody></tbody></table></div>',
        '<div class="rows-pager"><button id="rows-prev" type="button">previous</button> <span id="rows-page"></span> '
        '<button id="rows-next" type="button">next</button></div>',
        f'<script type="application/json" id="rows-data">{rows_json(df, prefix)}</script>',
        f"<script>{SCRIPT}</script>",  # the only script: the page's CSP allows it by its hash (script_hash)
    ])


SCRIPT = """
(function () {
  const data = JSON.parse(document.getElementById('rows-data').textContent);
  const cols = data.columns, idx = Object.fromEntries(cols.map((c, i) => [c, i]));
  const PAGE = %d;
  let view = data.rows, page = 0, sortCol = 'row', sortDir = 1;
  const $ = (id) => document.getElementById(id);
  const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;'}[c]));
  function fill(sel, col) {
    if (!(col in idx)) { sel.style.display = 'none'; return; }
    [...new Set(data.rows.map((r) => r[idx[col]]).filter((v) => v !== null))].sort().forEach((v) => {
      const o = document.createElement('option'); o.value = v; o.textContent = v; sel.appendChild(o); });
  }
  fill($('rows-status'), 'status'); fill($('rows-subset'), 'subset'); fill($('rows-bucket'), 'fg_bucket');
  data.metrics.forEach((m) => { const o = document.createElement('option'); o.value = m;
    o.textContent = data.labels[m] || m; $('rows-metric').appendChild(o); });
  const shown = cols.filter((c) => c !== 'image');
  $('table-rows').tHead.innerHTML = '<tr><th>image</th>' + shown.map((c) =>
    '<th><button type="button" class="sort" data-col="' + c + '">' + esc(data.labels[c] || c) + '</button></th>').join('') + '</tr>';
  function apply() {
    const q = $('rows-search').value.trim().toLowerCase(), st = $('rows-status').value, su = $('rows-subset').value,
      bu = $('rows-bucket').value, m = $('rows-metric').value;
    const lo = $('rows-min').value === '' ? null : Number($('rows-min').value);
    const hi = $('rows-max').value === '' ? null : Number($('rows-max').value);
    view = data.rows.filter((r) => (!q || String(r[idx.id]).toLowerCase().includes(q))
      && (!st || r[idx.status] === st) && (!su || r[idx.subset] === su) && (!bu || r[idx.fg_bucket] === bu)
      && ((lo === null && hi === null) || (m && r[idx[m]] !== null && (lo === null || r[idx[m]] >= lo) && (hi === null || r[idx[m]] <= hi))));
    const k = idx[sortCol];
    view = view.slice().sort((a, b) => {
      const x = a[k], y = b[k];
      if (x === y) return a[0] - b[0];
      if (x === null) return 1; if (y === null) return -1;  // nulls last, whichever the direction
      return (x < y ? -1 : 1) * sortDir;
    });
    page = Math.min(page, Math.max(0, Math.ceil(view.length / PAGE) - 1));
    draw();
  }
  function draw() {
    const start = page * PAGE, rows = view.slice(start, start + PAGE);
    $('table-rows').tBodies[0].innerHTML = rows.map((r) => {
      const img = r[idx.image] ? '<a href="' + esc(r[idx.image]) + '"><img loading="lazy" src="' + esc(r[idx.image]) + '" alt="' + esc(r[idx.id]) + '"></a>' : '';
      return '<tr data-status="' + esc(r[idx.status]) + '"><td>' + img + '</td>' + shown.map((c) => {
        const v = r[idx[c]];
        return '<td>' + (v === null ? '—' : esc(typeof v === 'number' && !Number.isInteger(v) ? v.toFixed(2) : v)) + '</td>';
      }).join('') + '</tr>';
    }).join('');
    $('rows-count').textContent = view.length + ' of ' + data.rows.length + ' rows';
    $('rows-page').textContent = 'page ' + (view.length ? page + 1 : 0) + ' of ' + Math.ceil(view.length / PAGE);
  }
  $('table-rows').tHead.addEventListener('click', (e) => {
    const b = e.target.closest('button.sort'); if (!b) return;
    const c = b.dataset.col;
    // metrics where lower is better open worst first; everything else ascending
    if (sortCol === c) sortDir = -sortDir; else { sortCol = c; sortDir = ['fmse', 'mse', 'delta_e_fg', 'fg_chroma_shift', 'fg_hue_shift'].includes(c) ? -1 : 1; }
    apply();
  });
  ['rows-search', 'rows-status', 'rows-subset', 'rows-bucket', 'rows-metric', 'rows-min', 'rows-max'].forEach((id) =>
    ['input', 'change'].forEach((ev) => $(id).addEventListener(ev, () => { page = 0; apply(); })));
  $('rows-prev').addEventListener('click', () => { if (page > 0) { page--; draw(); } });
  $('rows-next').addEventListener('click', () => { if ((page + 1) * PAGE < view.length) { page++; draw(); } });
  apply();
})();
""" % PAGE


def script_hash() -> str:
    """The CSP source that allows the row table's script and nothing else."""
    import base64
    import hashlib

    return "'sha256-" + base64.b64encode(hashlib.sha256(SCRIPT.encode()).digest()).decode() + "'"
