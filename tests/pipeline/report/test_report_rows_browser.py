"""The report's row table in a real browser (Debian's chromium through chromium-driver and Selenium): sorting
by fMSE puts the worst row first, a status filter hides the other rows, the id search finds a row, paging
walks a 10,000-row report. Skipped where chromium, chromedriver or selenium is missing."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.report.html import REPORT_FILE, render_html, write_report
from pipelines.report.summary import build_summary
from tests.unit.pipelines.report.test_report import make_report_prefix

webdriver = pytest.importorskip("selenium.webdriver")
DRIVER = shutil.which("chromedriver")
pytestmark = pytest.mark.skipif(DRIVER is None or shutil.which("chromium") is None,
                                reason="chromium and chromium-driver are not installed")


@pytest.fixture(scope="module")
def browser():
    from selenium.webdriver.chrome.service import Service

    opts = webdriver.ChromeOptions()
    for a in ("--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage", "--window-size=1400,1000"):
        opts.add_argument(a)
    opts.binary_location = shutil.which("chromium")
    driver = webdriver.Chrome(service=Service(DRIVER), options=opts)
    yield driver
    driver.quit()


def ids(browser) -> list[str]:
    return [tr.find_elements("tag name", "td")[2].text for tr in browser.find_elements("css selector", "#table-rows tbody tr")]


def header(browser, column: str):
    return browser.find_element("css selector", f'#table-rows button.sort[data-col="{column}"]')


def test_sort_filter_and_search_the_rows(browser, tmp_path: Path):
    prefix = make_report_prefix(tmp_path)
    write_report(str(prefix))
    metrics = pd.read_parquet(prefix / "metrics" / "metrics.parquet")
    browser.get((prefix / REPORT_FILE).resolve().as_uri())
    assert len(ids(browser)) == len(metrics)  # every row, failed ones included
    header(browser, "fmse").click()
    worst = metrics.loc[metrics["fmse"].idxmax(), "id"]
    assert ids(browser)[0] == worst  # fMSE opens worst first
    header(browser, "fmse").click()
    assert ids(browser)[0] == metrics.loc[metrics["fmse"].idxmin(), "id"]

    from selenium.webdriver.support.ui import Select

    Select(browser.find_element("id", "rows-status")).select_by_value("failed")
    rows = browser.find_elements("css selector", "#table-rows tbody tr")
    assert rows and all(r.get_attribute("data-status") == "failed" for r in rows)
    assert len(rows) == (metrics["status"] == "failed").sum()
    Select(browser.find_element("id", "rows-status")).select_by_value("")
    browser.find_element("id", "rows-search").send_keys("img3")
    assert ids(browser) == ["img3"]


def test_a_10000_row_report_pages_and_sorts(browser, tmp_path: Path):
    rng = np.random.default_rng(0)
    n = 10_000
    df = pd.DataFrame({"id": [f"r{i:05d}" for i in range(n)], "row": range(n), "status": "ok",
                       "subset": rng.choice(["A", "B"], n), "fg_bucket": "5-15%", "fmse": rng.uniform(0, 3000, n),
                       "psnr": rng.uniform(20, 40, n), "mse": rng.uniform(0, 300, n), "engine": "baseline",
                       "error_type": None, "error_message": None, "output": None, "composite": "c", "mask": "m",
                       "real": "r", "fg_ratio": 0.1})
    df.loc[5, ["status", "error_type", "error_message"]] = ["failed", "corrupt", "truncated"]
    page = tmp_path / REPORT_FILE
    page.write_text(render_html(df, build_summary(df, 1.0, n - 1, {}), prefix=str(tmp_path)), encoding="utf-8")
    browser.get(page.resolve().as_uri())
    assert len(ids(browser)) == 100 and "of 100" in browser.find_element("id", "rows-page").text
    header(browser, "fmse").click()
    assert ids(browser)[0] == df.loc[df["fmse"].idxmax(), "id"]
    browser.find_element("id", "rows-next").click()
    assert "page 2 of 100" in browser.find_element("id", "rows-page").text
    assert browser.find_element("id", "rows-count").text == f"{n} of {n} rows"
