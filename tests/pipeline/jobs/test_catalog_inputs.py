"""Inputs that real catalogs contain (issue 11, items 2 and 3), through the CLI on local files and on S3:
a phone photo tagged with EXIF orientation 6 whose mask and ground truth were saved upright, and masks
stored as 0/1 (8-bit, 16-bit, palette). `harmony harmonize` (baseline engine) and `harmony evaluate`."""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from pipelines.cli import main as cli_main
from pipelines.io.storage import filesystem
from tests.conftest import upload_dir
from tests.pipeline.conftest import enc, make_scene

pytestmark = pytest.mark.pipeline

H, W = 40, 56  # raw (stored) size of every composite


def _tagged_jpeg(arr: np.ndarray, orientation: int) -> bytes:
    exif = Image.Exif()
    exif[0x0112] = orientation
    return enc(arr, "JPEG", exif=exif.tobytes(), quality=95)


def _upright(arr: np.ndarray) -> np.ndarray:
    """What a viewer shows for pixels tagged 6 (90 degrees clockwise), saved without a tag."""
    return np.ascontiguousarray(np.rot90(arr, k=-1))


def _palette(index: np.ndarray) -> bytes:
    img = Image.fromarray(index, mode="P")
    img.putpalette([0, 0, 0, 128, 0, 0])  # class indices 0/1, colours of a segmentation tool's palette
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _catalog(root: Path) -> pd.DataFrame:
    files: dict[str, bytes] = {}
    rows = []
    comp, mask, real = make_scene(3, h=H, w=W, ratio=0.25)
    files["comp/phone.jpg"] = _tagged_jpeg(comp, 6)
    files["mask/phone-upright.png"] = enc(_upright(mask))
    files["real/phone-upright.png"] = enc(_upright(real))
    files["mask/phone-raw.png"] = enc(mask)
    files["real/phone-raw.png"] = enc(real)
    rows += [dict(id="phone", composite="comp/phone.jpg", mask="mask/phone-upright.png", real="real/phone-upright.png"),
             dict(id="phone-raw", composite="comp/phone.jpg", mask="mask/phone-raw.png", real="real/phone-raw.png")]
    comp, mask, real = make_scene(4, h=H, w=W, ratio=0.25)
    files["comp/base.png"], files["real/base.png"] = enc(comp), enc(real)
    index = (mask > 0).astype(np.uint8)
    files["mask/m01-8.png"] = enc(index)
    files["mask/m01-16.png"] = enc(index.astype(np.uint16))
    files["mask/m01-pal.png"] = _palette(index)
    files["mask/m16-full.png"] = enc((mask > 0).astype(np.uint16) * 65535)
    for name in ("m01-8", "m01-16", "m01-pal", "m16-full"):
        rows.append(dict(id=name, composite="comp/base.png", mask=f"mask/{name}.png", real="real/base.png"))
    # predictions for `harmony evaluate`: each row's composite file as it is (the phone's keeps its tag)
    for r in rows:
        ext = r["composite"].rsplit(".", 1)[1]
        files[f"preds/{r['id']}.{ext}"] = files[r["composite"]]
    for rel, data in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_bytes(data)
    manifest = pd.DataFrame(rows)
    manifest.to_csv(root / "manifest.csv", index=False)
    return manifest


@pytest.mark.parametrize("where", ["local", "s3"])
def test_rotated_phone_photos_and_0_1_masks_through_the_cli(ray_local, tmp_path, request, where):
    manifest = _catalog(tmp_path / "data")
    if where == "s3":
        bucket, opts = request.getfixturevalue("s3_bucket")
        opts = {**opts, "key": os.environ["AWS_ACCESS_KEY_ID"], "secret": os.environ["AWS_SECRET_ACCESS_KEY"]}
        upload_dir(tmp_path / "data", f"{bucket}/data", opts)
        base, flags = bucket, [a for k, v in opts.items() for a in ("--storage-option", f"{k}={v}")]
    else:
        base, flags, opts = str(tmp_path), [], {}
    fs, _ = filesystem(base, opts)

    def table(prefix: str) -> pd.DataFrame:
        with fs.open(f"{prefix}/metrics/metrics.parquet", "rb") as f:
            return pq.read_table(f).to_pandas().set_index("id")

    code = cli_main(["harmonize", "--manifest", f"{base}/data/manifest.csv", "--output", f"{base}/out",
                     "--engine", "baseline", *flags])
    assert code == 0
    m = table(f"{base}/out")
    assert list(m.index) == list(manifest["id"])
    for i, r in m.iterrows():
        assert r["status"] == "ok", (i, r["error_type"], r["error_message"])
        assert np.isfinite(r["psnr"]) and np.isfinite(r["composite_psnr"]), i
    # the phone photo: shown 40 wide and 56 high, whether its mask and ground truth were saved upright or raw
    for i in ("phone", "phone-raw"):
        assert (m.at[i, "width"], m.at[i, "height"]) == (H, W), i
        with fs.open(m.at[i, "output"], "rb") as f:
            assert Image.open(f).size == (H, W)
    assert "composite_exif_rotated_6" in m.at["phone", "notes"] and "exif_orientation_composite_only" in m.at["phone", "notes"]
    assert "real_exif_rotated" not in m.at["phone", "notes"]
    assert {"mask_exif_rotated_6", "real_exif_rotated_6", "exif_orientation_both"} <= set(m.at["phone-raw", "notes"].split(","))
    # the same picture either way: identical metrics
    cols = ["mse", "psnr", "fmse", "composite_mse", "composite_fmse", "mse_full", "fg_ratio"]
    assert m.loc["phone", cols].tolist() == m.loc["phone-raw", cols].tolist()
    # 0/1 masks read as their foreground, like the 0/65535 one
    for i in ("m01-8", "m01-16", "m01-pal"):
        assert "mask_01" in m.at[i, "notes"], i
        assert m.loc[i, cols].tolist() == m.loc["m16-full", cols].tolist(), i
    assert "mask_01" not in m.at["m16-full", "notes"]

    # harmony evaluate: composite, mask, ground truth and the prediction each as a viewer shows them
    code = cli_main(["evaluate", "--manifest", f"{base}/data/manifest.csv", "--predictions", f"{base}/data/preds",
                     "--output", f"{base}/eval", "--no-report", *flags])
    assert code == 0
    e = table(f"{base}/eval")
    assert (e["status"] == "ok").all(), e[["status", "error_type", "error_message"]]
    # each prediction is its composite's file: it scores exactly as the composite, at full size
    for c in ("mse", "psnr", "fmse", "bmse", "ssim", "mse_full"):
        assert e[c].tolist() == e[f"composite_{c}"].tolist(), c
    assert "prediction_exif_rotated_6" in e.at["phone", "notes"]
    assert not e["notes"].str.contains("prediction_resized").any()
    assert e.loc[["m01-8", "m01-16", "m01-pal"], "fg_ratio"].tolist() == [e.at["m16-full", "fg_ratio"]] * 3
    assert e.at["phone", "fmse"] == e.at["phone-raw", "fmse"]
