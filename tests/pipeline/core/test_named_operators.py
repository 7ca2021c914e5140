"""Every stage is its own Ray Data operator, named after the stage, in what Ray reports."""

from __future__ import annotations

import pandas as pd
import pytest

from pipelines.config import ModelConfig
from pipelines.jobs.harmonize.config import HarmonizeJobConfig
from pipelines.core.adapter import apply_stages
from pipelines.jobs.harmonize.decode import DecodeStage
from pipelines.jobs.harmonize.finish import FinishStage, job_columns
from pipelines.jobs.harmonize.model import ModelStage
from schemas.metrics import COLUMNS, to_arrow
from tests.pipeline.jobs.test_harmonize import local_dataset

pytestmark = pytest.mark.pipeline


def test_operators_are_named_decode_model_finish(ray_local, tmp_path):
    import ray

    from pipelines.io.manifest import prepare_rows

    manifest_path, manifest = local_dataset(tmp_path, good=2)
    cfg = HarmonizeJobConfig(manifest=str(manifest_path), output=str(tmp_path / "out"), model=ModelConfig(engine="baseline"))
    rows = prepare_rows(pd.read_csv(manifest_path), str(manifest_path), cfg.output, "png", 0)
    stages = [DecodeStage.for_job(cfg, False, cfg.pools.decode.on_cluster(False)),
              ModelStage.for_job(cfg, cfg.pools.model.on_cluster(False)),
              FinishStage.for_job(cfg, job_columns(cfg, "baseline", "k"), cfg.pools.finish.on_cluster(False))]
    ds = apply_stages(ray.data.from_pandas(rows), stages, inputs=rows.columns, keep=COLUMNS, finalize=to_arrow)
    done = ds.materialize()
    stats = done.stats()
    for name in ("decode", "model", "finish"):
        assert f"MapBatches({name})" in stats, stats
    assert "_run_stage_task" not in stats and "_StageWorker" not in stats
    assert (done.to_pandas()["status"] == "ok").all()
