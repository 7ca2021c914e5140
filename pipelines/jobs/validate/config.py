"""`harmony validate`: its options."""

from __future__ import annotations

from pydantic import Field

from pipelines.config import Location, StorageOptions, cpu_pool
from pipelines.core.stage import PoolConfig


class ValidateOptions(StorageOptions):
    manifest: Location = Field(description="manifest URI (parquet, csv or jsonl)")
    check_objects: bool = Field(True, description="check that every object exists (--no-check-objects: only the table)")
    allow_uri: list[str] = Field(default_factory=list, description="let manifest rows read under this prefix besides "
                                 "the manifest's own folder or bucket (repeatable)")
    deep: bool = Field(False, description="also fetch and decode every row as harmonize would (decode guards, sizes "
                       "after orientation, empty and full masks, placements), as a Ray job on CPU workers; no model runs")
    output: Location | None = Field(None, description="--deep: write validation.parquet (one row per manifest row) "
                                    "under this prefix")
    max_pixels: int = Field(64_000_000, gt=0, description="--deep: refuse images with more pixels, as the jobs do")
    retries: int = Field(3, ge=0, le=10, description="--deep: storage retries before a row fails")
    ray_address: str | None = Field(None, description="--deep: Ray cluster address; unset: RAY_ADDRESS or a local "
                                    "instance")
    pool: PoolConfig = Field(default_factory=cpu_pool, description="--deep: the decoding tasks (CPU)")
