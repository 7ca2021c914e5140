"""`harmony image`: its configuration."""

from __future__ import annotations

from typing import Any

from pydantic import Field

from pipelines.config import Location, ModelConfig, ResolutionConfig, Strict


class ImageJobConfig(Strict):
    """`harmony image`: one composite and mask to one output file."""

    composite: Location = Field(description="composite image path or URI")
    mask: Location = Field(description="foreground mask path or URI")
    output: Location = Field(description="output image path or URI")
    seed: int = Field(0, description="seed of this image's noise")
    model: ModelConfig = Field(default_factory=ModelConfig)
    resolution: ResolutionConfig = Field(default_factory=ResolutionConfig)
    storage_options: dict[str, Any] = Field(default_factory=dict, description="fsspec storage options")
