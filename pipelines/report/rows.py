"""The report's row table: every row of the run (ok, skipped, failed, invalid) with its status and reason,
subset, foreground bucket and metrics, sortable by any column, filterable by status, subset, bucket and a
metric range, searchable by id, paged. The rows travel in the page as one JSON array and are drawn a page
at a time, so a 10,000-row report opens in a browser at once. A row opens a detail view: its review images
(written by the jobs' workers under `report_files/rows/<row>/`, see pipelines/jobs/review_images.py) side by
side at full resolution, zoomed and scrolled together."""

from __future__ import annotations

import json
import math
import os
import posixpath

import pandas as pd

from harmony_ops import review
from pipelines.io.storage import protocol_of
from pipelines.io.tables import REVIEW_DIR
from schemas.metrics import GT_METRICS, NOREF_METRICS

PAGE = 100
TEXT = ("id", "status", "error_type", "error_message", "subset", "fg_bucket")
DETAIL = ("width", "height", "notes", "review")  # shown in a row's detail view, not in the table
# The stems of a row's review files (harmony_ops/review.py): its `review` cell names them with their extensions.
FILES = {"composite": review.COMPOSITE, "harmonized": review.HARMONIZED, "compare": review.COMPARE,
         "real": review.REAL, "mask": review.MASK, "difference": review.DIFFERENCE, "thumb": review.THUMB}
METRICS = tuple(m for m in ("fmse", "psnr", "mse", "fpsnr", "ssim") if m in GT_METRICS) + NOREF_METRICS
LABELS = {"fmse": "fMSE", "psnr": "PSNR", "mse": "MSE", "fpsnr": "fPSNR", "ssim": "SSIM", "delta_e_fg": "ΔE fg",
          "stat_gap_before": "gap before", "stat_gap_after": "gap after", "fg_chroma_shift": "chroma shift",
          "fg_hue_shift": "hue shift", "fg_lightness_shift": "ΔL"}


def _relative(uri, prefix: str) -> str | None:
    """The output image's path relative to the report (only under the report's own prefix: it travels with it).
    Local paths are compared absolute: a job writes absolute ones, `harmony report out` may be given a relative one."""
    if not isinstance(uri, str) or not uri:
        return None
    if protocol_of(prefix) == "file" and protocol_of(uri) == "file":
        uri, prefix = (os.path.abspath(p.removeprefix("file://")) for p in (uri, prefix))
    root = prefix.rstrip("/") + "/"
    return posixpath.relpath(uri, prefix.rstrip("/")) if uri.startswith(root) else None


def _value(v):
    if v is None or (isinstance(v, float) and not math.isfinite(v)) or v is pd.NA:
        return None
    return round(float(v), 4) if isinstance(v, float) else v


def _folder_name(uri: str) -> str:
    """`s3://b/runs/x/images` -> `x/images`: enough of a folder's path to tell two methods apart."""
    parts = [p for p in str(uri).rstrip("/").split("/") if p]
    return "/".join(parts[-2:]) if len(parts) > 1 else (parts[0] if parts else "")


def rows_json(df: pd.DataFrame, prefix: str, sources: dict | None = None) -> str:
    """{"columns": [...], "rows": [[...], ...]} of every row, ordered by manifest row; safe inside <script>."""
    metrics = [m for m in METRICS if m in df.columns]
    extra = [c for c in DETAIL if c in df.columns]
    columns = ["row", *[c for c in TEXT if c in df.columns], *metrics, *extra, "image"]
    ordered = df.sort_values("row") if "row" in df.columns else df
    records = []
    for rec in ordered.to_dict("records"):
        for c in ("error_message", "notes"):
            msg = rec.get(c)
            if isinstance(msg, str) and len(msg) > 300:
                rec[c] = msg[:300] + "…"
        rec["image"] = _relative(rec.get("output"), prefix)
        records.append([_value(rec.get(c)) for c in columns])
    text = json.dumps({"columns": columns, "labels": LABELS, "metrics": metrics, "hidden": ["image", *extra],
                       "review_dir": REVIEW_DIR, "files": FILES,
                       "sources": {k: _folder_name(v) for k, v in (sources or {}).items()}, "rows": records}, separators=(",", ":"), default=str)
    # No markup can appear in the page's JSON: a cell holding "<img onerror=...>" stays text.
    return text.replace("&", "\\u0026").replace("<", "\\u003c").replace(">", "\\u003e")


