"""`harmony image`: its configuration."""

from __future__ import annotations

from pydantic import Field

from pydantic_settings import CliPositionalArg

from pipelines.config import FidelityConfig, Location, ModelConfig, ResolutionConfig, StorageOptions


class ImageJobConfig(StorageOptions):
    """`harmony image`: one composite and mask to one output file."""

    composite: CliPositionalArg[Location] = Field(description="the composite image: local path or URI (png, jpg, webp)")
    mask: CliPositionalArg[Location] = Field(description="its foreground mask (white = foreground), same size as the "
                                             "composite")
    output: Location = Field(description="output image (.png, .jpg, .webp), local path or URI")
    seed: int = Field(0, description="seed of this image's noise: the same seed gives the same output")
    model: ModelConfig = Field(default_factory=ModelConfig)
    resolution: ResolutionConfig = Field(default_factory=ResolutionConfig)
    fidelity: FidelityConfig = Field(default_factory=FidelityConfig)
