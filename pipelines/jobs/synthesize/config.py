"""`harmony synthesize`: its configuration."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import Field, field_validator, model_validator

from harmony_ops.defaults import is_embedded
from harmony_ops.perturb import DEFAULT_KIND_WEIGHTS, normalise_weights
from pipelines.config import JobConfig, Location, ModelConfig, ResolutionConfig, Strict, legacy_names, model_pool
from pipelines.core.stage import PoolConfig


def _synthesize_pool() -> PoolConfig:
    return PoolConfig(num_cpus=1.0, num_gpus=0, batch_size=2, min_workers=1, max_workers=16)


def _parse_range(v: Any) -> Any:
    """`"MIN,MAX"` (flags) or a two-item list (YAML) to a pair of numbers."""
    if isinstance(v, str):
        parts = [p.strip() for p in v.split(",")]
        if len(parts) != 2 or not all(parts):
            raise ValueError(f"expected MIN,MAX, got {v!r}")
        return tuple(parts)
    return v


class SynthesizePools(Strict):
    synthesize: PoolConfig = Field(default_factory=_synthesize_pool,
                                   description="the synthesis stage's tasks (CPU); batch_size in input rows")
    model: PoolConfig = Field(default_factory=model_pool, description="method inverse: the model actors (GPU when "
                              "present); batch_size in input rows")


class SynthesizeJobConfig(JobConfig):
    """`harmony synthesize`: real images (+ masks) to iHarmony4-style training triples and their parameters."""

    manifest: Location = Field(description="input manifest URI (parquet, csv or jsonl) with id, real and, for --mask-source given, mask")
    output: Location = Field(description="output prefix URI: composite_images/, masks/, real_images/, manifest.parquet, params.parquet")
    mask_source: Literal["given", "ellipse", "box", "blob"] = Field(
        "given", description="given: the manifest's mask column; ellipse, box, blob: a random shape per sample"
    )
    fg_ratio: tuple[float, float] = Field((0.05, 0.4), description="random masks: foreground ratio range (MIN,MAX), max 0.7")
    per_image: int = Field(1, ge=1, le=100, description="samples (composites) per real image")
    # `| str`: the command line's "a,b" form reaches the validator as text (it always makes a mapping)
    kinds: dict[str, float] | str = Field(
        default_factory=lambda: dict(DEFAULT_KIND_WEIGHTS),
        description="perturbation kinds and their probabilities (normalised): colour_transfer, tone, day_night; "
        "'a,b' or 'a=0.5,b=0.5' on the command line (a kind without a weight gets its default)",
    )
    strength: tuple[float, float] = Field((0.5, 1.0), description="strength range (MIN,MAX): 0 is the identity, 1 the kind's full range")
    fmse_range: tuple[float, float] = Field(
        (100.0, 5000.0), description="keep composites whose fMSE against the real image (256 px protocol) is within MIN,MAX"
    )
    max_draws: int = Field(3, ge=1, le=20, description="draws tried per sample until one passes the fMSE filter")
    donor_pool: int = Field(256, ge=1, le=100_000, description="colour transfer: foregrounds of the first N rows are the donors")
    layout: Literal["composite", "cutout"] = Field(
        "composite", description="composite: composite_images/ + masks/ rows; cutout (classical method): each kept "
        "foreground also as an RGBA cutout in foregrounds/ with a soft (feathered) alpha, and manifest rows of "
        "foreground, background (the real image), x, y, real: the cutout manifest harmonize reads")
    jpeg_quality: int = Field(95, ge=50, le=100, description="JPEG quality of composite_images/ and real_images/")
    seed: int = Field(0, description="job seed; a sample depends only on it, the row id and the sample number")
    pools: SynthesizePools = Field(default_factory=SynthesizePools)
    method: Literal["classical", "inverse"] = Field(
        "classical", description="classical: perturb the foreground's colours; inverse: the inverse-harmonization model "
        "re-renders it (needs model.model, e.g. DST/inverse from convert-weights)"
    )
    model: ModelConfig = Field(default_factory=ModelConfig, description="inverse: the inverse model (DiffHarmony layout)")
    resolution: ResolutionConfig = Field(default_factory=ResolutionConfig, description="inverse: inference size planning")
    candidates: int = Field(4, ge=1, le=32, description="inverse: seeded candidates per sample; the largest fMSE in range is kept")

    @model_validator(mode="before")
    @classmethod
    def _older_names(cls, data: Any) -> Any:
        return legacy_names(data, {"pool": "pools.synthesize", "model_pool": "pools.model"})

    @model_validator(mode="after")
    def _cutouts_are_classical(self) -> "SynthesizeJobConfig":
        if self.layout == "cutout" and self.method != "classical":
            raise ValueError("layout cutout is written by method classical only")
        return self

    @model_validator(mode="after")
    def _inverse_needs_a_model(self) -> "SynthesizeJobConfig":
        if self.method == "inverse" and (self.model.engine != "diffharmony" or is_embedded(self.model.model)
                                         or "model" not in self.model.model_fields_set):
            raise ValueError("method inverse needs the inverse model: --model URI (e.g. DST/inverse from harmony convert-weights)")
        return self

    @field_validator("fg_ratio", "strength", "fmse_range", mode="before")
    @classmethod
    def _range_text(cls, v: Any) -> Any:
        return _parse_range(v)

    @field_validator("fg_ratio")
    @classmethod
    def _fg_ratio(cls, v: tuple[float, float]) -> tuple[float, float]:
        from harmony_ops.masks import check_fg_ratio

        return check_fg_ratio(v)

    @field_validator("strength")
    @classmethod
    def _strength(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 <= v[0] <= v[1] <= 3:
            raise ValueError(f"strength range must satisfy 0 <= min <= max <= 3, got {v}")
        return v

    @field_validator("fmse_range")
    @classmethod
    def _fmse_range(cls, v: tuple[float, float]) -> tuple[float, float]:
        if not 0 <= v[0] <= v[1]:
            raise ValueError(f"fMSE range must satisfy 0 <= min <= max, got {v}")
        return v

    @field_validator("kinds", mode="before")
    @classmethod
    def _kinds_text(cls, v: Any) -> Any:
        if isinstance(v, str):
            v = [p.strip() for p in v.split(",") if p.strip()]
        if isinstance(v, (list, tuple)):
            out: dict[str, Any] = {}
            for item in v:
                name, eq, weight = str(item).partition("=")
                name = name.strip()
                out[name] = weight.strip() if eq else DEFAULT_KIND_WEIGHTS.get(name, 1.0)
            return out
        return v

    @field_validator("kinds")
    @classmethod
    def _kinds(cls, v: dict[str, float]) -> dict[str, float]:
        normalise_weights(v)  # raises with the reason
        return {k: float(w) for k, w in v.items()}
