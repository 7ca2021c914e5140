"""`harmony evaluate`: its configuration."""

from __future__ import annotations

from typing import Any

from pydantic import Field, model_validator

from pipelines.config import JobConfig, Location, ReviewImagesOption, Strict, legacy_names
from pipelines.core.stage import PoolConfig


def _evaluate_pool() -> PoolConfig:
    return PoolConfig(num_cpus=1.0, num_gpus=0, batch_size=4, min_workers=1, max_workers=16)


class EvaluatePools(Strict):
    evaluate: PoolConfig = Field(default_factory=_evaluate_pool, description="the evaluation stage's tasks (CPU)")


class EvaluateJobConfig(JobConfig, ReviewImagesOption):
    """`harmony evaluate`: harmonized images (any method's) against ground truth, iHarmony4 protocol."""

    block_rows: int = Field(16, ge=1, description="manifest rows per Ray block (unit of streaming and of journal files)")
    manifest: Location = Field(description="manifest URI (parquet, csv or jsonl) with id, composite, mask, real, optional subset")
    predictions: Location = Field(
        description="folder of predictions (<id>.<png|jpg|jpeg|webp> or <composite stem>.png), or a harmonize "
        "output prefix (its images/ folder is used)"
    )
    output: Location = Field(description="output prefix URI: metrics/, summary.json and report.html are written under it")
    compare: Location | None = Field(None, description="a second predictions folder, evaluated side by side (compare_* columns)")
    use_gt_bg: bool = Field(False, description="paste the ground-truth background into each prediction before any metric")
    report: bool = Field(True, description="write report.html under the output prefix")
    pools: EvaluatePools = Field(default_factory=EvaluatePools)

    @model_validator(mode="before")
    @classmethod
    def _older_names(cls, data: Any) -> Any:
        return legacy_names(data, {"pool": "pools.evaluate"})
