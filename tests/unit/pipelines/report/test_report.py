"""The report's pieces: SVG plots (NaN, inf, empty), escaping, worst/median/best selection, tables,
heat map, and a whole report written from a prefix (no Ray)."""

from __future__ import annotations

import base64
import io
import json
import math
import re
import xml.etree.ElementTree as ET
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.scenes import make_scene
from pipelines.report import svg as svg_plots
from pipelines.jobs.evaluate.config import EvaluateJobConfig
from pipelines.core.adapter import run_batch
from pipelines.jobs.evaluate.stage import EvaluateStage
from pipelines.report.rows import script_hash
from pipelines.report.html import (
    REPORT_FILE,
    heat_map,
    paper_table,
    render_html,
    select_cases,
    table_text,
    write_report,
)
from pipelines.report.summary import build_summary
from pipelines.io.tables import METRICS_FILE, SUMMARY_FILE, write_table_atomic
from schemas.metrics import COLUMNS, to_arrow

HOSTILE = '<img src=x onerror="alert(1)">&\'"'


def _svg(s: str) -> ET.Element:
    """Well-formed XML (so a browser's HTML parser has nothing to repair) without a script."""
    assert "<script" not in s.lower()
    return ET.fromstring(s)


# --- svg plots -----------------------------------------------------------------------------


@pytest.mark.parametrize("values", [[], [math.nan, math.inf, -math.inf], [None, "x"]])
def test_histogram_without_finite_values_says_no_data(values):
    root = _svg(svg_plots.histogram(values, title="PSNR", xlabel="dB"))
    text = " ".join(t.text or "" for t in root.iter("text"))
    assert "no data" in text and "n = 0" in text
    assert not list(root.iter("rect"))[1:]  # only the background


def test_histogram_drops_non_finite_and_counts_them():
    values = [30.0, 31.0, 31.5, math.nan, math.inf, 45.0]
    root = _svg(svg_plots.histogram(values, title="PSNR", xlabel="dB", bins=5))
    bars = list(root.iter("rect"))[1:]
    assert sum(int(b.find("title").text.rsplit(": ", 1)[1]) for b in bars) == 4
    assert "n = 4 (2 not finite, not shown)" in ET.tostring(root, encoding="unicode")


def test_histogram_of_one_repeated_value_and_log_axis():
    _svg(svg_plots.histogram([7.0] * 5, title="t", xlabel="x"))
    root = _svg(svg_plots.histogram([0.0, 10.0, 100.0, 1000.0], title="fMSE", xlabel="fMSE", log_x=True))
    s = ET.tostring(root, encoding="unicode")
    assert "n = 3 (1 not finite or &lt;= 0, not shown)" in s and "(log scale)" in s
    labels = {t.text for t in root.iter("text")}
    assert {"10", "100", "1000"} <= labels  # decade ticks on a log axis


def test_scatter_handles_nan_inf_labels_and_escapes():
    x = [0.1, 0.2, math.nan, 0.4, 0.5]
    y = [10.0, math.inf, 5.0, 0.0, 50.0]
    s = svg_plots.scatter(x, y, labels=["a", "b", "c", HOSTILE, "e"], title=f"t {HOSTILE}", xlabel="r", ylabel="f", log_y=True)
    root = _svg(s)
    assert len(list(root.iter("circle"))) == 2  # NaN x, inf y and y <= 0 on a log axis are left out
    assert "<img" not in s and "&lt;img src=x" in s
    s = svg_plots.scatter([1, 2], [3, 4], labels=[HOSTILE, "b"], title="t", xlabel="x", ylabel="y")
    assert "<img" not in s and "&lt;img src=x onerror=&quot;alert(1)&quot;&gt;" in s
    _svg(svg_plots.scatter([], [], title="t", xlabel="x", ylabel="y"))
    _svg(svg_plots.scatter([1.0, 1.0], [2.0, 2.0], title="t", xlabel="x", ylabel="y"))
    with pytest.raises(ValueError):
        svg_plots.scatter([1, 2], [1], title="t", xlabel="x", ylabel="y")


def test_ticks():
    assert svg_plots.nice_ticks(0, 1) == [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]
    assert svg_plots.nice_ticks(26, 41) == [30, 35, 40]
    assert svg_plots.nice_ticks(3, 3) == [3]
    assert svg_plots.nice_ticks(math.nan, 1) == []
    assert [round(10**t) for t in svg_plots.log_ticks(1.6, 2.9)] == [50, 100, 200, 500]
    assert [round(10**t) for t in svg_plots.log_ticks(0.2, 3.3)] == [10, 100, 1000]


