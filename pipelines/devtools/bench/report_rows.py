"""The report's row table at scale: report.html's size and its first contentful paint in headless chromium for
N-row runs (synthetic metrics; the review images named, not written). Needs chromium, chromium-driver and selenium (the test extra).

    python -m pipelines.devtools.bench.report_rows 1000 10000
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

import numpy as np
import pandas as pd


def synthetic(n: int) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame({"id": [f"r{i:06d}" for i in range(n)], "row": range(n), "status": "ok",
                         "subset": rng.choice(["HCOCO", "HAdobe5k", "HFlickr", "Hday2night"], n),
                         "fg_bucket": rng.choice(["0-5%", "5-15%", "15-100%"], n), "fmse": rng.uniform(0, 3000, n),
                         "psnr": rng.uniform(20, 40, n), "mse": rng.uniform(0, 300, n), "delta_e_fg": rng.uniform(0, 30, n),
                         "engine": "baseline", "error_type": None, "error_message": None, "output": None,
                         "composite": "c.png", "mask": "m.png", "real": "r.png", "fg_ratio": 0.1,
                         "width": 1024, "height": 768, "notes": None,
                         "review": "composite.jpg,mask.png,difference.png,thumb.jpg,real.jpg"})


# In the page: a click on `selector`, then the time until the frame after it is drawn (the handler, layout and
# paint; no WebDriver round trip in it, which on this machine is 200-400 ms of its own).
NEXT_FRAME = """
const done = arguments[arguments.length - 1], t = performance.now();
document.querySelector(arguments[0]).click();
requestAnimationFrame(() => requestAnimationFrame(() => done(performance.now() - t)));
"""


def measure(n: int, folder: Path) -> dict:
    from pipelines.report.browser import headless_chromium
    from pipelines.report.html import render_html
    from pipelines.report.summary import build_summary

    df = synthetic(n)
    page = folder / f"report-{n}.html"
    page.write_text(render_html(df, build_summary(df, 1.0, n, {}), prefix=str(folder)), encoding="utf-8")
    with headless_chromium(1400, 1000) as driver:
        driver.get(page.resolve().as_uri())
        paint = driver.execute_script(
            "const e = performance.getEntriesByName('first-contentful-paint')[0]; return e ? e.startTime : null;")
        sort_ms = driver.execute_async_script(NEXT_FRAME, "#table-rows button.sort[data-col=fmse]")
        open_ms = driver.execute_async_script(NEXT_FRAME, "#table-rows tbody tr button.open")
        if not driver.find_element("id", "detail").is_displayed():
            raise RuntimeError("the row's detail view did not open")
    return {"rows": n, "bytes": page.stat().st_size, "first_contentful_paint_ms": paint, "sort_click_ms": sort_ms,
            "open_row_ms": open_ms}


def main(argv: list[str]) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        print("| rows | report.html | first contentful paint | sort by fMSE (click to redraw) | open a row |")
        print("|---:|---:|---:|---:|---:|")
        for n in [int(a) for a in argv] or [1000, 10000]:
            m = measure(n, Path(tmp))
            print(f"| {n} | {m['bytes'] / 1e6:.2f} MB | {m['first_contentful_paint_ms']:.0f} ms | {m['sort_click_ms']:.0f} ms | {m['open_row_ms']:.0f} ms |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
