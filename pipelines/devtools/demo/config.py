"""`harmony demo`: its options."""

from __future__ import annotations

from typing import Literal

from pydantic import Field

from pipelines.config import Strict


class DemoOptions(Strict):
    output: str = Field("demo-output", description="local folder for data and results")
    model: str | None = Field(None, description="run DiffHarmony with this checkpoint (default: the embedded demo model)")
    engine: Literal["diffharmony", "baseline"] | None = Field(
        None, description="baseline: the Lab colour-statistics transfer instead")
    s3: bool = Field(False, description="go through an embedded S3 server (moto)")
    images: int = Field(8, ge=1, le=1000, description="number of sample composites")
    catalog: bool = Field(False, description="product cutouts (soft alpha) on scenes, harmonized with --fidelity free "
                          "and lighting, and a before/after picture (catalog-before-after.jpg)")
