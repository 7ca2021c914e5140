"""End to end on local Ray against a real S3 endpoint (moto) with tiny checkpoints."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from harmony_ops.inputs import load_sample
from pipelines.cli import main as cli_main
from pipelines.config import ModelConfig, PoolConfig, PoolsConfig, ResolutionConfig
from pipelines.jobs.harmonize.config import HarmonizeJobConfig
from pipelines.jobs.harmonize.job import run_harmonize
from pipelines.io.storage import arrow_filesystem, filesystem
from schemas.metrics import COMPOSITE_METRICS, GT_METRICS, NOREF_METRICS, Metrics
from tests.conftest import upload_dir
from tests.pipeline.conftest import enc, make_scene, write_dataset
from tests.pipeline.stores import STORES, make_store

pytestmark = pytest.mark.pipeline

SMALL = ResolutionConfig(class_sizes=(64, 128))


def pools(batch: int = 4) -> PoolsConfig:
    return PoolsConfig(
        decode=PoolConfig(num_cpus=0.25, num_gpus=0, batch_size=batch, max_workers=2),
        model=PoolConfig(num_cpus=0.5, batch_size=batch),
        finish=PoolConfig(num_cpus=0.25, num_gpus=0, batch_size=batch, max_workers=2),
    )


def quiet(*a, **k):
    pass


def test_end_to_end_on_s3_with_every_bad_input(ray_local, s3_bucket, tiny_checkpoint):
    bucket, opts = s3_bucket
    fs, root = filesystem(bucket, opts)
    manifest = write_dataset(lambda rel, data: fs.pipe_file(f"{root}/data/{rel}", data))
    buf = io.BytesIO()
    manifest.to_parquet(buf, index=False)
    fs.pipe_file(f"{root}/data/manifest.parquet", buf.getvalue())
    upload_dir(tiny_checkpoint, f"{bucket}/models/tiny", opts)

    cfg = HarmonizeJobConfig(
        manifest=f"{bucket}/data/manifest.parquet", output=f"{bucket}/out",
        model=ModelConfig(model=f"{bucket}/models/tiny"), resolution=SMALL, pools=pools(),
        storage_options=opts, max_pixels=100_000, block_rows=4, seed=3,
    )
    result = run_harmonize(cfg, echo=quiet)
    m = result.metrics
    assert result.exit_code == 0
    # exactly one metrics row per manifest row, in manifest order
    assert len(m) == len(manifest) and list(m["row"]) == list(range(len(manifest)))
    assert list(m["expect"]) == list(manifest["expect"])  # extra manifest columns pass through
    for _, r in m.iterrows():
        if r["expect"] == "ok":
            assert r["status"] == "ok", (r["id"], r["error_type"], r["error_message"])
        else:
            assert r["status"] in ("failed", "invalid") and r["error_type"] == r["expect"], (r["id"], r["error_type"])
            assert r["error_message"] and pd.isna(r["output"])
    soft = m[m["id"] == "soft"].iloc[0]
    assert "mask_binarized" in soft["notes"]
    assert "exif_orientation_both" in m[m["id"] == "rotated"].iloc[0]["notes"]

    # images: full resolution, background bit-identical to the (oriented) composite
    for _, r in m[m["status"] == "ok"].iterrows():
        src = manifest.iloc[int(r["row"])]
        sample = load_sample(fs.cat_file(f"{root}/data/{src['composite']}"), fs.cat_file(f"{root}/data/{src['mask']}"))
        out = np.asarray(Image.open(io.BytesIO(fs.cat_file(r["output"].split("://", 1)[1]))).convert("RGB"))
        assert out.shape == sample.composite.shape
        bg = sample.mask < 0.5
        assert np.array_equal(out[bg], sample.composite[bg])
        assert (r["width"], r["height"]) == (sample.composite.shape[1], sample.composite.shape[0])
        assert r["inference_width"] % 64 == 0 and r["inference_width"] * r["inference_height"] <= 128 * 128
        assert r["engine"] == "diffharmony" and r["steps"] == 5 and len(r["model"]) == 16
        assert np.isfinite(r["delta_e_fg"])
    good = m[m["id"].str.startswith("good") & (m["status"] == "ok")]
    assert good["psnr"].notna().all() and good["composite_psnr"].notna().all() and good["ssim"].between(-1, 1).all()

    # the metrics table on storage is exactly this, and satisfies its schema
    afs, path = arrow_filesystem(f"{bucket}/out/metrics/metrics.parquet", opts)
    stored = pq.read_table(path, filesystem=afs).to_pandas()
    assert len(stored) == len(manifest)
    Metrics.validate(stored)
    summary = json.loads(fs.cat_file(f"{root}/out/summary.json"))
    assert summary["counts"]["ok"] == int((manifest["expect"] == "ok").sum())
    assert summary["counts"]["invalid"] == 4 and summary["errors_by_type"]["missing_object"] == 1
    assert set(summary["metrics"]["by_subset"]) >= {"A", "B"}
    assert "0-5%" in summary["metrics"]["by_fg_bucket"]
    assert not fs.exists(f"{root}/out/_journal")
    text = fs.cat_file(f"{root}/out/summary.json").decode() + stored.to_csv()
    assert "testing-secret-value" not in text and "testing-key-id" not in text


def local_dataset(tmp_path, good=6):
    data = tmp_path / "data"

    def put(rel, b):
        p = data / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(b)

    manifest = write_dataset(put, good=good)
    manifest = manifest[manifest["id"].str.startswith("good") & (manifest["expect"] == "ok")]
    manifest.drop(columns=["expect"]).to_csv(data / "manifest.csv", index=False)
    return data / "manifest.csv", manifest


def test_resume_skips_done_rows_and_no_resume_redoes_them(ray_local, tmp_path):
    manifest_path, manifest = local_dataset(tmp_path)
    base = dict(manifest=str(manifest_path), output=str(tmp_path / "out"), model=ModelConfig(engine="baseline"),
                pools=pools(2), block_rows=2)
    first = run_harmonize(HarmonizeJobConfig(limit=2, review_images=False, **base), echo=quiet)
    assert list(first.metrics["status"]) == ["ok", "ok"]
    assert first.metrics["review"].isna().all() and not (tmp_path / "out" / "report_files").exists()
    second = run_harmonize(HarmonizeJobConfig(**base), echo=quiet)  # review images are not in the resume key
    assert list(second.metrics["status"]) == ["skipped"] * 2 + ["ok"] * (len(manifest) - 2)
    assert second.metrics["psnr"].notna().all()  # carried rows keep their metrics
    assert second.metrics["review"].notna().tolist() == [False] * 2 + [True] * (len(manifest) - 2)
    # a finished job run again skips every row, except that a deleted image is redone even though the
    # table says ok (one run checks both: each run costs seconds)
    (tmp_path / "out" / "images" / "good3.png").unlink()
    third = run_harmonize(HarmonizeJobConfig(**base), echo=quiet)
    assert third.metrics.set_index("id").loc["good3", "status"] == "ok"
    assert (third.metrics["status"] == "skipped").sum() == len(manifest) - 1
    assert len(list((tmp_path / "out" / "images").iterdir())) == len(manifest)
    redo = run_harmonize(HarmonizeJobConfig(resume=False, **base), echo=quiet)
    assert (redo.metrics["status"] == "ok").all()
    other_seed = run_harmonize(HarmonizeJobConfig(seed=9, **{**base, "model": ModelConfig(model=None, engine="baseline", steps=7)}), echo=quiet)
    assert (other_seed.metrics["status"] == "ok").all()  # a different configuration is not reused


def test_max_failed_fraction_gives_a_nonzero_exit(ray_local, tmp_path):
    manifest_path, manifest = local_dataset(tmp_path, good=2)
    text = manifest_path.read_text() + "bad1,comp/none.png,mask/none.png,,B\n"
    manifest_path.write_text(text)
    cfg = HarmonizeJobConfig(manifest=str(manifest_path), output=str(tmp_path / "out"), model=ModelConfig(engine="baseline"),
                             pools=pools(2), max_failed_fraction=0.2)
    r = run_harmonize(cfg, echo=quiet)
    assert r.exit_code == 3 and (r.metrics["status"] == "failed").sum() == 1


# --- inputs real catalogs contain: ground truth on some rows only, images identical to it ----------

# The rows without ground truth, as each format writes "not given": a parquet null (from None and
# from pandas' NaN), an empty CSV cell, a missing JSON Lines key and a JSON null.
PARTIAL = (("g0", "A", True), ("n1", "A", False), ("g2", "B", True), ("n3", "B", False))


def _partial_manifest(fmt: str) -> bytes:
    rows = [dict(id=i, composite=f"comp/{i}.png", mask=f"mask/{i}.png", real=f"real/{i}.png" if gt else None,
                 subset=subset) for i, subset, gt in PARTIAL]
    if fmt == "parquet":
        df = pd.DataFrame(rows)
        df.loc[3, "real"] = np.nan
        buf = io.BytesIO()
        df.to_parquet(buf, index=False)
        return buf.getvalue()
    if fmt == "csv":
        lines = ["id,composite,mask,real,subset"] + [f"{r['id']},{r['composite']},{r['mask']},{r['real'] or ''},{r['subset']}"
                                                     for r in rows]
        return ("\n".join(lines) + "\n").encode()
    del rows[1]["real"]  # JSON Lines: a missing key, then an explicit null
    return "".join(json.dumps(r) + "\n" for r in rows).encode()


def _strict_json(data: bytes) -> dict:
    """JSON as any parser reads it: no NaN or Infinity tokens."""
    def refuse(token):
        raise ValueError(f"non-standard JSON token {token}")
    return json.loads(data, parse_constant=refuse)


def _cli_harmonize(store, manifest: str, capsys) -> tuple[int, str]:
    code = cli_main(["harmonize", "--engine", "baseline", "--manifest", f"{store.root}/data/{manifest}",
                     "--output", f"{store.root}/out", *store.flags])
    return code, capsys.readouterr().out


# Each format once at least on each store; parquet (read through pyarrow's clients) on both.
@pytest.mark.parametrize(("fmt", "where"), [("parquet", "local"), ("parquet", "s3"), ("csv", "local"), ("jsonl", "s3")])
def test_rows_without_ground_truth_are_ok_with_no_reference_metrics(ray_local, tmp_path, request, capsys, fmt, where):

    store = make_store(where, tmp_path, request)
    for k, (i, _, _) in enumerate(PARTIAL):
        comp, mask, real = make_scene(k, h=32, w=40, ratio=0.3)
        store.put(f"data/comp/{i}.png", enc(comp))
        store.put(f"data/mask/{i}.png", enc(mask))
        store.put(f"data/real/{i}.png", enc(real))
    store.put(f"data/manifest.{fmt}", _partial_manifest(fmt))
    code, out = _cli_harmonize(store, f"manifest.{fmt}", capsys)
    assert code == 0
    m = pd.read_parquet(io.BytesIO(store.read("out/metrics/metrics.parquet")))
    Metrics.validate(m)
    assert list(m["status"]) == ["ok"] * 4, m[["id", "error_type", "error_message"]].to_string()
    gt = m["id"].isin(["g0", "g2"])
    assert np.isfinite(m.loc[gt, list(GT_METRICS + COMPOSITE_METRICS)].to_numpy(dtype=float)).all()  # the full protocol
    assert m.loc[~gt, list(GT_METRICS + COMPOSITE_METRICS)].isna().all().all()  # none without ground truth
    assert m.loc[~gt, "real"].isna().all()
    assert np.isfinite(m[list(NOREF_METRICS)].to_numpy(dtype=float)).all()  # every row: no-reference metrics

    s = _strict_json(store.read("out/summary.json"))
    a = s["metrics"]["all"]
    assert a["count"] == 4 and a["psnr_count"] == 2 and a["composite_fmse_count"] == 2 and a["delta_e_fg_count"] == 4
    assert a["psnr"] == pytest.approx(m.loc[gt, "psnr"].mean(), rel=1e-12)
    assert a["psnr_infinite"] == 0
    b = s["metrics"]["by_subset"]["B"]
    assert b["count"] == 2 and b["fmse_count"] == 1 and b["fmse"] == pytest.approx(m.set_index("id").at["g2", "fmse"])
    assert "vs ground truth (256 px), 2 of 4 rows" in out and "no-reference over 4 rows" in out
    html = store.read("out/report.html").decode()
    assert "(n=2)" in html and "(n=1)" in html  # All, and each subset: the means say how many rows they are over
    # the report's detail view: each row's review images under report_files/ (harmonized itself is in images/)
    for _, r in m.iterrows():
        names = r["review"].split(",")  # the composite and ground truth are PNGs: copied as they are
        assert "composite.png" in names and ("real.png" in names) == (r["id"] in ("g0", "g2"))
        assert not any(n.startswith("harmonized.") for n in names)
        assert store.read(f"out/report_files/rows/{r['row']}/difference.png")[:4] == b"\x89PNG"


@pytest.mark.parametrize("where", STORES)
def test_a_composite_identical_to_its_ground_truth(ray_local, tmp_path, request, capsys, where):
    """Its composite_* PSNRs are infinite: stored as such per row, counted and left out of the means."""

    store = make_store(where, tmp_path, request)
    comp, mask, _ = make_scene(7, h=32, w=40, ratio=0.3)
    store.put("data/comp/same.png", enc(comp))
    store.put("data/mask/same.png", enc(mask))
    store.put("data/manifest.csv", b"id,composite,mask,real\nsame,comp/same.png,mask/same.png,comp/same.png\n")
    code, out = _cli_harmonize(store, "manifest.csv", capsys)
    assert code == 0
    m = pd.read_parquet(io.BytesIO(store.read("out/metrics/metrics.parquet"))).iloc[0]
    assert m["status"] == "ok" and m["composite_mse"] == 0 and np.isinf(m["composite_psnr"]) and np.isinf(m["composite_fpsnr"])
    assert np.isfinite(m["psnr"])  # the baseline changed the foreground
    a = _strict_json(store.read("out/summary.json"))["metrics"]["all"]
    assert a["composite_psnr"] is None and a["composite_psnr_count"] == 0 and a["composite_psnr_infinite"] == 1
    assert a["composite_psnr_full_infinite"] == 1 and a["composite_mse"] == 0.0 and a["psnr"] == pytest.approx(m["psnr"])
    assert "PSNR n/a" not in out and "(composite n/a)" in out  # the headline is printed, n/a where no finite value
    assert "left out of the means: composite_psnr 1, composite_fpsnr 1, composite_psnr_full 1" in out
    html = store.read("out/report.html").decode()
    assert "(n=0, +1 ∞)" in html