# --- selection, tables -----------------------------------------------------------------------


def _rows(fmse: list[float], status: str = "ok") -> pd.DataFrame:
    return pd.DataFrame({"id": [f"r{i}" for i in range(len(fmse))], "row": range(len(fmse)), "status": status, "fmse": fmse})


def test_select_worst_median_best():
    df = _rows([5.0, 0.0, 9.0, 1.0, 8.0, 2.0, 7.0, 3.0, 6.0, 4.0])
    df = pd.concat([df, pd.DataFrame({"id": ["nan", "inf", "bad"], "row": [10, 11, 12], "status": ["ok", "ok", "failed"],
                                      "fmse": [math.nan, math.inf, 100.0]})], ignore_index=True)
    picked = {k: [int(v[1:]) if v.startswith("r") else v for v in part["id"]] for k, part in select_cases(df, 3).items()}
    fm = dict(zip(df["id"], df["fmse"]))
    as_fmse = {k: [fm[f"r{i}"] for i in ids] for k, ids in picked.items()}
    assert as_fmse == {"worst": [9.0, 8.0, 7.0], "median": [3.0, 4.0, 5.0], "best": [0.0, 1.0, 2.0]}


def test_select_few_rows_never_repeats_a_row():
    cases = select_cases(_rows([3.0, 1.0, 2.0, 4.0]), 3)
    ids = [i for part in cases.values() for i in part["id"]]
    assert len(ids) == len(set(ids)) == 4
    assert list(cases["worst"]["fmse"]) == [4.0, 3.0, 2.0] and list(cases["best"]["fmse"]) == [1.0]
    assert cases["median"].empty
    empty = select_cases(pd.DataFrame({"id": [], "row": [], "status": [], "fmse": []}))
    assert all(part.empty for part in empty.values())
    assert all(part.empty for part in select_cases(_rows([1.0, 2.0], status="failed")).values())


def test_paper_table_order_and_missing_values():
    block = lambda v: {"count": 2, "mse": v, "psnr": 30.0, "fmse": 10 * v, "composite_mse": 2 * v, "composite_psnr": 25.0,  # noqa: E731
                       "composite_fmse": None}
    metrics = {"all": block(1.0), "by_subset": {n: block(float(i)) for i, n in enumerate(["Zeta", "HFlickr", "HCOCO", "HAdobe5k"])},
               "by_fg_bucket": {"0-5%": block(3.0), "15-100%": block(4.0)}}
    t = paper_table(metrics)
    assert [r["name"] for r in t["rows"]] == ["HCOCO", "HAdobe5k", "HFlickr", "Zeta", "All"]
    assert [r["name"] for r in t["fg_buckets"]] == ["0-5%", "5-15%", "15-100%"]
    assert t["fg_buckets"][1]["count"] == 0 and t["fg_buckets"][1]["prediction"]["MSE"] is None
    assert t["rows"][0]["prediction"] == {"MSE": 2.0, "PSNR": 30.0, "fMSE": 20.0}
    assert t["rows"][0]["composite"]["fMSE"] is None and "compare" not in t["rows"][0]
    t2 = paper_table(metrics, {"all": block(0.5), "by_subset": {}})
    assert t2["rows"][-1]["compare"]["MSE"] == 0.5 and t2["rows"][0]["compare"]["MSE"] is None
    text = table_text(t2)
    assert "compare" in text and "—" in text and text.splitlines()[-4].startswith("All")


