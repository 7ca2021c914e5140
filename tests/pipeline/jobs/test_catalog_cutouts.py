"""Product catalogs end to end on local Ray: a cutout manifest (RGBA products with soft edges, photographs
from scikit-image as backgrounds, placements) through `harmonize` with both engines in `lighting` mode.
The products keep their hue within the bound, transparent pixels stay the background bit for bit, soft
edges survive the paste-back, bad placements are invalid rows, and the fidelity figures reach the metrics
table, the summary and the report."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from pipelines.config import FidelityConfig, ModelConfig, PoolConfig, PoolsConfig, ResolutionConfig
from pipelines.jobs.harmonize.config import HarmonizeJobConfig
from pipelines.jobs.harmonize.job import run_harmonize
from tests.pipeline.conftest import enc, make_scene

pytestmark = pytest.mark.pipeline


def gift_box(h: int, w: int) -> np.ndarray:
    """A saturated blue box with a silver ribbon, RGBA, with a soft (anti-aliased) 3-pixel edge."""
    rgba = np.zeros((h, w, 4), np.uint8)
    rgba[..., :3] = [35, 65, 195]
    rgba[:, w // 2 - 2 : w // 2 + 2, :3] = [190, 190, 198]
    yy, xx = np.mgrid[0:h, 0:w]
    inset = np.minimum.reduce([yy, xx, h - 1 - yy, w - 1 - xx]).astype(np.float64)
    rgba[..., 3] = np.clip(inset / 3.0, 0, 1) * 255  # 0 at the border, 85, 170, then 255
    return rgba


def png(arr: np.ndarray, mode: str | None = None) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr, mode=mode).save(buf, format="PNG")
    return buf.getvalue()


def read(path) -> np.ndarray:
    return np.asarray(Image.open(path).convert("RGB"))


@pytest.fixture
def catalog(tmp_path):
    from skimage import data, transform

    backgrounds = {"coffee": data.coffee(), "chelsea": data.chelsea()}  # warm scenes
    for name, photo in backgrounds.items():
        small = (transform.resize(photo, (96, 128), anti_aliasing=True) * 255).round().astype(np.uint8)
        backgrounds[name] = small
        (tmp_path / f"{name}.jpg").write_bytes(png(small))  # PNG bytes: the test compares pixels exactly
    (tmp_path / "box.png").write_bytes(png(gift_box(40, 36), "RGBA"))
    (tmp_path / "clear.png").write_bytes(png(np.zeros((10, 10, 4), np.uint8), "RGBA"))
    comp, mask, real = make_scene(1, h=96, w=128)
    (tmp_path / "c.png").write_bytes(enc(comp))
    (tmp_path / "m.png").write_bytes(enc(mask))
    (tmp_path / "r.png").write_bytes(enc(real))  # ground truth for one row: the report is written
    cut = dict(composite=None, mask=None, foreground="box.png", scale=None)
    rows = [
        dict(cut, id="on-coffee", background="coffee.jpg", x=30, y=20),
        dict(cut, id="on-cat", background="chelsea.jpg", x=70, y=40, scale=0.75),
        dict(cut, id="clipped", background="coffee.jpg", x=110, y=70),
        dict(cut, id="clear", background="coffee.jpg", x=5, y=5, foreground="clear.png"),
        dict(cut, id="negative", background="coffee.jpg", x=-3, y=5),
        dict(cut, id="words", background="coffee.jpg", x="middle", y=5),
        dict(id="plain", composite="c.png", mask="m.png", real="r.png", foreground=None, background=None, x=None, y=None,
             scale=None),
    ]
    pd.DataFrame(rows).astype({"x": object}).to_json(tmp_path / "manifest.jsonl", orient="records", lines=True)
    return tmp_path, backgrounds


@pytest.mark.parametrize("engine", ["baseline", "diffharmony"])
def test_cutouts_keep_their_hue_and_soft_edges_in_lighting_mode(ray_local, catalog, tiny_checkpoint, engine):
    root, backgrounds = catalog
    model = ModelConfig(engine="baseline") if engine == "baseline" else ModelConfig(model=str(tiny_checkpoint))
    cfg = HarmonizeJobConfig(
        manifest=str(root / "manifest.jsonl"), output=str(root / f"out-{engine}"), model=model,
        resolution=ResolutionConfig(class_sizes=(64, 128)), fidelity=FidelityConfig(mode="lighting", max_chroma_shift=4),
        pools=PoolsConfig(decode=PoolConfig(num_cpus=0.25, num_gpus=0, max_workers=2), model=PoolConfig(num_cpus=0.5),
                          finish=PoolConfig(num_cpus=0.25, num_gpus=0, max_workers=2)),
    )
    result = run_harmonize(cfg, echo=lambda *a, **k: None)
    m = result.metrics.set_index("id")
    assert list(m.loc[["on-coffee", "on-cat", "clipped", "plain"], "status"]) == ["ok"] * 4, m[["status", "error_message"]].to_dict("records")
    assert (m.loc["clear", "status"], m.loc["clear", "error_type"]) == ("failed", "empty_mask")
    assert m.loc["negative", "status"] == "invalid" and "x: -3 is negative" in m.loc["negative", "error_message"]
    assert m.loc["words", "status"] == "invalid" and "'middle' is not a number" in m.loc["words", "error_message"]
    assert "cutout_clipped" in m.loc["clipped", "notes"]
    assert m.loc["on-coffee", "layout"] == "cutout" and m.loc["plain", "layout"] == "composite"

    box = gift_box(40, 36)
    for rid, bg_name, x, y in (("on-coffee", "coffee", 30, 20), ("clipped", "coffee", 110, 70)):
        out, bg = read(root / f"out-{engine}" / "images" / f"{rid}.png"), backgrounds[bg_name]
        assert out.shape == bg.shape  # the background's size, also for a cutout that hangs over its edge
        alpha = np.zeros(bg.shape[:2], np.uint8)
        part = box[: 96 - y, : 128 - x, 3]
        alpha[y : y + part.shape[0], x : x + part.shape[1]] = part
        assert np.array_equal(out[alpha == 0], bg[alpha == 0])  # transparent: the background, bit for bit
        # the edge's weak alpha (85, below the 0.5 a binary paste would cut at) still shows the product
        edge = alpha == 85
        assert np.abs(out[edge].astype(int) - bg[edge].astype(int)).sum(axis=1).mean() > 10
    # the products keep their hue within the bound; lightness follows the engine
    for rid in ("on-coffee", "on-cat", "clipped"):
        r = m.loc[rid]
        assert r["fidelity_ok"] and r["fg_chroma_shift"] <= 4.5 and r["fg_hue_shift"] < 5, r[["fg_chroma_shift", "fg_hue_shift"]]
    summary = json.loads((root / f"out-{engine}" / "summary.json").read_text())
    a = summary["metrics"]["all"]
    assert a["fidelity_checked"] == 4 and a["fidelity_ok"] == 4 and a["fg_chroma_shift"] is not None
    assert "Within the colour-fidelity bound" in (root / f"out-{engine}" / "report.html").read_text()
    from pipelines.report.html import case_images

    thumbs = case_images(m.loc["on-coffee"].to_dict(), {})  # a cutout row's report thumbnails: composed, harmonized
    assert thumbs["composite"] and thumbs["mask"] and thumbs["output"]
    if engine != "baseline":
        return
    # Resume: a cutout moved on its background is run again; the rows whose inputs did not change are carried.
    table = pd.read_json(root / "manifest.jsonl", lines=True, dtype=False)
    table.loc[table["id"] == "on-coffee", "x"] = 50
    table.to_json(root / "manifest.jsonl", orient="records", lines=True)
    again = run_harmonize(cfg, echo=lambda *a, **k: None).metrics.set_index("id")
    assert again.loc["on-coffee", "status"] == "ok" and again.loc["on-cat", "status"] == "skipped"
    assert again.loc["on-coffee", "x"] == 50


def test_synthesize_writes_a_cutout_manifest_that_harmonize_runs(ray_local, tmp_path, monkeypatch):
    """`harmony synthesize --layout cutout` then `harmony harmonize --fidelity lighting` on what it wrote,
    both through the command line with relative paths, as the README shows them."""
    from skimage import data, transform

    from pipelines.cli import main

    monkeypatch.chdir(tmp_path)
    rows = []
    for name in ("coffee", "chelsea", "astronaut"):
        photo = (transform.resize(getattr(data, name)(), (72, 96), anti_aliasing=True) * 255).round().astype(np.uint8)
        Path("photos").mkdir(exist_ok=True)
        Path(f"photos/{name}.png").write_bytes(png(photo))
        rows.append({"id": name, "real": f"photos/{name}.png"})
    pd.DataFrame(rows).to_csv("photos.csv", index=False)
    assert main(["synthesize", "--manifest", "photos.csv", "--output", "synth", "--mask-source", "box",
                 "--layout", "cutout", "--fmse-range", "0,100000", "--seed", "1"]) == 0
    manifest = pd.read_parquet("synth/manifest.parquet")
    assert list(manifest.columns) == ["id", "foreground", "background", "x", "y", "real", "subset"] and len(manifest) == 3
    for r in manifest.itertuples():
        alpha = np.asarray(Image.open(Path("synth") / r.foreground))[..., 3]
        assert alpha.max() == 255 and ((alpha > 0) & (alpha < 255)).any()  # opaque inside, a soft edge
        assert r.background == r.real
    assert main(["harmonize", "--manifest", "synth/manifest.parquet", "--output", "out", "--engine", "baseline",
                 "--fidelity", "lighting"]) == 0
    m = pd.read_parquet("out/metrics/metrics.parquet")
    assert (m["status"] == "ok").all() and m["fidelity_ok"].all() and (m["layout"] == "cutout").all()
    assert m["psnr"].notna().all()  # the real image is the ground truth of a cutout row too
    for r in manifest.itertuples():
        out, real = read(Path("out/images") / f"{r.id}.png"), read(Path("synth") / r.real)
        assert out.shape == real.shape