def rows_section(df: pd.DataFrame, prefix: str, sources: dict | None = None) -> str:
    """`sources`: where evaluate's methods came from ({"harmonized": predictions, "compare": compare}), named in
    the detail view."""
    return "\n".join([
        '<h2 id="rows">All rows</h2>',
        '<p>Open a row (its id or thumbnail) to review it at full resolution: composite, harmonized, the compare '
        'method\'s output, ground truth, mask and a difference map side by side, zoomed together. In the view: '
        '← → previous and next row of this table, + − zoom, Esc closes.</p>',
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
        DETAIL_MARKUP,
        f'<script type="application/json" id="rows-data">{rows_json(df, prefix, sources)}</script>',
        f"<script>{SCRIPT}</script>",  # the only script: the page's CSP allows it by its hash (script_hash)
    ])


DETAIL_MARKUP = (
    '<div id="detail" class="detail" hidden role="dialog" aria-modal="true" aria-labelledby="detail-title">'
    '<div class="detail-bar">'
    '<button id="detail-prev" type="button" title="previous row (←)">←</button>'
    '<button id="detail-next" type="button" title="next row (→)">→</button>'
    '<b id="detail-title"></b><span id="detail-meta"></span>'
    '<span class="detail-zoom">zoom <button type="button" data-zoom="0">fit</button>'
    '<button type="button" data-zoom="1">100%</button><button type="button" data-zoom="2">200%</button>'
    '<button type="button" data-zoom="4">400%</button></span>'
    '<button id="detail-close" type="button" title="close (Esc)">close</button></div>'
    '<p id="detail-note"></p><div id="detail-panels"></div></div>'
)