def test_tables_say_how_many_rows_a_mean_is_over_and_how_many_were_infinite():
    block = {"count": 4, "mse": 2.0, "mse_count": 2, "mse_infinite": 0, "psnr": None, "psnr_count": 0, "psnr_infinite": 2,
             "fmse": 8.0, "fmse_count": 2, "fmse_infinite": 0, "composite_mse": 3.0, "composite_mse_count": 4,
             "composite_psnr": 30.0, "composite_psnr_count": 3, "composite_psnr_infinite": 1}
    metrics = {"all": block, "by_subset": {"S": block}, "by_fg_bucket": {}}
    t = paper_table(metrics)
    r = t["rows"][-1]
    assert r["n"]["prediction"] == {"MSE": 2, "PSNR": 0, "fMSE": 2} and r["infinite"]["composite"]["PSNR"] == 1
    assert r["n"]["composite"]["fMSE"] is None  # a summary without the count: nothing claimed
    summary = {"metrics": metrics, "counts": {"ok": 4}, "rows": 4}
    html = render_html(pd.DataFrame({"id": [], "row": [], "status": [], "fmse": []}), summary, prefix="/out")
    cells = re.findall(r"<td>(.*?)</td>", html[html.index('id="table-subsets"'):html.index('id="table-buckets"')])
    assert cells[:7] == ["4", '2.00 <span class="n">(n=2)</span>', '— <span class="n">(n=0, +2 ∞)</span>',
                         '8.00 <span class="n">(n=2)</span>', "3.00", '30.00 <span class="n">(n=3, +1 ∞)</span>', "—"]
    assert '— <span class="n">(n=0, +2 ∞)</span>' in html[html.index('id="table-all-metrics"'):]
    # an old summary (no counts) renders as before
    old = {k: v for k, v in block.items() if not k.endswith(("_count", "_infinite"))}
    html = render_html(pd.DataFrame({"id": [], "row": [], "status": [], "fmse": []}),
                       {"metrics": {"all": old, "by_subset": {}, "by_fg_bucket": {}}}, prefix="/out")
    assert 'class="n"' not in html


def test_heat_map_scale_and_size():
    real = np.zeros((300, 600, 3), np.uint8)
    same = heat_map(real, real)
    assert same.size == (256, 128) and (np.asarray(same) == np.array([0, 0, 4])).all()  # no error: the map's start
    far = np.asarray(heat_map(np.full_like(real, 200), real))
    assert (far == np.array([252, 255, 164])).all()  # saturated at the scale's end


# --- html ------------------------------------------------------------------------------------


def _hostile_frame() -> pd.DataFrame:
    return pd.DataFrame({
        "id": [HOSTILE, "ok2", "broken"], "row": [0, 1, 2], "status": ["ok", "ok", "failed"],
        "error_type": [None, None, f"weird{HOSTILE}"], "error_message": [None, None, f"message {HOSTILE}"],
        "composite": ["/nonexistent/c.png"] * 3, "mask": ["/nonexistent/m.png"] * 3, "real": ["/nonexistent/r.png"] * 3,
        "subset": [f"S{HOSTILE}", "HCOCO", "HCOCO"], "output": ["/nonexistent/o.png", "/nonexistent/o2.png", None],
        "engine": ["evaluate"] * 3, "fg_bucket": ["5-15%", "0-5%", None], "fg_ratio": [0.1, 0.02, None],
        "mse": [10.0, 20.0, None], "psnr": [38.0, 35.0, None], "fmse": [100.0, math.inf, None],
    })


def test_render_escapes_every_text():
    df = _hostile_frame()
    summary = build_summary(df, 1.0, 2, {})
    summary["evaluation"] = {"predictions": f"/p/{HOSTILE}", "compare": None, "use_gt_bg": False}
    html = render_html(df, summary, prefix=f"/out/{HOSTILE}")
    assert "<img src=x" not in html and 'onerror="alert' not in html
    assert html.count("&lt;img src=x onerror=&quot;alert(1)&quot;&gt;&amp;&#x27;&quot;") >= 5
    # One script, the row table's, allowed by the page's CSP by its hash; its data is JSON without markup.
    assert html.lower().count("<script") == 2 and f"script-src {script_hash()}" in html
    assert 'type="application/json" id="rows-data"' in html
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)  # no external resources


def test_write_report_from_a_prefix(tmp_path: Path):
    prefix = make_report_prefix(tmp_path)
    uri = write_report(str(prefix))
    assert uri == str(prefix / REPORT_FILE)
    html = (prefix / REPORT_FILE).read_text()
    for h in ("Results by subset", "Results by foreground ratio", "Distributions", "Worst (highest fMSE)", "Median",
              "Best (lowest fMSE)", "Failed rows"):
        assert h in html
    assert html.count("<svg") == 3
    # grids: 5 images per shown row (the 6 scored rows), plus the failed rows' composites when readable
    assert html.count('src="data:image/') >= 6 * 5 + 1
    assert "cannot be read" in html  # the failed row whose composite is missing
    thumbs = re.findall(r'src="data:image/(?:jpeg|png);base64,([^"]+)"', html)
    assert max(Image.open(io.BytesIO(base64.b64decode(t))).size[0] for t in thumbs) <= 256
    assert not re.search(r"""(src|href)\s*=\s*["']?(https?:)?//""", html)


