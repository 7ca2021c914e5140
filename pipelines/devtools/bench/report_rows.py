"""The report's row table at scale: report.html's size and its first contentful paint in headless chromium for
N-row runs (synthetic metrics, no thumbnails). Needs chromium, chromium-driver and selenium (the test extra).

    python -m pipelines.devtools.bench.report_rows 1000 10000
"""

from __future__ import annotations

import shutil
import sys
import tempfile
import time
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
                         "composite": "c.png", "mask": "m.png", "real": "r.png", "fg_ratio": 0.1})


def measure(n: int, folder: Path) -> dict:
    from selenium import webdriver
    from selenium.webdriver.chrome.service import Service

    from pipelines.report.html import render_html
    from pipelines.report.summary import build_summary

    df = synthetic(n)
    page = folder / f"report-{n}.html"
    page.write_text(render_html(df, build_summary(df, 1.0, n, {}), prefix=str(folder)), encoding="utf-8")
    opts = webdriver.ChromeOptions()
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        opts.add_argument(a)
    opts.binary_location = shutil.which("chromium")
    driver = webdriver.Chrome(service=Service(shutil.which("chromedriver")), options=opts)
    try:
        driver.get(page.resolve().as_uri())
        paint = driver.execute_script(
            "const e = performance.getEntriesByName('first-contentful-paint')[0]; return e ? e.startTime : null;")
        button = driver.find_element("css selector", '#table-rows button.sort[data-col="fmse"]')
        t = time.perf_counter()
        button.click()
        driver.find_element("css selector", "#table-rows tbody tr")
        sort_ms = (time.perf_counter() - t) * 1000
    finally:
        driver.quit()
    return {"rows": n, "bytes": page.stat().st_size, "first_contentful_paint_ms": paint, "sort_click_ms": sort_ms}


def main(argv: list[str]) -> int:
    with tempfile.TemporaryDirectory() as tmp:
        print("| rows | report.html | first contentful paint | sort by fMSE (click to redraw) |")
        print("|---:|---:|---:|---:|")
        for n in [int(a) for a in argv] or [1000, 10000]:
            m = measure(n, Path(tmp))
            print(f"| {n} | {m['bytes'] / 1e6:.2f} MB | {m['first_contentful_paint_ms']:.0f} ms | {m['sort_click_ms']:.0f} ms |")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
