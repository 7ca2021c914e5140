"""`harmony evaluate` on local Ray: naming styles, bad inputs, parity with the reference evaluation
script's transcription (tests/unit/harmony_ops/test_metrics.py) with and without the ground-truth-background
paste, the paper-layout summary, --compare deltas, the report, and S3 through storage options."""

from __future__ import annotations

import io
import json
import os
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image, ImageFilter

from pipelines.cli import main as cli_main
from pipelines.config import ModelConfig, PoolConfig, PoolsConfig
from pipelines.jobs.evaluate.config import EvaluateJobConfig
from pipelines.jobs.harmonize.config import HarmonizeJobConfig
from pipelines.errors import JobError
from pipelines.jobs.evaluate.job import candidate_names, list_predictions, match_prediction, run_evaluate
from pipelines.jobs.harmonize.job import run_harmonize
from pipelines.io.storage import filesystem
from schemas.metrics import COMPARE_METRICS, Metrics
from tests.conftest import upload_dir
from tests.pipeline.conftest import enc, make_scene
from tests.pipeline.stores import STORES, make_store
from tests.unit.harmony_ops.test_metrics import _reference

pytestmark = pytest.mark.pipeline

SUBSETS = ("HCOCO", "HAdobe5k", "HFlickr", "HCOCO", "Hday2night")
POOL = PoolConfig(num_cpus=0.5, num_gpus=0, batch_size=4, max_workers=2)
# id -> expected (status, error_type) for the rows that do not score
BAD = {"nopred": "missing_prediction", "corrupt": "corrupt", "bad/id": "invalid_row"}
# rows without ground truth are scored with the no-reference metrics: ok, reference metrics null
NO_REFERENCE = ("noreal",)


def quiet(*a, **k):
    pass


