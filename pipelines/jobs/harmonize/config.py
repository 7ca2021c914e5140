"""`harmony harmonize`: its configuration."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, field_validator, model_validator

from pipelines.config import FidelityConfig, JobConfig, Location, ModelConfig, PoolsConfig, ResolutionConfig, ReviewImagesOption


class HarmonizeJobConfig(JobConfig, ReviewImagesOption):
    """`harmony harmonize`: a manifest of composites to harmonized images and metric tables."""

    block_rows: int = Field(16, ge=1, description="manifest rows per Ray block (unit of streaming and of journal files)")
    manifest: Location = Field(description="manifest URI (parquet, csv or jsonl)")
    output: Location = Field(description="output prefix URI: images/, metrics/, summary.json are written under it")
    model: ModelConfig = Field(default_factory=ModelConfig)
    resolution: ResolutionConfig = Field(default_factory=ResolutionConfig)
    fidelity: FidelityConfig = Field(default_factory=FidelityConfig)
    soft_paste: bool = Field(False, description="composite rows: the mask's grey levels (8 or 16 bit) are the "
                             "paste-back alpha, while the model still sees the mask binarised; cutout rows always "
                             "paste with their alpha")
    pools: PoolsConfig = Field(default_factory=PoolsConfig)
    seed: int = Field(0, description="job seed; each row's noise seed is derived from it and the row id")
    image_format: Literal["png", "jpg", "webp"] = Field("png", description="format of images/{id}.{ext} (jpeg: jpg)")
    resume: bool = Field(True, description="skip rows already done with the same configuration")
    max_failed_fraction: float | None = Field(
        None, ge=0, le=1, description="exit non-zero when more than this fraction of rows failed or were invalid"
    )
    actors: int | str | None = Field(
        None, exclude=True, description="model actors: N, or MIN,MAX to autoscale between (pools.model.min_workers "
        "and max_workers)")

    @field_validator("image_format", mode="before")
    @classmethod
    def _jpeg(cls, v):
        return "jpg" if isinstance(v, str) and v.lower() == "jpeg" else v

    @model_validator(mode="after")
    def _actors(self) -> "HarmonizeJobConfig":
        if self.actors:
            lo, _, hi = str(self.actors).partition(",")
            try:
                sizes = {"min_workers": int(lo), "max_workers": int(hi or lo)}
            except ValueError:
                raise ValueError(f"actors: N or MIN,MAX, got {self.actors!r}") from None
            pools = self.pools.model_copy(update={"model": self.pools.model.model_validate(
                {**self.pools.model.model_dump(exclude_unset=True), **sizes})})
            object.__setattr__(self, "pools", pools)  # validate_assignment would run this validator again
            object.__setattr__(self, "actors", None)
        return self
