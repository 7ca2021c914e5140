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
from pipelines.config import HarmonizeJobConfig, ModelConfig, PoolConfig, PoolsConfig, ResolutionConfig
from pipelines.jobs.harmonize.job import run_harmonize
from pipelines.io.storage import arrow_filesystem, filesystem
from schemas.metrics import Metrics
from tests.conftest import upload_dir
from tests.pipeline.conftest import write_dataset

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
    first = run_harmonize(HarmonizeJobConfig(limit=2, **base), echo=quiet)
    assert list(first.metrics["status"]) == ["ok", "ok"]
    second = run_harmonize(HarmonizeJobConfig(**base), echo=quiet)
    assert list(second.metrics["status"]) == ["skipped"] * 2 + ["ok"] * (len(manifest) - 2)
    assert second.metrics["psnr"].notna().all()  # carried rows keep their metrics
    third = run_harmonize(HarmonizeJobConfig(**base), echo=quiet)
    assert (third.metrics["status"] == "skipped").all()
    redo = run_harmonize(HarmonizeJobConfig(resume=False, **base), echo=quiet)
    assert (redo.metrics["status"] == "ok").all()
    other_seed = run_harmonize(HarmonizeJobConfig(seed=9, **{**base, "model": ModelConfig(model=None, engine="baseline", steps=7)}), echo=quiet)
    assert (other_seed.metrics["status"] == "ok").all()  # a different configuration is not reused
    # a deleted image is redone even though the table says ok
    (tmp_path / "out" / "images" / "good3.png").unlink()
    again = run_harmonize(HarmonizeJobConfig(seed=9, **{**base, "model": ModelConfig(model=None, engine="baseline", steps=7)}), echo=quiet)
    assert again.metrics.set_index("id").loc["good3", "status"] == "ok"
    assert (again.metrics["status"] == "skipped").sum() == len(manifest) - 1
    assert len(list((tmp_path / "out" / "images").iterdir())) == len(manifest)


def test_max_failed_fraction_gives_a_nonzero_exit(ray_local, tmp_path):
    manifest_path, manifest = local_dataset(tmp_path, good=2)
    text = manifest_path.read_text() + "bad1,comp/none.png,mask/none.png,,B\n"
    manifest_path.write_text(text)
    cfg = HarmonizeJobConfig(manifest=str(manifest_path), output=str(tmp_path / "out"), model=ModelConfig(engine="baseline"),
                             pools=pools(2), max_failed_fraction=0.2)
    r = run_harmonize(cfg, echo=quiet)
    assert r.exit_code == 3 and (r.metrics["status"] == "failed").sum() == 1