SCRIPT = """
(function () {
  const data = JSON.parse(document.getElementById('rows-data').textContent);
  const cols = data.columns, idx = Object.fromEntries(cols.map((c, i) => [c, i]));
  const PAGE = %d;
  let view = data.rows, page = 0, sortCol = 'row', sortDir = 1;
  const $ = (id) => document.getElementById(id);
  const esc = (s) => String(s).replace(/[&<>"']/g, (c) => ({'&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;'}[c]));
  const fmt = (v) => v === null || v === undefined ? '—' : (typeof v === 'number' && !Number.isInteger(v) ? v.toFixed(2) : String(v));
  const files = (r) => 'review' in idx && r[idx.review] ? r[idx.review].split(',') : [];
  const folder = (r) => data.review_dir + '/' + r[idx.row] + '/';
  // a review file by its stem, as a path relative to the report; null when the row has none
  const file = (r, stem) => { const f = files(r).find((n) => n.slice(0, n.lastIndexOf('.')) === stem);
    return f ? folder(r) + f : null; };
  const thumb = (r) => file(r, data.files.thumb) || r[idx.image];
  function fill(sel, col) {
    if (!(col in idx)) { sel.style.display = 'none'; return; }
    [...new Set(data.rows.map((r) => r[idx[col]]).filter((v) => v !== null))].sort().forEach((v) => {
      const o = document.createElement('option'); o.value = v; o.textContent = v; sel.appendChild(o); });
  }
  fill($('rows-status'), 'status'); fill($('rows-subset'), 'subset'); fill($('rows-bucket'), 'fg_bucket');
  data.metrics.forEach((m) => { const o = document.createElement('option'); o.value = m;
    o.textContent = data.labels[m] || m; $('rows-metric').appendChild(o); });
  const shown = cols.filter((c) => !data.hidden.includes(c));
  $('table-rows').tHead.innerHTML = '<tr><th class="c-image">image</th>' + shown.map((c) =>
    '<th class="c-' + c + '"><button type="button" class="sort" data-col="' + c + '">' + esc(data.labels[c] || c) + '</button></th>').join('') + '</tr>';
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
      const t = thumb(r), key = esc(r[idx.row]);
      const img = t ? '<img class="open" data-row="' + key + '" loading="lazy" src="' + esc(t) + '" alt="' + esc(r[idx.id]) + '">' : '';
      return '<tr data-status="' + esc(r[idx.status]) + '"><td>' + img + '</td>' + shown.map((c) => {
        const v = fmt(r[idx[c]]);
        const cls = c === 'row' || data.metrics.includes(c) ? '' : ' class="t"';  // text reads from the left
        if (c === 'id') return '<td class="t" title="' + esc(v) + '"><button type="button" class="open" data-row="' + key + '">' + esc(v) + '</button></td>';
        return '<td' + cls + ' title="' + esc(v) + '">' + esc(v) + '</td>';
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
  // Text fields redraw as one types ('input'), not again on 'change' when they lose focus: that redraw would
  // replace the row a click is landing on.
  ['rows-search', 'rows-min', 'rows-max', 'rows-status', 'rows-subset', 'rows-bucket', 'rows-metric'].forEach((id) =>
    $(id).addEventListener($(id).tagName === 'SELECT' ? 'change' : 'input', () => { page = 0; apply(); }));
  $('rows-prev').addEventListener('click', () => { if (page > 0) { page--; draw(); } });
  $('rows-next').addEventListener('click', () => { if ((page + 1) * PAGE < view.length) { page++; draw(); } });

  // --- one row at full resolution: its images side by side, zoomed and scrolled together ---
  const byRow = new Map(data.rows.map((r) => [String(r[idx.row]), r]));
  let current = null, zoom = 0, syncing = false;
  function panels(r) {
    const real = file(r, data.files.real), F = data.files;
    const named = (label, key) => data.sources[key] ? label + ' (' + data.sources[key] + ')' : label;
    return [['composite', file(r, F.composite)], [named('harmonized', 'harmonized'), r[idx.image] || file(r, F.harmonized)],
      [named('compare method', 'compare'), file(r, F.compare)], ['ground truth', real], ['mask', file(r, F.mask)],
      [real ? 'difference to ground truth' : 'change from composite', file(r, F.difference)]].filter((p) => p[1]);
  }
  function open(key) {
    const r = byRow.get(String(key)); if (!r) return;
    current = r;
    $('detail-title').textContent = r[idx.id];
    const meta = ['row ' + r[idx.row], r[idx.status]];
    if ('width' in idx && r[idx.width] !== null) meta.push(r[idx.width] + '×' + r[idx.height] + ' px');
    ['subset', 'fg_bucket'].forEach((c) => { if (c in idx && r[idx[c]] !== null) meta.push(r[idx[c]]); });
    data.metrics.forEach((m) => { if (r[idx[m]] !== null) meta.push((data.labels[m] || m) + ' ' + fmt(r[idx[m]])); });
    $('detail-meta').textContent = meta.join(' · ');
    const p = panels(r), notes = [];
    if ('error_type' in idx && r[idx.error_type] !== null) notes.push(r[idx.error_type] + ': ' + (r[idx.error_message] || ''));
    if ('notes' in idx && r[idx.notes] !== null) notes.push('notes: ' + r[idx.notes]);
    if (!files(r).length && (r[idx.status] === 'ok' || r[idx.status] === 'skipped'))
      notes.push('No review images for this row: the run wrote none (--no-review-images, or a run from before they existed).');
    $('detail-note').textContent = notes.join('  ·  ');
    // two rows of panels at most: the images as large as the window allows
    $('detail-panels').style.gridTemplateColumns = 'repeat(' + Math.max(1, p.length > 3 ? Math.ceil(p.length / 2) : p.length) + ', minmax(0, 1fr))';
    $('detail-panels').innerHTML = p.map(([label, src]) => '<figure class="panel"><figcaption>' + esc(label)
      + '</figcaption><div class="scroll"><img src="' + esc(src) + '" alt="' + esc(label) + '"></div></figure>').join('');
    $('detail-panels').querySelectorAll('img').forEach((img) => img.addEventListener('error', () => {
      img.replaceWith(Object.assign(document.createElement('div'), {className: 'missing', textContent: img.alt + ': not available'})); }));
    $('detail').hidden = false;
    document.body.classList.add('detail-open');
    setZoom(zoom);
    if (location.hash !== '#row=' + r[idx.row]) history.replaceState(null, '', '#row=' + r[idx.row]);
  }
  function close() {
    $('detail').hidden = true; current = null; document.body.classList.remove('detail-open');
    history.replaceState(null, '', location.pathname + location.search);
  }
  function setZoom(z) {
    zoom = z;
    $('detail-panels').classList.toggle('zoomed', z > 0);
    $('detail-panels').querySelectorAll('img').forEach((img) => {
      const size = () => { img.style.width = z > 0 ? (img.naturalWidth * z) + 'px' : ''; };
      if (img.complete) size(); else img.addEventListener('load', size, {once: true});
    });
    document.querySelectorAll('.detail-zoom button').forEach((b) => b.classList.toggle('on', Number(b.dataset.zoom) === z));
  }
  function step(d) {
    if (!current) return;
    const i = view.indexOf(current);
    const next = view[i < 0 ? 0 : i + d];
    if (next) open(next[idx.row]);
  }
  $('table-rows').tBodies[0].addEventListener('click', (e) => {
    const b = e.target.closest('.open'); if (b) open(b.dataset.row);
  });
  $('detail-close').addEventListener('click', close);
  $('detail-prev').addEventListener('click', () => step(-1));
  $('detail-next').addEventListener('click', () => step(1));
  document.querySelector('.detail-zoom').addEventListener('click', (e) => {
    const b = e.target.closest('button'); if (b) setZoom(Number(b.dataset.zoom));
  });
  // A click on an image at "fit" shows that point at 100 %% in every panel.
  $('detail-panels').addEventListener('click', (e) => {
    const img = e.target.closest('img'); if (!img || zoom > 0) return;
    const fx = e.offsetX / img.clientWidth, fy = e.offsetY / img.clientHeight;
    setZoom(1);
    $('detail-panels').querySelectorAll('.scroll').forEach((s) => {
      const im = s.querySelector('img'); if (!im) return;
      s.scrollLeft = fx * im.naturalWidth - s.clientWidth / 2; s.scrollTop = fy * im.naturalHeight - s.clientHeight / 2;
    });
  });
  $('detail-panels').addEventListener('scroll', (e) => {
    if (syncing || !e.target.classList || !e.target.classList.contains('scroll')) return;
    syncing = true;
    $('detail-panels').querySelectorAll('.scroll').forEach((s) => {
      if (s !== e.target) { s.scrollLeft = e.target.scrollLeft; s.scrollTop = e.target.scrollTop; } });
    syncing = false;
  }, true);
  document.addEventListener('keydown', (e) => {
    if (!current || e.target.tagName === 'INPUT') return;
    if (e.key === 'Escape') close();
    else if (e.key === 'ArrowLeft') step(-1);
    else if (e.key === 'ArrowRight') step(1);
    else if (e.key === '+' || e.key === '=') setZoom(Math.min(4, zoom ? zoom * 2 : 1));
    else if (e.key === '-') setZoom(zoom > 1 ? zoom / 2 : 0);
  });
  apply();
  // #row=N opens row N: on load (a link to one row) and from the page's own links (the grids, failed rows)
  const fromHash = () => { const m = /^#row=(\\d+)$/.exec(location.hash); if (m) open(m[1]); };
  window.addEventListener('hashchange', fromHash);
  fromHash();
})();
""" % PAGE


def script_hash() -> str:
    """The CSP source that allows the row table's script and nothing else."""
    import base64
    import hashlib

    return "'sha256-" + base64.b64encode(hashlib.sha256(SCRIPT.encode()).digest()).decode() + "'"
