"""`harmony synthesize` end to end: iHarmony4 layout and naming, a manifest the other jobs read, the
parameter table (rejected draws and bad inputs recorded), and identical files on a re-run with
another batching and another storage (local vs S3)."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest
from PIL import Image

from harmony_ops.metrics import evaluate_arrays
from harmony_ops.perturb import KINDS
from pipelines.cli import build_parser, main
from pipelines.config import PoolConfig, build
from pipelines.jobs.synthesize.config import SynthesizeJobConfig
from pipelines.errors import ConfigError
from pipelines.io.iharmony4 import names_for
from pipelines.io.manifest import prepare_rows, read_manifest
from pipelines.io.storage import filesystem
from pipelines.jobs.synthesize.job import run_synthesize
from pipelines.core.adapter import run_batch
from pipelines.jobs.synthesize.sources import load_source, sanitise_name
from pipelines.jobs.synthesize.stage import SynthesizeStage
from schemas.synthesis import to_arrow as params_to_arrow
from schemas.synthesis import MANIFEST_COLUMNS
from tests.conftest import upload_dir
from tests.pipeline.conftest import enc

pytestmark = pytest.mark.pipeline

H, W = 40, 56
GOOD = 4


def quiet(*a, **k):
    pass


def scene(k: int) -> tuple[np.ndarray, np.ndarray]:
    """A bright textured image (so colour transfer onto a black foreground is always far too strong)."""
    rng = np.random.default_rng(k)
    yy, xx = np.mgrid[0:H, 0:W]
    base = rng.uniform(150, 220, 3)
    img = base + np.stack([xx - W / 2, yy - H / 2, (xx - yy) / 2], -1) * rng.uniform(-1.2, 1.2, 3)
    real = np.clip(img + rng.normal(0, 6, (H, W, 3)), 0, 255).astype(np.uint8)
    mask = np.zeros((H, W), np.uint8)
    mask[8 + k % 3 : 30, 12 + k : 40 + k] = 255
    return real, mask


def write_inputs(folder: Path) -> pd.DataFrame:
    """Images under folder/ and the manifest rows (relative paths), with an `expect` column."""
    def put(rel, data):
        p = folder / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)

    rows = []
    for k in range(GOOD):
        real, mask = scene(k)
        put(f"real/scene_{k}.png", enc(real))
        put(f"mask/scene_{k}.png", enc(mask))
        rows.append(dict(id=f"scene_{k}", real=f"real/scene_{k}.png", mask=f"mask/scene_{k}.png",
                         subset="street" if k % 2 else "park", expect="ok"))
    real, mask = scene(0)
    put("real/black.png", enc(np.zeros_like(real)))
    jpg = enc(real, "JPEG")
    put("real/truncated.jpg", jpg[: len(jpg) // 2])
    put("mask/small.png", enc(mask[: H // 2]))
    put("mask/empty.png", enc(np.zeros_like(mask)))

    def row(i, r, m, expect):
        rows.append(dict(id=i, real=r, mask=m, subset=None, expect=expect))

    row("black", "real/black.png", "mask/scene_0.png", "rejected")
    row("missing", "real/nope.png", "mask/scene_0.png", "missing_object")
    row("truncated", "real/truncated.jpg", "mask/scene_0.png", "corrupt")
    row("sizes", "real/scene_1.png", "mask/small.png", "size_mismatch")
    row("empty", "real/scene_1.png", "mask/empty.png", "empty_mask")
    row("nomask", "real/scene_1.png", None, "invalid_row")
    row("../escape", "real/scene_1.png", "mask/scene_1.png", "invalid_row")
    row("dup_a", "real/scene_2.png", "mask/scene_2.png", "duplicate_name")
    row("dup-a", "real/scene_3.png", "mask/scene_3.png", "duplicate_name")
    return pd.DataFrame(rows)


def config(manifest: str, output: str, batch: int, **kw) -> SynthesizeJobConfig:
    return SynthesizeJobConfig(manifest=manifest, output=output, per_image=2, seed=7, donor_pool=6,
                               pool=PoolConfig(num_cpus=0.5, num_gpus=0, batch_size=batch, max_workers=2), **kw)


def files_under(fs, root: str) -> dict[str, bytes]:
    """Every object under root by relative path (folder markers an S3 client may leave are skipped)."""
    return {p[len(root) + 1 :]: fs.cat_file(p) for p in fs.find(root) if len(p) > len(root) + 1 and not p.endswith("/")}


def decode(data: bytes, mode: str = "RGB") -> np.ndarray:
    return np.asarray(Image.open(io.BytesIO(data)).convert(mode))


def test_synthesize_layout_manifest_params_and_identical_rerun(ray_local, s3_bucket, tmp_path):
    manifest = write_inputs(tmp_path / "data")
    manifest.drop(columns=["expect"]).to_csv(tmp_path / "data" / "manifest.csv", index=False)
    out = tmp_path / "out"
    result = run_synthesize(config(str(tmp_path / "data" / "manifest.csv"), str(out), batch=1), echo=quiet)
    assert result.exit_code == 0

    # --- layout and naming -----------------------------------------------------------------------
    local = files_under(filesystem(str(out))[0], str(out))
    assert {p.split("/")[0] for p in local} == {"composite_images", "masks", "real_images", "manifest.parquet",
                                              "params.parquet", "summary.json"}
    composites = sorted(p.split("/")[1] for p in local if p.startswith("composite_images/"))
    assert composites and all(re.fullmatch(r"[A-Za-z0-9.-]+_1_[12]\.jpg", c) for c in composites)
    for c in composites:
        mask_name, real_name = names_for(c)
        assert f"masks/{mask_name}" in local and f"real_images/{real_name}" in local
    assert {sanitise_name(f"scene_{k}") for k in range(GOOD)} >= {names_for(c)[1][:-4] for c in composites}
    assert not any("black" in p or "dup-a" in p for p in local)  # rejected or colliding: not written

    # --- the manifest, read as `harmony harmonize` / `harmony evaluate` read it --------------------
    m = read_manifest(str(out / "manifest.parquet"))
    assert tuple(m.columns) == MANIFEST_COLUMNS and list(m["id"]) == sorted(m["id"])
    rows = prepare_rows(m, str(out / "manifest.parquet"), str(tmp_path / "harmonized"), "png", 0)
    assert len(rows) == len(composites) and (rows["status"] == "pending").all()
    for _, r in rows.iterrows():
        assert Path(r["composite"]).is_file() and Path(r["mask"]).is_file() and Path(r["real"]).is_file()
        assert (r["mask"].rsplit("/", 1)[1], r["real"].rsplit("/", 1)[1]) == names_for(r["composite"])
    assert set(m["subset"]) <= set(KINDS)

    # --- the parameter table -----------------------------------------------------------------------
    params = pd.read_parquet(out / "params.parquet")
    kept = params[params["kept"]]
    assert (kept["status"] == "kept").all() and sorted(kept["id"]) == sorted(m["id"])
    assert (kept.set_index("id")[["composite", "mask", "real", "subset"]].sort_index()
            == m.set_index("id")[["composite", "mask", "real", "subset"]].sort_index()).all().all()
    by_source = {s: g for s, g in params.groupby("source_id")}
    for _, e in manifest.iterrows():
        g = by_source[e["id"]]
        if e["expect"] in ("ok", "rejected"):
            assert set(g["status"]) <= {"kept", "rejected"} and set(g["sample"]) == {1, 2}
            assert g["first_of_input"].sum() == 1 and (g.groupby("sample")["kept"].sum() <= 1).all()
        elif e["expect"] == "duplicate_name":
            assert (g["status"] == "invalid").all() and (g["reason"] == "duplicate_name").all()
        else:
            assert len(g) == 1 and g.iloc[0]["reason"] == e["expect"], (e["id"], g.iloc[0]["reason"])
            assert g.iloc[0]["status"] == ("invalid" if e["expect"] == "invalid_row" else "failed")
            assert g.iloc[0]["message"]
    black = by_source["black"]
    assert len(black) == 2 * 3 and not black["kept"].any()  # every draw of both samples rejected
    rejected = params[params["status"] == "rejected"]
    assert set(rejected["reason"]) <= {"fmse_below_range", "fmse_above_range"} and len(rejected) >= 6
    assert ((rejected["reason"] == "fmse_below_range") == (rejected["fmse"] < 100)).all()
    assert ((rejected["reason"] == "fmse_above_range") == (rejected["fmse"] > 5000)).all()
    assert kept["fmse"].between(100, 5000).all()
    evaluated = params[params["status"].isin(["kept", "rejected"])]
    for _, r in evaluated.iterrows():
        p = json.loads(r["params"])
        assert p["strength"] == r["strength"] and 0.5 <= r["strength"] <= 1.0
        if r["kind"] == "colour_transfer":
            assert r["donor_id"] == p["donor_id"] and r["donor_id"] != r["source_id"]
            assert r["donor_id"] in set(manifest["id"]) and pd.isna(r["exposure_ev"])
        else:
            assert pd.isna(r["donor_id"]) and r["exposure_ev"] == p["exposure_ev"] and r["gamma"] == p["gamma"]
    assert set(kept.loc[kept["source_id"] == "scene_1", "source_subset"]) == {"street"}

    # recorded statistics are those of the stored files (the 256 px protocol, as `harmony evaluate`)
    for _, r in kept.iterrows():
        comp, real = decode(local[r["composite"]]), decode(local[r["real"]])
        mask = decode(local[r["mask"]], "L")
        got = evaluate_arrays(comp, real, mask)
        assert got.fmse == pytest.approx(r["fmse"], rel=1e-9) and got.mse == pytest.approx(r["mse"], rel=1e-9)
        assert r["fg_ratio"] == pytest.approx((mask >= 128).mean())
        fg, bg = mask >= 128, mask < 128
        diff = np.abs(comp.astype(int) - real)
        assert diff[fg].mean() > 5 and diff[bg].mean() < 2  # only the foreground was perturbed

    summary = json.loads(local["summary.json"])
    c = summary["counts"]
    assert c["kept"] == len(m) and c["inputs"] == len(manifest) and c["failed"] == 4 and c["invalid"] == 4
    assert c["rejected"] == len(rejected) and c["unfilled_samples"] >= 2

    # --- a re-run on S3 with another batching gives the same files ---------------------------------
    bucket, opts = s3_bucket
    upload_dir(tmp_path / "data", f"{bucket}/data", opts)
    fs, root = filesystem(bucket, opts)
    buf = io.BytesIO()
    manifest.drop(columns=["expect"]).to_parquet(buf, index=False)
    fs.pipe_file(f"{root}/data/manifest.parquet", buf.getvalue())
    again = run_synthesize(config(f"{bucket}/data/manifest.parquet", f"{bucket}/out", batch=3, storage_options=opts),
                           echo=quiet)
    assert again.summary["counts"] == summary["counts"]
    remote = files_under(fs, f"{root}/out")
    assert set(remote) == set(local)
    for p in local:
        if p not in ("params.parquet", "summary.json"):
            assert remote[p] == local[p], p  # images, masks and the manifest: byte for byte
    key = ["source_id", "sample", "draw"]

    def strip(t):  # the same rows but for input URIs (and the error text that names one)
        t = t.drop(columns=["source_real", "source_mask"]).sort_values(key).reset_index(drop=True)
        return t.assign(message=t["message"].where(t["reason"] != "missing_object"))

    remote_params = pq.read_table(io.BytesIO(remote["params.parquet"])).to_pandas()
    pd.testing.assert_frame_equal(strip(remote_params), strip(params))
    assert "testing-secret-value" not in remote["summary.json"].decode()


def test_random_masks_through_the_cli(ray_local, tmp_path, capsys):
    data = tmp_path / "data"
    data.mkdir()
    rows = []
    for k in range(4):
        real, _ = scene(k)
        (data / f"img_{k}.png").write_bytes(enc(real))
        rows.append({"id": f"img_{k}", "real": f"img_{k}.png"})
    pd.DataFrame(rows).to_json(data / "manifest.jsonl", orient="records", lines=True)
    out = tmp_path / "out"
    code = main(["synthesize", "--manifest", str(data / "manifest.jsonl"), "--output", str(out), "--mask-source", "blob",
                 "--fg-ratio", "0.1,0.3", "--per-image", "2", "--kinds", "tone,day_night", "--fmse-range", "1,20000",
                 "--limit", "3", "--seed", "5"])
    text = capsys.readouterr().out
    assert code == 0
    assert "harmony synthesize:" in text and "masks blob" in text and "kept 6 samples" in text
    assert f"manifest: {out / 'manifest.parquet'}" in text
    m = read_manifest(str(out / "manifest.parquet"))
    assert sorted(m["id"]) == [f"img-{k}_{s}_{s}" for k in range(3) for s in (1, 2)]  # first 3 rows; mask m = sample k
    assert set(m["subset"]) <= {"tone", "day_night"}
    for k in range(3):
        masks = [np.asarray(Image.open(out / "masks" / f"img-{k}_{s}.png")) for s in (1, 2)]
        assert not np.array_equal(*masks)  # one random mask per sample
        for mk in masks:
            assert 0.1 - 1e-9 <= (mk >= 128).mean() <= 0.3 + 1e-9 and not mk[0].any() and not mk[:, -1].any()
    params = pd.read_parquet(out / "params.parquet")
    assert (params["mask_source"] == "blob").all()
    p = json.loads(params.iloc[0]["params"])
    assert p["mask"]["source"] == "blob" and 0.1 <= p["mask"]["target_ratio"] <= 0.3


def test_jobs_that_cannot_run_exit_2(ray_local, tmp_path, capsys):
    pd.DataFrame([{"id": "a", "real": "a.png"}]).to_csv(tmp_path / "m.csv", index=False)
    for args, message in [(["--manifest", str(tmp_path / "none.parquet")], "does not exist"),
                          (["--manifest", str(tmp_path / "m.csv")], "lacks column(s) ['mask']"),
                          (["--manifest", str(tmp_path / "m.txt")], "unknown format")]:
        assert main(["synthesize", *args, "--output", str(tmp_path / "o")]) == 2
        assert message in capsys.readouterr().err


# --- without Ray: the stage, the config, the command line -------------------------------------------


def run_stage(stage, batch):
    return run_batch([stage], batch, finalize=params_to_arrow)


def stage_rows(tmp_path, **kw) -> tuple[SynthesizeStage, pd.DataFrame]:
    manifest = write_inputs(tmp_path / "data")
    cfg = config(str(tmp_path / "data" / "manifest.csv"), str(tmp_path / "out"), batch=2, kinds="tone,day_night", **kw)
    return SynthesizeStage(cfg=cfg), manifest[manifest["expect"] == "ok"].drop(columns=["expect"])


def test_stage_output_does_not_depend_on_batching(tmp_path):
    stage, good = stage_rows(tmp_path)
    together = run_stage(stage, good).to_pandas()
    alone = pd.concat([run_stage(stage, good.iloc[[i]]).to_pandas() for i in range(len(good))], ignore_index=True)
    pd.testing.assert_frame_equal(together, alone)
    assert together["kept"].any()


def test_stage_records_rejected_draws_and_writes_nothing_for_them(tmp_path):
    stage, good = stage_rows(tmp_path, fmse_range=(0, 1), max_draws=2)
    t = run_stage(stage, good).to_pandas()
    assert len(t) == len(good) * 2 * 2 and (t["status"] == "rejected").all() and not t["kept"].any()
    assert (t["reason"] == "fmse_above_range").all() and t["composite"].isna().all()
    assert not (tmp_path / "out").exists()


def test_stage_notes_conversions_and_fails_images_too_small_for_a_random_mask(tmp_path):
    real, mask = scene(1)
    (tmp_path / "rgba.png").write_bytes(enc(np.dstack([real, np.full(mask.shape, 200, np.uint8)])))
    (tmp_path / "soft.png").write_bytes(enc((mask * 0.8).astype(np.uint8)))
    (tmp_path / "tiny.png").write_bytes(enc(real[:6, :6]))
    given = SynthesizeStage(cfg=config(str(tmp_path / "m.csv"), str(tmp_path / "out"), batch=1, kinds="tone",
                                       fmse_range=(0, 1e9)))
    t = run_stage(given, pd.DataFrame([{"id": "a", "real": "rgba.png", "mask": "soft.png"}])).to_pandas()
    assert (t["status"] == "kept").all() and set(t["notes"]) == {"real_dropped_alpha,mask_binarized"}
    random = SynthesizeStage(cfg=config(str(tmp_path / "m.csv"), str(tmp_path / "out"), batch=1, kinds="tone",
                                        mask_source="ellipse"))
    t = run_stage(random, pd.DataFrame([{"id": "b", "real": "tiny.png"}])).to_pandas()
    assert list(t["status"]) == ["failed"] and t.iloc[0]["reason"] == "too_small" and "too small" in t.iloc[0]["message"]


def test_load_source_orients_a_tagged_real_image_with_an_upright_0_1_mask(tmp_path):
    """The harmonize job's decoding rules hold for synthesize's inputs (load_source uses load_sample)."""
    real, mask = scene(2)
    exif = Image.Exif()
    exif[0x0112] = 6
    (tmp_path / "phone.jpg").write_bytes(enc(real, "JPEG", exif=exif.tobytes(), quality=95))
    (tmp_path / "upright01.png").write_bytes(enc(np.ascontiguousarray(np.rot90(mask > 0, k=-1)).astype(np.uint8)))
    src = load_source({"real": "phone.jpg", "mask": "upright01.png"}, config(str(tmp_path / "m.csv"), str(tmp_path / "out"), batch=1))
    assert src.real.shape == (W, H, 3) and np.array_equal(src.mask, np.rot90(mask > 0, k=-1).astype(np.float32))
    assert src.notes == ["real_exif_rotated_6", "mask_01", "exif_orientation_composite_only"]


def test_config_from_flags_and_yaml(tmp_path):
    yaml_file = tmp_path / "job.yaml"
    yaml_file.write_text("manifest: m.csv\noutput: out\nkinds: {tone: 2, day_night: 1}\nstrength: [0.2, 0.4]\n")
    cfg = build(SynthesizeJobConfig, yaml_file, {"fmse_range": "50,800", "fg_ratio": "0.1,0.2"})
    assert cfg.kinds == {"tone": 2.0, "day_night": 1.0} and cfg.strength == (0.2, 0.4)
    assert cfg.fmse_range == (50.0, 800.0) and cfg.fg_ratio == (0.1, 0.2)
    assert build(SynthesizeJobConfig, None, {"manifest": "m", "output": "o", "kinds": "tone"}).kinds == {"tone": 0.3}
    for bad, field in [({"kinds": "paint"}, "kinds"), ({"fg_ratio": "0.5,0.9"}, "fg_ratio"),
                       ({"fmse_range": "9"}, "fmse_range"), ({"strength": "1,0"}, "strength"), ({"per_image": 0}, "per_image"),
                       ({"colour": 1}, "colour")]:
        with pytest.raises(ConfigError, match=field):
            build(SynthesizeJobConfig, None, {"manifest": "m", "output": "o", **bad})


def test_cli_flags_and_a_bad_config(tmp_path, capsys):
    a = build_parser().parse_args(["synthesize", "--manifest", "m.csv", "--output", "o", "--mask-source", "box",
                                   "--storage-option", "endpoint_url=http://h:9000", "--per-image", "3"])
    assert a.func.__name__ == "cmd_synthesize" and a.mask_source == "box" and a.per_image == 3
    assert main(["synthesize", "--manifest", str(tmp_path / "none.csv"), "--output", str(tmp_path / "o"),
                 "--kinds", "paint"]) == 2
    assert "kinds" in capsys.readouterr().err
