"""report.html in a real headless browser (Debian's chromium): it renders (a non-blank screenshot)
and the rendered DOM holds the expected tables. Skipped where no chromium is installed."""

from __future__ import annotations

import shutil
import subprocess
from html.parser import HTMLParser
from pathlib import Path

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
