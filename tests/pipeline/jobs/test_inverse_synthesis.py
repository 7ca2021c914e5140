"""A tiny archive in the released layout, converted, then `harmony synthesize --method inverse` and
`harmony harmonize` on what it made; and the inverse stage's selection rule without Ray."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from harmony_ops.convert import convert_weights
from harmony_ops.factory import write_archive
from pipelines.cli import main
from pipelines.jobs.synthesize.config import SynthesizeJobConfig
from pipelines.core.adapter import run_batch
from pipelines.io.manifest import read_manifest
from pipelines.jobs.synthesize.stage import InverseSynthesizeStage
from schemas.synthesis import to_arrow as params_to_arrow
from tests.pipeline.conftest import enc

from .test_synthesize import scene

SMALL = ("model:\n  steps: 1\nresolution:\n  class_sizes: [64, 128]\n")


@pytest.fixture(scope="module")
def converted(tmp_path_factory):
    d = tmp_path_factory.mktemp("released")
    write_archive(d / "archive", seed=0)
    convert_weights(str(d / "archive"), str(d / "ckpt"))
    return d / "ckpt"


@pytest.fixture(scope="module")
def reals(tmp_path_factory):
    data = tmp_path_factory.mktemp("reals")
    rows = []
    for k in range(2):
        real, mask = scene(k)
        (data / f"r{k}.png").write_bytes(enc(real))
        (data / f"m{k}.png").write_bytes(enc(mask))
        rows.append({"id": f"r{k}", "real": f"r{k}.png", "mask": f"m{k}.png"})
    pd.DataFrame(rows).to_csv(data / "manifest.csv", index=False)
    return data


def test_stage_keeps_the_largest_fmse_in_range_over_a_bit_identical_background(converted, reals, tmp_path):
    cfg = SynthesizeJobConfig.model_validate({
        "manifest": str(reals / "manifest.csv"), "output": str(tmp_path / "out"), "method": "inverse", "candidates": 3,
        "fmse_range": (0, 1e9), "model": {"model": str(converted / "inverse"), "steps": 1, "device": "cpu"},
        "resolution": {"class_sizes": (64, 128)}, "model_pool": {"num_gpus": 0, "num_cpus": 1}})
    stage = InverseSynthesizeStage(cfg=cfg, model_id="m1", pool=cfg.pools.model.on_cluster(False))
    stage.setup()  # as an actor does, once
    batch = pd.read_csv(reals / "manifest.csv").iloc[:1]
    t = run_batch([stage], batch, finalize=params_to_arrow).to_pandas()
    assert list(t["candidate"]) == [0, 1, 2] and t["seed"].nunique() == 3 and set(t["method"]) == {"inverse"}
    assert set(t["model"]) == {"m1"} and set(t["kind"]) == {"inverse"}
    kept = t[t["kept"]]
    assert len(kept) == 1 and kept["fmse"].iloc[0] == t["fmse"].max()
    assert set(t.loc[~t["kept"], "reason"]) == {"not_selected"}
    comp = np.asarray(Image.open(tmp_path / "out" / kept["composite"].iloc[0]).convert("RGB"))
    real_stored = np.asarray(Image.open(tmp_path / "out" / kept["real"].iloc[0]).convert("RGB"))
    mask = np.asarray(Image.open(tmp_path / "out" / kept["mask"].iloc[0])) >= 128
    assert np.array_equal(comp[~mask], real_stored[~mask])  # the stored real image's background, bit for bit
    assert (comp[mask].astype(int) - real_stored[mask]).any()  # the foreground was re-rendered
    # a narrow range keeps none: every candidate is out of range, none kept
    narrow = stage.cfg.model_copy(update={"fmse_range": (0.0, float(t["fmse"].min()) / 2)})
    narrow_stage = InverseSynthesizeStage(cfg=narrow, model_id="m1", pool=stage.pool)
    narrow_stage.engine = stage.engine
    t2 = run_batch([narrow_stage], batch, finalize=params_to_arrow).to_pandas()
    assert not t2["kept"].any() and set(t2["reason"]) == {"fmse_above_range"}


@pytest.mark.pipeline
def test_converted_archive_runs_inverse_synthesis_then_harmonize(ray_local, converted, reals, tmp_path, capsys):
    (tmp_path / "small.yaml").write_text(SMALL + "model_pool:\n  num_cpus: 0.5\n  num_gpus: 0\n  max_workers: 1\n")
    out = tmp_path / "synth"
    code = main(["synthesize", "--manifest", str(reals / "manifest.csv"), "--output", str(out), "--method", "inverse",
                 "--model", str(converted / "inverse"), "--candidates", "2", "--fmse-range", "0,1e9", "--device", "cpu",
                 "--config", str(tmp_path / "small.yaml")])
    text = capsys.readouterr().out
    assert code == 0, text
    assert "method inverse" in text and "classifier whose weights are not released" in text and "kept 2 samples" in text
    m = read_manifest(str(out / "manifest.parquet"))
    assert len(m) == 2 and set(m["subset"]) == {"inverse"} and all(c.endswith(".png") for c in m["composite"])
    params = pd.read_parquet(out / "params.parquet")
    assert len(params) == 4 and params["model"].notna().all() and params["seed"].notna().all()

    (tmp_path / "h.yaml").write_text(SMALL + "pools:\n  model:\n    num_cpus: 0.5\n    num_gpus: 0\n")
    code = main(["harmonize", "--manifest", str(out / "manifest.parquet"), "--output", str(tmp_path / "harm"),
                 "--model", str(converted), "--device", "cpu", "--config", str(tmp_path / "h.yaml")])
    assert code == 0, capsys.readouterr()
    assert len(list((tmp_path / "harm" / "images").iterdir())) == 2
