"""The report's row table in a real browser (Debian's chromium through chromium-driver and Selenium): sorting
by fMSE puts the worst row first, a status filter hides the other rows, the id search finds a row, paging
walks a 10,000-row report. Skipped where chromium, chromedriver or selenium is missing."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from pipelines.report.html import REPORT_FILE, render_html, write_report
from pipelines.report.summary import build_summary
from tests.unit.pipelines.report.test_report import make_report_prefix

from pipelines.report.browser import headless_chromium, missing

pytestmark = pytest.mark.skipif(missing() is not None, reason=f"no headless chromium: {missing()}")


@pytest.fixture(scope="module")
def browser():
    with headless_chromium(1400, 1000) as driver:
        yield driver


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


def panels(browser) -> dict:
    """{caption: the panel's <img>} of the open detail view."""
    return {p.find_element("tag name", "figcaption").text: p.find_element("tag name", "img")
            for p in browser.find_elements("css selector", "#detail-panels figure")}


def test_a_row_opens_at_full_resolution_with_zoom_and_steps_to_the_next(browser, tmp_path: Path):
    prefix = make_report_prefix(tmp_path, size=(90, 120))
    write_report(str(prefix))
    metrics = pd.read_parquet(prefix / "metrics" / "metrics.parquet").set_index("id")
    browser.get((prefix / REPORT_FILE).resolve().as_uri())
    assert not browser.find_element("id", "detail").is_displayed()
    header(browser, "fmse").click()  # worst first: the view steps through the table's order
    order = ids(browser)
    browser.find_element("css selector", "#table-rows tbody tr button.open").click()
    assert browser.find_element("id", "detail").is_displayed()
    assert browser.find_element("id", "detail-title").text == order[0]
    shown = panels(browser)
    assert list(shown) == ["composite", "harmonized", "ground truth", "mask", "difference to ground truth"]
    width = int(metrics.loc[order[0], "width"])
    for label, img in shown.items():  # every image decoded at the row's own size
        assert browser.execute_script("return arguments[0].naturalWidth", img) == width, label
    assert browser.current_url.endswith(f"#row={int(metrics.loc[order[0], 'row'])}")
    browser.find_element("css selector", '.detail-zoom button[data-zoom="4"]').click()
    assert shown["mask"].size["width"] == 4 * width  # 400 %: drawn at four times its pixels
    browser.find_element("id", "detail-next").click()
    assert browser.find_element("id", "detail-title").text == order[1]
    browser.find_element("tag name", "body").send_keys("\ue00c")  # Escape
    assert not browser.find_element("id", "detail").is_displayed()
    link = browser.find_element("css selector", "#grid-best a")  # the grids' ids open their rows too
    link.click()
    assert browser.find_element("id", "detail-title").text == link.text
    browser.find_element("id", "detail-close").click()
    # A failed row opens with its reason and no images.
    browser.find_element("id", "rows-search").send_keys("nopred")
    browser.find_element("css selector", "#table-rows tbody tr button.open").click()
    assert browser.find_element("id", "detail-title").text == "nopred"
    assert "missing_prediction" in browser.find_element("id", "detail-note").text and not panels(browser)


def test_a_row_without_ground_truth_shows_what_the_model_changed(browser, tmp_path: Path):
    prefix = make_report_prefix(tmp_path, ground_truth=False)
    write_report(str(prefix))
    browser.get((prefix / REPORT_FILE).resolve().as_uri() + "#row=2")  # a link straight to one row
    assert browser.find_element("id", "detail-title").text == "img2"
    assert list(panels(browser)) == ["composite", "harmonized", "mask", "change from composite"]


def test_harmony_report_saves_screenshots_of_the_table_and_of_a_row(tmp_path: Path, monkeypatch):
    from PIL import Image

    from pipelines.cli.main import main as cli_main

    make_report_prefix(tmp_path)
    monkeypatch.chdir(tmp_path)  # relative paths, as the README shows the command
    assert cli_main(["report", "out", "--screenshot", "shots/rows.png"]) == 0
    assert cli_main(["report", "out", "--screenshot", "shots/row.jpg", "--row", "2"]) == 0
    for name, light in (("rows.png", True), ("row.jpg", False)):
        img = np.asarray(Image.open(tmp_path / "shots" / name).convert("RGB"))
        assert img.shape == (1000, 1400, 3)
        assert (img.mean() > 150) == light  # the light page, or the dark detail view over it
        assert len(np.unique(img.reshape(-1, 3), axis=0)) > 200  # photographs and text drawn, not a blank page
    assert cli_main(["report", "out", "--screenshot", "shots/none.png", "--row", "99"]) == 2