def _prediction(comp: np.ndarray, real: np.ndarray, k: int) -> np.ndarray:
    """Halfway between composite and ground truth, plus noise: a plausible harmonization."""
    rng = np.random.default_rng(100 + k)
    p = (comp.astype(np.float64) + real) / 2 + rng.normal(0, 3, comp.shape)
    return np.clip(p, 0, 255).astype(np.uint8)


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("evaluate")
    for d in ("comp", "mask", "real", "preds", "other", "run/images"):
        (root / d).mkdir(parents=True)
    rows, files = [], {}
    for k, subset in enumerate(SUBSETS):
        comp, mask, real = make_scene(k, ratio=(0.03, 0.1, 0.3, 0.5, 0.2)[k])
        if k == 3:  # a soft (antialiased) mask: the protocol dithers it, as the reference does
            mask = np.asarray(Image.fromarray(mask).filter(ImageFilter.GaussianBlur(2)))
        stem = f"c{k}_1_1"
        Image.fromarray(comp).save(root / f"comp/{stem}.jpg", quality=90)
        Image.fromarray(mask).save(root / f"mask/c{k}_1.png")
        Image.fromarray(real).save(root / f"real/c{k}.png")
        pred = _prediction(comp, real, k)
        # both naming styles: <id>.<ext> (png, jpg, webp) and the reference's <composite stem>.png
        name = {0: "s0.png", 1: "s1.jpg", 2: f"{stem}.png", 3: "s3.webp", 4: "s4.png"}[k]
        Image.fromarray(pred).save(root / "preds" / name, **({"quality": 92} if name.endswith(".jpg") else {}))
        if k < 4:  # the compare method: the untouched composite (do nothing), missing for s4
            comp_decoded = np.asarray(Image.open(root / f"comp/{stem}.jpg").convert("RGB"))
            Image.fromarray(comp_decoded).save(root / f"other/s{k}.png")
        rows.append(dict(id=f"s{k}", composite=f"comp/{stem}.jpg", mask=f"mask/c{k}_1.png", real=f"real/c{k}.png",
                         subset=subset))
        files[f"s{k}"] = dict(pred=root / "preds" / name, comp=root / f"comp/{stem}.jpg", mask=root / f"mask/c{k}_1.png",
                              real=root / f"real/c{k}.png")
    comp, mask, real = make_scene(9)
    (root / "comp/x.png").write_bytes(enc(comp))
    (root / "mask/x.png").write_bytes(enc(mask))
    (root / "real/x.png").write_bytes(enc(real))
    jpg = enc(comp, "JPEG")
    (root / "comp/truncated.jpg").write_bytes(jpg[: len(jpg) // 2])
    (root / "preds/wrongsize.png").write_bytes(enc(real[:, :-8]))
    (root / "preds/corrupt.png").write_bytes(enc(real))
    (root / "preds/noreal.png").write_bytes(enc(real))
    (root / "preds/notes.txt").write_text("not an image: never listed as a prediction")
    for i, c in (("nopred", "comp/x.png"), ("wrongsize", "comp/x.png"), ("corrupt", "comp/truncated.jpg"),
                 ("noreal", "comp/x.png"), ("bad/id", "comp/x.png")):
        rows.append(dict(id=i, composite=c, mask="mask/x.png", real=None if i == "noreal" else "real/x.png", subset="HCOCO"))
    # another size than the ground truth (like the reference script's 256 px outputs): scored as the reference does
    files["wrongsize"] = dict(pred=root / "preds/wrongsize.png", comp=root / "comp/x.png", mask=root / "mask/x.png",
                              real=root / "real/x.png")
    manifest = pd.DataFrame(rows)
    manifest.to_csv(root / "manifest.csv", index=False)
    for p in (root / "preds").iterdir():  # a harmonize output prefix: predictions under images/
        shutil.copy(p, root / "run/images" / p.name)
    return {"root": root, "manifest": manifest, "files": files}


def _check_rows(m: pd.DataFrame, manifest: pd.DataFrame) -> None:
    assert list(m["row"]) == list(range(len(manifest))) and list(m["id"]) == list(manifest["id"])
    Metrics.validate(m)
    for _, r in m.iterrows():
        if r["id"] in BAD:
            assert r["status"] in ("failed", "invalid") and r["error_type"] == BAD[r["id"]], (r["id"], r["error_type"])
            assert r["error_message"]
        else:
            assert r["status"] == "ok", (r["id"], r["error_type"], r["error_message"])
    assert (m["engine"] == "evaluate").all()
    assert "mask_binarized" in m.set_index("id").at["s3", "notes"]


def _check_parity(m: pd.DataFrame, files: dict, use_gt_bg: bool) -> None:
    """Job output == the reference script's transcription on the same files, number for number."""
    for _, r in m[(m["status"] == "ok") & m["real"].notna()].iterrows():
        f = files[r["id"]]
        for prefix, path in (("", f["pred"]), ("composite_", f["comp"])):
            ref = _reference(path, f["real"], f["mask"], use_gt_bg)
            assert r[f"{prefix}mse"] == ref["mse"], (r["id"], prefix)
            assert r[f"{prefix}psnr"] == ref["psnr"], (r["id"], prefix)
            assert r[f"{prefix}fmse"] == ref["fmse"], (r["id"], prefix)
            assert r[f"{prefix}bmse"] == ref["bmse"], (r["id"], prefix)
            assert r[f"{prefix}ssim"] == pytest.approx(ref["ssim"], rel=0, abs=1e-9)
        assert r["fg_bucket"] == ref["fg_bucket"] and r["fg_ratio"] == pytest.approx(float(ref["fg_ratio"]), rel=1e-9)
        if use_gt_bg:
            assert r["bmse"] == 0.0
    assert ((m["status"] == "ok") & m["real"].notna()).sum() == 6
    for i in NO_REFERENCE:
        r = m.set_index("id").loc[i]
        assert r["status"] == "ok" and pd.isna(r["psnr"]) and pd.isna(r["composite_fmse"]) and pd.isna(r["error_type"])
        assert np.isfinite(r["delta_e_fg"]) and np.isfinite(r["fg_chroma_shift"]) and r["fg_bucket"]


def test_evaluate_folder_compare_summary_and_report(ray_local, data):
    root, manifest = data["root"], data["manifest"]
    out = root / "out-main"
    cfg = EvaluateJobConfig(manifest=str(root / "manifest.csv"), predictions=str(root / "preds"), output=str(out),
                            compare=str(root / "other"), pool=POOL, block_rows=4)
    result = run_evaluate(cfg, echo=quiet)
    m = result.metrics
    assert result.exit_code == 0
    _check_rows(m, manifest)
    _check_parity(m, data["files"], use_gt_bg=False)
    by_id = m.set_index("id")
    assert by_id.at["s1", "output"].endswith("/preds/s1.jpg")
    assert by_id.at["s2", "output"].endswith("/preds/c2_1_1.png")  # the reference's naming
    assert by_id.at["s3", "output"].endswith("/preds/s3.webp")
    assert pd.isna(by_id.at["nopred", "output"]) and "nopred.png" in by_id.at["nopred", "error_message"]
    assert by_id.at["wrongsize", "status"] == "ok" and "prediction_resized_from_88x72" in by_id.at["wrongsize", "notes"]
    assert np.isnan(by_id.at["wrongsize", "mse_full"]) and np.isfinite(by_id.at["wrongsize", "psnr"])

    # --compare: the compare method is the untouched composite, so its metrics are the composite's
    ok = m[m["status"] == "ok"].set_index("id")
    for i in ("s0", "s1", "s2", "s3"):
        for c in ("mse", "psnr", "fmse", "fpsnr", "bmse", "ssim"):
            assert ok.at[i, f"compare_{c}"] == ok.at[i, f"composite_{c}"], (i, c)
        assert ok.at[i, "delta_psnr"] == pytest.approx(ok.at[i, "compare_psnr"] - ok.at[i, "psnr"], abs=1e-12)
        assert ok.at[i, "delta_fmse"] == pytest.approx(ok.at[i, "compare_fmse"] - ok.at[i, "fmse"], abs=1e-9)
        assert ok.at[i, "delta_psnr"] < 0  # the prediction is closer to the ground truth than the composite
    assert ok.loc["s4", list(COMPARE_METRICS) + ["delta_psnr", "delta_fmse"]].isna().all()
    assert "compare_missing_prediction" in ok.at["s4", "notes"]

    # files: one consolidated table with the schema's types, no journal left
    table = pq.read_table(out / "metrics/metrics.parquet")
    assert table.num_rows == len(manifest)
    assert str(table.schema.field("compare_psnr").type) == "double"
    assert not (out / "_journal").exists()

    # summary.json: the paper's layout per subset, All and foreground bucket, prediction and composite
    s = json.loads((out / "summary.json").read_text())
    assert s["counts"] == {"ok": 7, "skipped": 0, "failed": 2, "invalid": 1}
    assert s["errors_by_type"] == {"missing_prediction": 1, "corrupt": 1, "invalid_row": 1}
    assert s["metrics"]["all"]["mse_count"] == 6 and s["metrics"]["all"]["delta_e_fg_count"] == 7
    assert set(s["metrics"]["by_subset"]) == {"HCOCO", "HAdobe5k", "HFlickr", "Hday2night"}
    assert set(s["metrics"]["by_fg_bucket"]) == {"0-5%", "5-15%", "15-100%"}
    t = s["table"]
    assert t["columns"] == ["MSE", "PSNR", "fMSE"]
    assert [r["name"] for r in t["rows"]] == ["HCOCO", "HAdobe5k", "HFlickr", "Hday2night", "All"]
    assert [r["name"] for r in t["fg_buckets"]] == ["0-5%", "5-15%", "15-100%"]
    all_row, coco = t["rows"][-1], t["rows"][0]
    assert all_row["count"] == 7 and coco["count"] == 4  # rows; the means' own counts (n) are the 6 and 3 with ground truth
    assert all_row["n"]["prediction"]["MSE"] == 6 and coco["n"]["prediction"]["MSE"] == 3
    assert all_row["prediction"]["MSE"] == pytest.approx(ok["mse"].mean(), rel=1e-12)
    assert all_row["composite"]["fMSE"] == pytest.approx(ok["composite_fmse"].mean(), rel=1e-12)
    assert coco["prediction"]["PSNR"] == pytest.approx(ok.loc[["s0", "s3", "wrongsize"], "psnr"].mean(), rel=1e-12)
    assert sum(r["count"] for r in t["fg_buckets"]) == 7
    # the compare method's aggregates, over the rows scored for both
    c = s["compare"]
    # s4 and wrongsize have no compare prediction; noreal has no ground truth to score it against
    assert c["rows"] == 4 and c["not_scored"] == 3 and c["predictions"].endswith("other")
    assert c["metrics"]["all"]["mse"] == pytest.approx(ok.loc[["s0", "s1", "s2", "s3"], "compare_mse"].mean(), rel=1e-12)
    assert all_row["compare"]["MSE"] == pytest.approx(c["metrics"]["all"]["mse"])
    assert c["delta"]["all"]["delta_psnr"] == pytest.approx(ok["delta_psnr"].mean(), rel=1e-12)
    assert s["evaluation"]["use_gt_bg"] is False

    html = (out / "report.html").read_text()
    assert "Results by subset" in html and "Hday2night" in html and "data:image/jpeg;base64," in html
    # no script but the row table's, allowed by the page's CSP by its hash (and its JSON data)
    from pipelines.report.rows import script_hash

    assert html.lower().count("<script") == 2 and f"script-src {script_hash()}" in html

    # each row's review images for the report's detail view, beside it: the prediction copied (it lies outside
    # the output prefix), the compare method's output where there is one, ground truth where there is one
    rows = by_id["review"].dropna().str.split(",")
    assert set(rows.index) == set(ok.index)  # every scored row, no failed one
    stems = rows.map(lambda names: {n.rsplit(".", 1)[0] for n in names})
    assert {"composite", "harmonized", "compare", "real", "mask", "difference", "thumb"} == stems["s1"]
    assert "real" not in stems["noreal"] and "compare" not in stems["s4"]
    assert "harmonized.jpg" in rows["s1"]  # its prediction is a JPEG: copied as it is
    for name in rows["s1"]:
        assert (out / "report_files" / "rows" / str(by_id.at["s1", "row"]) / name).stat().st_size > 0


def test_evaluate_use_gt_bg_from_a_harmonize_prefix_via_cli(ray_local, data):
    root, manifest = data["root"], data["manifest"]
    out = root / "out-gtbg"
    code = cli_main(["evaluate", "--manifest", str(root / "manifest.csv"), "--predictions", str(root / "run"),
                     "--output", str(out), "--use-gt-bg", "--no-report"])
    assert code == 0
    m = pq.read_table(out / "metrics/metrics.parquet").to_pandas()
    _check_rows(m, manifest)
    files = {i: {**f, "pred": root / "run/images" / f["pred"].name} for i, f in data["files"].items()}
    _check_parity(m, files, use_gt_bg=True)
    assert m.set_index("id").at["s0", "output"].endswith("/run/images/s0.png")
    assert "compare_mse" not in m.columns
    assert not (out / "report.html").exists()
    s = json.loads((out / "summary.json").read_text())
    assert s["evaluation"]["use_gt_bg"] is True and "compare" not in s

    assert cli_main(["report", str(out)]) == 0  # `harmony report PREFIX`
    html = (out / "report.html").read_text()
    assert "ground-truth background pasted" in html and "missing_prediction" in html


def test_evaluate_on_s3(ray_local, data, s3_bucket):
    bucket, opts = s3_bucket
    # Credentials as storage options: Ray workers started before the S3 fixture lack them in their environment.
    opts = {**opts, "key": os.environ["AWS_ACCESS_KEY_ID"], "secret": os.environ["AWS_SECRET_ACCESS_KEY"]}
    root = data["root"]
    keep = ["s0", "s2", "nopred"]
    manifest = data["manifest"].set_index("id").loc[keep].reset_index()
    staging = root / "s3-staging"
    for sub in ("comp", "mask", "real", "preds"):
        shutil.copytree(root / sub, staging / sub, dirs_exist_ok=True)
    buf = io.BytesIO()
    manifest.to_parquet(buf, index=False)
    (staging / "manifest.parquet").write_bytes(buf.getvalue())
    upload_dir(staging, f"{bucket}/data", opts)
    cfg = EvaluateJobConfig(manifest=f"{bucket}/data/manifest.parquet", predictions=f"{bucket}/data/preds",
                            output=f"{bucket}/out", storage_options=opts, pool=POOL)
    m = run_evaluate(cfg, echo=quiet).metrics
    assert list(m["status"]) == ["ok", "ok", "failed"]
    assert m.at[1, "output"] == f"{bucket}/data/preds/c2_1_1.png"
    for _, r in m[m["status"] == "ok"].iterrows():
        f = data["files"][r["id"]]
        assert r["fmse"] == _reference(f["pred"], f["real"], f["mask"], False)["fmse"]
    fs, path = filesystem(f"{bucket}/out", opts)
    html = fs.cat_file(f"{path}/report.html").decode()
    assert html.count("data:image/") >= 5  # thumbnails fetched from S3
    summary = fs.cat_file(f"{path}/summary.json").decode()
    assert opts["secret"] not in summary and opts["secret"] not in html


def test_harmonize_writes_the_report_and_evaluate_reproduces_its_metrics(ray_local, data):
    root = data["root"]
    data["manifest"][data["manifest"]["id"].isin(["s0", "s1", "s2", "s3", "s4", "corrupt"])].to_csv(
        root / "m-harm.csv", index=False)
    run = root / "harm"
    harm = run_harmonize(HarmonizeJobConfig(
        manifest=str(root / "m-harm.csv"), output=str(run), model=ModelConfig(engine="baseline"),
        pools=PoolsConfig(decode=POOL, model=PoolConfig(num_cpus=0.5, batch_size=4), finish=POOL)), echo=quiet)
    assert (run / "report.html").exists()  # ground truth present: harmonize writes the report too
    assert "Results by subset" in (run / "report.html").read_text()

    ev = run_evaluate(EvaluateJobConfig(manifest=str(root / "m-harm.csv"), predictions=str(run), output=str(root / "harm-eval"),
                                        pool=POOL, report=False), echo=quiet).metrics
    assert list(ev["status"]) == list(harm.metrics["status"])
    h, e = harm.metrics.set_index("id"), ev.set_index("id")
    cols = ["mse", "psnr", "fmse", "fpsnr", "bmse", "ssim", "mse_full", "psnr_full", "delta_e_fg", "stat_gap_after"]
    cols += [f"composite_{c}" for c in cols[:8]]
    # binary masks: the same protocol gives the same numbers (s3's soft mask is dithered by evaluate,
    # as the reference does, and thresholded by harmonize)
    for i in ("s0", "s1", "s2", "s4"):
        assert e.loc[i, cols].tolist() == h.loc[i, cols].tolist(), i
        assert e.at[i, "output"] == h.at[i, "output"]


# --- the driver's listing and matching (no Ray) -------------------------------------------


def test_list_and_match_predictions(tmp_path: Path):
    d = tmp_path / "p"
    d.mkdir()
    for n in ("a.png", "a.jpg", "b.JPG", "c_1_1.png", "readme.txt", ".png"):
        (d / n).write_bytes(b"x")
    (d / "sub").mkdir()
    (d / "sub/z.png").write_bytes(b"x")
    folder, names = list_predictions(str(d), {})
    assert folder == str(d) and set(names) == {"a.png", "a.jpg", "b.jpg", "c_1_1.png"}
    assert match_prediction("a", "comp/a.jpg", names).endswith("a.png")  # png preferred over jpg
    assert match_prediction("b", "x/b.jpg", names).endswith("b.JPG")  # extension case-insensitive
    assert match_prediction("c", "data/comp/c_1_1.jpg", names).endswith("c_1_1.png")  # reference naming
    assert match_prediction("z", "z.jpg", names) is None  # sub-folders are not searched
    assert candidate_names("q", "dir/q_2_3.jpg") == ["q.png", "q.jpg", "q.jpeg", "q.webp", "q_2_3.png"]

    run = tmp_path / "run"
    (run / "images").mkdir(parents=True)
    (run / "images/k.webp").write_bytes(b"x")
    (run / "summary.json").write_text("{}")
    folder, names = list_predictions(str(run), {})
    assert folder.endswith("run/images") and list(names) == ["k.webp"]
    with pytest.raises(JobError, match="does not exist"):
        list_predictions(str(tmp_path / "nope"), {})


# --- perfect predictions: infinite PSNR ---------------------------------------------------------


def _strict_json(data: bytes) -> dict:
    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")
    return json.loads(data, parse_constant=refuse)


@pytest.mark.parametrize("where", STORES)
def test_predictions_identical_to_the_ground_truth_with_compare(ray_local, tmp_path, request, capsys, where):
    """p0: prediction == ground truth, compare == composite; p1: both == ground truth. Infinite PSNRs
    stay per row, are counted and left out of the means; deltas against them are null; nothing crashes."""
    store = make_store(where, tmp_path, request)
    for k in range(2):
        comp, mask, real = make_scene(20 + k, h=32, w=40, ratio=0.3)
        store.put(f"data/comp/p{k}.png", enc(comp))
        store.put(f"data/mask/p{k}.png", enc(mask))
        store.put(f"data/real/p{k}.png", enc(real))
        store.put(f"preds/p{k}.png", enc(real))
        store.put(f"other/p{k}.png", enc(comp if k == 0 else real))
    store.put("data/manifest.csv", b"id,composite,mask,real\n"
              + b"".join(f"p{k},comp/p{k}.png,mask/p{k}.png,real/p{k}.png\n".encode() for k in range(2)))
    r = store.root
    code = cli_main(["evaluate", "--manifest", f"{r}/data/manifest.csv", "--predictions", f"{r}/preds",
                     "--compare", f"{r}/other", "--output", f"{r}/out", *store.flags])
    out = capsys.readouterr().out
    assert code == 0
    m = pd.read_parquet(io.BytesIO(store.read("out/metrics/metrics.parquet"))).set_index("id")
    assert (m["status"] == "ok").all() and (m["mse"] == 0).all() and np.isinf(m["psnr"]).all() and np.isinf(m["fpsnr"]).all()
    assert np.isfinite(m.at["p0", "compare_psnr"]) and np.isinf(m.at["p1", "compare_psnr"])
    assert m["delta_psnr"].isna().all()  # compare minus an infinite PSNR: not finite, null
    assert m.at["p0", "delta_fmse"] == pytest.approx(m.at["p0", "compare_fmse"]) and m.at["p1", "delta_fmse"] == 0

    s = _strict_json(store.read("out/summary.json"))
    a = s["metrics"]["all"]
    assert a["psnr"] is None and a["psnr_count"] == 0 and a["psnr_infinite"] == 2 and a["fpsnr_infinite"] == 2
    assert a["mse"] == 0.0 and a["mse_count"] == 2 and a["composite_psnr_count"] == 2 and a["composite_psnr_infinite"] == 0
    c = s["compare"]
    assert c["metrics"]["all"]["psnr"] == pytest.approx(m.at["p0", "compare_psnr"]) and c["metrics"]["all"]["psnr_infinite"] == 1
    assert c["delta"]["all"]["delta_psnr"] is None and c["delta"]["all"]["delta_psnr_count"] == 0
    assert c["delta"]["all"]["delta_fmse_count"] == 2
    all_row = s["table"]["rows"][-1]
    assert all_row["prediction"]["PSNR"] is None and all_row["infinite"]["prediction"]["PSNR"] == 2
    assert all_row["n"]["compare"]["PSNR"] == 1 and all_row["infinite"]["compare"]["PSNR"] == 1

    assert "vs ground truth (256 px), 2 of 2 rows: PSNR n/a" in out
    assert "left out of the means: psnr 2, fpsnr 2, psnr_full 2" in out
    html = store.read("out/report.html").decode()
    assert "(n=0, +2 ∞)" in html and "(n=1, +1 ∞)" in html and "ΔPSNR — dB (0 rows)" in html
    assert "PSNR ∞" in html  # the example grid's captions