def test_a_run_without_any_ground_truth_still_gets_its_report(tmp_path: Path):
    """No-reference scoring is a result: rows without `real` are ok, and the report is written."""
    from pipelines.report.html import maybe_write_report

    prefix = make_report_prefix(tmp_path, ground_truth=False)
    metrics = pd.read_parquet(prefix / METRICS_FILE)
    assert (metrics["status"] == "ok").sum() == 6 and metrics["psnr"].isna().all() and metrics["delta_e_fg"].notna().sum() == 6
    summary = json.loads((prefix / SUMMARY_FILE).read_text())
    assert summary["table"]["rows"][-1]["n"]["prediction"]["MSE"] == 0  # no mean claimed over ground truth
    uri = maybe_write_report(str(prefix), {}, metrics, summary, echo=lambda *a, **k: None)
    assert uri == str(prefix / REPORT_FILE) and "Foreground change" in (prefix / REPORT_FILE).read_text()


# --- a small evaluate output, built without Ray (shared with the browser test) ----------------


def _scene(seed: int, ratio: float = 0.2, size: tuple[int, int] = (90, 120)):
    return make_scene(seed, h=size[0], w=size[1], ratio=ratio)


def make_report_prefix(root: Path, size: tuple[int, int] = (90, 120), ground_truth: bool = True) -> Path:
    """An evaluate output prefix (metrics, summary) for 6 scored rows in the four iHarmony4 subsets
    plus two failed rows, scored by the evaluate stage itself, in-process (images of `size`, height and width)."""
    data, prefix = root / "data", root / "out"
    data.mkdir(parents=True)
    rows = []
    for k, subset in enumerate(("HCOCO", "HAdobe5k", "HFlickr", "Hday2night", "HCOCO", "HAdobe5k")):
        comp, mask, real = _scene(k, ratio=(0.03, 0.1, 0.3, 0.5, 0.2, 0.08)[k], size=size)
        w = k / 6
        pred = np.clip(comp * (1 - w) + real.astype(np.float64) * w, 0, 255).astype(np.uint8)
        for name, arr in (("comp", comp), ("mask", mask), ("real", real), ("pred", pred)):
            Image.fromarray(arr).save(data / f"{name}{k}.png")
        rows.append(dict(id=f"img{k}", composite=str(data / f"comp{k}.png"), mask=str(data / f"mask{k}.png"),
                         real=str(data / f"real{k}.png"), output=str(data / f"pred{k}.png"), subset=subset))
    rows.append(dict(id="nopred", composite=str(data / "comp0.png"), mask=str(data / "mask0.png"),
                     real=str(data / "real0.png"), output=None, subset="HCOCO"))
    rows.append(dict(id="gone", composite=str(data / "missing.png"), mask=str(data / "mask0.png"),
                     real=str(data / "real0.png"), output=str(data / "pred0.png"), subset="HCOCO"))
    df = pd.DataFrame(rows)
    if not ground_truth:
        df["real"] = None
    df.insert(1, "row", range(len(df)))
    df["status"], df["error_type"], df["error_message"] = "pending", None, None
    df.loc[6, ["status", "error_type", "error_message"]] = ["failed", "missing_prediction", "no prediction for nopred"]
    cfg = EvaluateJobConfig(manifest="unused.csv", predictions=str(data), output=str(prefix))
    job = {"engine": "evaluate", "model": str(data), "config_key": "k", "steps": None, "scheduler": "none",
           "resolution_mode": "none"}
    table = run_batch([EvaluateStage.for_job(cfg, job)], df, keep=COLUMNS, finalize=to_arrow)
    metrics = table.to_pandas()
    write_table_atomic(to_arrow(metrics), str(prefix / METRICS_FILE), {})
    summary = build_summary(metrics, 1.0, int((metrics["status"] == "ok").sum()), {})
    summary["table"] = paper_table(summary["metrics"])
    (prefix / SUMMARY_FILE).write_text(json.dumps(summary))
    return prefix
