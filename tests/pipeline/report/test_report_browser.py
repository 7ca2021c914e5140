"""report.html in a real headless browser (Debian's chromium): it renders (a non-blank screenshot)
and the rendered DOM holds the expected tables; and what a person sees at common window widths
(1400 and 1024 px): every table and image grid laid out and visible, its text and thumbnails drawn
(pixels in its box), nothing wider than the window, thumbnails scaled down to fit. Skipped where
no chromium is installed."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import subprocess
from html import unescape
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from pipelines.report.html import REPORT_FILE, write_report
from tests.unit.pipelines.report.test_report import make_report_prefix

CHROMIUM = shutil.which("chromium")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")


def _chromium(tmp: Path, profile: str, *args: str) -> subprocess.CompletedProcess:
    cmd = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--no-first-run",
           "--disable-background-networking", "--disable-component-update", "--disable-sync",
           f"--user-data-dir={tmp / profile}", *args]
    return subprocess.run(cmd, capture_output=True, text=True, timeout=120)


class _Dom(HTMLParser):
    """Headings, and the row headers of each table by id."""

    def __init__(self):
        super().__init__()
        self.headings: list[str] = []
        self.row_heads: dict[str, list[str]] = {}
        self.counts: dict[str, int] = {}
        self._table: str | None = None
        self._in: str | None = None
        self._text = ""

    def handle_starttag(self, tag, attrs):
        a = dict(attrs)
        self.counts[tag] = self.counts.get(tag, 0) + 1
        if tag == "table":
            self._table = a.get("id")
        if tag in ("h1", "h2", "h3") or (tag == "th" and a.get("scope") == "row"):
            self._in, self._text = tag, ""

    def handle_endtag(self, tag):
        if tag == "table":
            self._table = None
        if self._in == tag:
            if tag == "th":
                self.row_heads.setdefault(self._table or "", []).append(self._text.strip())
            else:
                self.headings.append(self._text.strip())
            self._in = None

    def handle_data(self, data):
        if self._in:
            self._text += data


def test_report_renders_in_headless_chromium(tmp_path: Path):
    prefix = make_report_prefix(tmp_path)
    write_report(str(prefix))
    url = (prefix / REPORT_FILE).resolve().as_uri()

    shot = tmp_path / "shot.png"
    r = _chromium(tmp_path, "profile-shot", f"--screenshot={shot}", "--window-size=1280,2000", url)
    assert shot.exists(), r.stderr[-2000:]
    img = Image.open(shot).convert("RGB")
    assert img.size == (1280, 2000)
    colours = img.getcolors(maxcolors=1 << 22)
    assert colours is not None and len(colours) > 200  # tables, plots and photo thumbnails, not a blank page
    background = max(colours)[0] / (img.width * img.height)
    assert background < 0.9

    r = _chromium(tmp_path, "profile-dom", "--dump-dom", url)
    assert r.returncode == 0, r.stderr[-2000:]
    dom = _Dom()
    dom.feed(r.stdout)
    for h in ("Harmonization report", "Results by subset", "Results by foreground ratio", "Distributions",
              "Examples by fMSE", "Worst (highest fMSE)", "Median", "Best (lowest fMSE)", "Failed rows"):
        assert h in dom.headings, (h, dom.headings)
    assert dom.row_heads["table-subsets"] == ["HCOCO", "HAdobe5k", "HFlickr", "Hday2night", "All"]
    assert dom.row_heads["table-buckets"] == ["0-5%", "5-15%", "15-100%"]
    assert "MSE" in dom.row_heads["table-all-metrics"]
    assert any(h.startswith("missing_prediction") for h in dom.headings)
    assert dom.counts.get("svg") == 3 and dom.counts.get("img", 0) >= 30


# --- what a person sees: rendered boxes, visible text and pixels, at common window widths ------

# Appended to a copy of report.html (without its CSP, which allows only its own script): once the page has loaded,
# serialise the laid-out page (boxes in page coordinates, what is visible, visible text) into a
# hidden <pre id="measure">, which --dump-dom returns. The scroll bar is forced so that a window as
# tall as the page (for the screenshot) lays out exactly like a short one that scrolls.
MEASURE = """<style>html{overflow-y:scroll}</style><script>
addEventListener('load', () => {
  const de = document.documentElement;
  const vis = e => e.checkVisibility({checkOpacity: true, checkVisibilityCSS: true});
  const box = e => { const b = e.getBoundingClientRect(); return [b.left + scrollX, b.top + scrollY, b.width, b.height]; };
  const m = {
    innerWidth, clientWidth: de.clientWidth, scrollWidth: de.scrollWidth, scrollHeight: de.scrollHeight,
    headings: [...document.querySelectorAll('h1,h2,h3')].filter(vis).map(h => h.innerText.trim()),
    text: document.body.innerText,
    tables: [...document.querySelectorAll('table')].map(t => ({
      id: t.id, cls: t.className, visible: vis(t), box: box(t),
      rowHeads: [...t.querySelectorAll('th[scope=row]')].filter(vis).map(th => th.innerText.trim()),
      imgs: [...t.querySelectorAll('img')].map(i => ({visible: vis(i), box: box(i), cell: box(i.closest('td')),
                                                     natural: [i.naturalWidth, i.naturalHeight]})),
    })),
  };
  const pre = document.createElement('pre');
  pre.id = 'measure';
  pre.hidden = true;
  pre.textContent = JSON.stringify(m);
  document.body.appendChild(pre);
});
</script>"""
TALL = 6000  # window height for the measured page: taller than the report, so one screenshot holds it all


def _measure(tmp: Path, page: Path, width: int) -> dict:
    r = _chromium(tmp, f"profile-measure-{width}", f"--window-size={width},{TALL}", "--virtual-time-budget=10000",
                  "--dump-dom", page.as_uri())
    found = re.search(r'<pre id="measure"[^>]*>(.*?)</pre>', r.stdout, re.S)
    assert found, (r.returncode, r.stderr[-2000:])
    return json.loads(unescape(found.group(1)))


def _crop(shot: Image.Image, box, inset: int = 0) -> Image.Image:
    x, y, w, h = box
    return shot.crop((round(x) + inset, round(y) + inset, round(x + w) - inset, round(y + h) - inset))


def _grid_sources(page: str) -> list[Image.Image]:
    """The thumbnails of the image grids, in document order."""
    grids = re.findall(r'<table class="grid".*?</table>', page, re.S)
    uris = [u for g in grids for u in re.findall(r'<img src="data:image/\w+;base64,([^"]+)"', g)]
    return [Image.open(io.BytesIO(base64.b64decode(u))).convert("RGB") for u in uris]


@pytest.mark.parametrize("width", [1400, 1024])
def test_report_is_visible_and_fits_the_window(tmp_path: Path, width: int):
    # Photos larger than a thumbnail, so the grids hold full 256 px thumbnails (5 per row).
    prefix = make_report_prefix(tmp_path, size=(300, 400))
    write_report(str(prefix))
    html = (prefix / REPORT_FILE).read_text(encoding="utf-8")
    page = tmp_path / "measured.html"
    # The measuring script is the test's, not the report's: the copy drops the report's CSP, which allows
    # only the report's own script.
    html = re.sub(r'<meta http-equiv="Content-Security-Policy"[^>]*>', "", html)
    page.write_text(html.replace("</body>", MEASURE + "</body>"), encoding="utf-8")

    m = _measure(tmp_path, page, width)
    assert m["innerWidth"] == width and m["scrollHeight"] <= TALL, {k: m[k] for k in ("innerWidth", "scrollHeight")}
    view = m["clientWidth"]  # the window less its vertical scroll bar
    assert m["scrollWidth"] <= view, f"the page scrolls sideways at {width} px: {m['scrollWidth']} > {view}"

    for h in ("Harmonization report", "Results by subset", "Results by foreground ratio", "Distributions",
              "Examples by fMSE", "Worst (highest fMSE)", "Best (lowest fMSE)", "Failed rows"):
        assert h in m["headings"] and h in m["text"], (h, m["headings"])
    tables = {t["id"]: t for t in m["tables"] if t["id"]}
    assert set(tables) >= {"table-subsets", "table-buckets", "table-all-metrics", "table-errors",
                           "grid-worst", "grid-best"}, sorted(tables)
    failed = [t for t in m["tables"] if t["cls"] == "failed"]
    assert len(failed) == 2
    for t in list(tables.values()) + failed:
        x, y, w, h = t["box"]
        assert t["visible"] and w > 50 and h > 20, t  # laid out, not hidden
        assert x >= 0 and x + w <= view + 0.5, f"{t['id'] or t['cls']} overflows the window: {t['box']} > {view}"
    assert tables["table-subsets"]["rowHeads"] == ["HCOCO", "HAdobe5k", "HFlickr", "Hday2night", "All"]
    assert tables["table-buckets"]["rowHeads"] == ["0-5%", "5-15%", "15-100%"]
    assert "MSE" in tables["table-all-metrics"]["rowHeads"]
    for text in ("HCOCO", "Hday2night", "15-100%", "missing_prediction", "img0"):
        assert text in m["text"], text

    # image grids: 3 rows x 5 thumbnails each, every one drawn inside its cell, scaled down (never up)
    # to fit, its aspect ratio kept
    imgs = [i for g in ("grid-worst", "grid-best") for i in tables[g]["imgs"]]
    assert len(imgs) == 30
    for i in imgs:
        (x, _y, w, h), (cx, _cy, cw, _ch), (nw, nh) = i["box"], i["cell"], i["natural"]
        assert i["visible"] and nw == 256 and nh > 0, i
        assert 100 <= w <= nw + 0.5 and abs(w / h - nw / nh) < 0.02, i
        assert cx - 0.5 <= x and x + w <= cx + cw + 0.5 and x + w <= view + 0.5, i
    if width < 1400:
        assert all(i["box"][2] < i["natural"][0] for i in imgs), "thumbnails not scaled down to fit"

    # pixels: a screenshot of the same layout shows the tables' text and each grid thumbnail
    shot_path = tmp_path / f"shot-{width}.png"
    r = _chromium(tmp_path, f"profile-shot-{width}", f"--window-size={width},{TALL}", "--virtual-time-budget=10000",
                  f"--screenshot={shot_path}", page.as_uri())
    assert shot_path.exists(), r.stderr[-2000:]
    shot = Image.open(shot_path).convert("RGB")
    assert shot.size == (width, TALL)
    for t in list(tables.values()) + failed:
        if t["cls"] == "grid":
            continue
        grey = np.asarray(_crop(shot, t["box"]).convert("L"))
        ink = float((grey < 110).mean())  # dark text (#222) on white and pale cells
        assert ink > 0.01, (t["id"] or t["cls"], ink)
    sources = _grid_sources(html)
    assert len(sources) == len(imgs)
    for i, src in zip(imgs, sources):
        seen = np.asarray(_crop(shot, i["box"]), dtype=np.float64)
        want = np.asarray(src.resize((seen.shape[1], seen.shape[0]), Image.Resampling.BILINEAR), dtype=np.float64)
        assert np.abs(seen - want).mean() < 12, (i["box"], np.abs(seen - want).mean())
