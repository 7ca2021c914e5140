"""Typed job configuration: one pydantic model per job, loaded from YAML and flags in one place.

Precedence: defaults < YAML file (`--config`) < command-line flags. Validation happens
here, before any model is loaded or Ray is started, and errors name the field.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from harmony_ops.defaults import DEFAULT_REFINE_MAX_PIXELS, SCHEDULER_NAMES
from harmony_ops.resolution import ResolutionPolicy


class ConfigError(ValueError):
    """Configuration that cannot run; the message names the field."""


class JobError(RuntimeError):
    """The job cannot run (bad manifest, unreachable storage, broken checkpoint)."""


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Strict):
    engine: Literal["diffharmony", "baseline"] | None = Field(
        None,
        description="diffharmony (two-stage diffusion) or baseline (Lab colour-statistics transfer); "
        "unset: diffharmony when a model is given, else baseline",
    )
    model: str | None = Field(None, description="DiffHarmony checkpoint (diffusers layout): local path or fsspec URI")
    unet: str | None = Field(None, description="override for the UNet (model folder or pipeline folder)")
    vae: str | None = Field(None, description="override for the VAE, e.g. sd-vae-ft-mse")
    refiner: str | None = Field(
        "auto", description="refinement U-Net URI, 'none', or 'auto' (the model's refiner/ folder when present)"
    )
    scheduler: str = Field("euler_a", description=f"sampler: one of {sorted(SCHEDULER_NAMES)}")
    steps: int = Field(5, ge=1, le=1000, description="denoising steps (the paper uses 5)")
    device: str = Field("auto", description="auto (CUDA when available), cpu, cuda, cuda:N")
    dtype: Literal["auto", "fp32", "fp16", "bf16"] = Field("auto", description="auto: fp16 on CUDA, fp32 on CPU")
    allow_pickle: bool = Field(False, description="allow pickle-based weight files (they can run code when loaded)")
    refine_max_pixels: int = Field(
        DEFAULT_REFINE_MAX_PIXELS, gt=0, description="refine regions larger than this at a reduced scale"
    )

    @field_validator("scheduler")
    @classmethod
    def _known_scheduler(cls, v: str) -> str:
        if v not in SCHEDULER_NAMES:
            raise ValueError(f"unknown scheduler {v!r}; choose one of {sorted(SCHEDULER_NAMES)}")
        return v

    @model_validator(mode="after")
    def _model_needed(self) -> "ModelConfig":
        if self.engine is None:
            # validate_assignment would re-enter this validator: set the field directly.
            object.__setattr__(self, "engine", "diffharmony" if self.model else "baseline")
        if self.engine == "diffharmony" and not self.model:
            raise ValueError("engine diffharmony needs `model` (--model URI); use --engine baseline to run without one")
        return self

    def engine_kwargs(self, storage_options: dict | None = None) -> dict[str, Any]:
        if self.engine == "baseline":
            return {}
        return dict(
            model=self.model,
            unet=self.unet,
            vae=self.vae,
            refiner=self.refiner,
            scheduler=self.scheduler,
            steps=self.steps,
            device=self.device,
            dtype=self.dtype,
            storage_options=storage_options,
            allow_pickle=self.allow_pickle,
            refine_max_pixels=self.refine_max_pixels,
        )


class ResolutionConfig(Strict):
    mode: Literal["auto", "512", "1024"] = Field("auto", description="auto, or a fixed 512/1024-class inference size")
    small_fg_ratio: float = Field(0.05, ge=0, le=1, description="auto: context crop below this foreground ratio")
    crop_target_fg_ratio: float = Field(0.25, gt=0, le=1, description="auto: foreground share of the context crop")
    large_region_pixels: int = Field(768 * 768, gt=0, description="auto: regions this large run at 1024-class")
    class_sizes: tuple[int, int] = Field((512, 1024), description="sides of the 512- and 1024-class pixel budgets")
    feather: int = Field(0, ge=0, le=256, description="feather the paste-back inside the mask edge, in pixels")

    @field_validator("mode", mode="before")
    @classmethod
    def _str_mode(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) else v

    def policy(self) -> ResolutionPolicy:
        return ResolutionPolicy(
            mode=self.mode,
            small_fg_ratio=self.small_fg_ratio,
            crop_target_fg_ratio=self.crop_target_fg_ratio,
            large_region_pixels=self.large_region_pixels,
            class_sizes=tuple(self.class_sizes),
        )


def format_validation_error(exc: ValidationError) -> str:
    lines = []
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(config)"
        lines.append(f"  {loc}: {err['msg']}")
    return "invalid configuration:\n" + "\n".join(lines)


def load_yaml(path: str | Path | None) -> dict[str, Any]:
    if not path:
        return {}
    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except FileNotFoundError:
        raise ConfigError(f"config file {path} does not exist") from None
    except OSError as exc:
        raise ConfigError(f"config file {path} cannot be read: {exc.strerror or exc}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping at the top level")
    return data


def deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in override.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = v
    return out


def build(model_cls: type[BaseModel], yaml_path: str | Path | None, flags: dict[str, Any]):
    """Validate defaults < YAML < flags (flags given as nested dicts, None meaning 'not given')."""
    data = deep_merge(load_yaml(yaml_path), _drop_none(flags))
    try:
        return model_cls.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            v = _drop_none(v)
            if v:
                out[k] = v
        elif v is not None:
            out[k] = v
    return out


class ImageJobConfig(Strict):
    """`harmony image`: one composite and mask to one output file."""

    composite: str = Field(description="composite image path or URI")
    mask: str = Field(description="foreground mask path or URI")
    output: str = Field(description="output image path or URI")
    seed: int = Field(0, description="seed of this image's noise")
    model: ModelConfig = Field(default_factory=ModelConfig)
    resolution: ResolutionConfig = Field(default_factory=ResolutionConfig)
    storage_options: dict[str, Any] = Field(default_factory=dict, description="fsspec storage options")


class PoolConfig(Strict):
    num_cpus: float = Field(1.0, gt=0, description="CPUs per worker")
    num_gpus: float | None = Field(None, ge=0, description="GPUs per worker; unset: 1 when the cluster has GPUs, else 0")
    batch_size: int = Field(4, ge=1, description="rows per batch")
    min_workers: int = Field(1, ge=1, description="smallest pool size")
    max_workers: int = Field(1, ge=1, description="largest pool size (autoscaling between min and max)")
    max_tasks_in_flight: int = Field(2, ge=1, description="batches queued per actor (prefetch)")

    @model_validator(mode="after")
    def _sizes(self) -> "PoolConfig":
        if self.max_workers < self.min_workers:
            raise ValueError(f"max_workers ({self.max_workers}) < min_workers ({self.min_workers})")
        return self


def _decode_pool() -> PoolConfig:
    return PoolConfig(num_cpus=0.25, batch_size=4, min_workers=1, max_workers=4, num_gpus=0)


def _model_pool() -> PoolConfig:
    return PoolConfig(num_cpus=1.0, batch_size=4, min_workers=1, max_workers=1)


def _finish_pool() -> PoolConfig:
    return PoolConfig(num_cpus=0.25, batch_size=4, min_workers=1, max_workers=4, num_gpus=0)


class PoolsConfig(Strict):
    """Size decode/finish so the model pool never waits: roughly (decode+encode seconds per image x
    model images per second) CPU workers per model actor."""

    decode: PoolConfig = Field(default_factory=_decode_pool, description="fetch + decode + plan (CPU)")
    model: PoolConfig = Field(default_factory=_model_pool, description="stage 1 + refinement (GPU when present)")
    finish: PoolConfig = Field(default_factory=_finish_pool, description="composite + encode + write + metrics (CPU)")


class HarmonizeJobConfig(Strict):
    """`harmony harmonize`: a manifest of composites to harmonized images and metric tables."""

    manifest: str = Field(description="manifest URI (parquet, csv or jsonl)")
    output: str = Field(description="output prefix URI: images/, metrics/, summary.json are written under it")
    model: ModelConfig = Field(default_factory=ModelConfig)
    resolution: ResolutionConfig = Field(default_factory=ResolutionConfig)
    pools: PoolsConfig = Field(default_factory=PoolsConfig)
    seed: int = Field(0, description="job seed; each row's noise seed is derived from it and the row id")
    image_format: Literal["png", "jpg", "webp"] = Field("png", description="format of images/{id}.{ext}")
    limit: int | None = Field(None, ge=1, description="only the first N manifest rows")
    resume: bool = Field(True, description="skip rows already done with the same configuration")
    max_failed_fraction: float | None = Field(
        None, ge=0, le=1, description="exit non-zero when more than this fraction of rows failed or were invalid"
    )
    max_pixels: int = Field(64_000_000, gt=0, description="refuse images with more pixels (decompression bombs)")
    retries: int = Field(3, ge=0, le=10, description="storage retries with exponential backoff before a row fails")
    storage_options: dict[str, Any] = Field(default_factory=dict, description="fsspec options for every client")
    ray_address: str | None = Field(None, description="Ray cluster address; unset: RAY_ADDRESS or a local instance")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of a local Ray instance (unset: all)")
    block_rows: int = Field(16, ge=1, description="manifest rows per Ray block (unit of streaming and of journal files)")


def _evaluate_pool() -> PoolConfig:
    return PoolConfig(num_cpus=1.0, num_gpus=0, batch_size=4, min_workers=1, max_workers=16)


class EvaluateJobConfig(Strict):
    """`harmony evaluate`: harmonized images (any method's) against ground truth, iHarmony4 protocol."""

    manifest: str = Field(description="manifest URI (parquet, csv or jsonl) with id, composite, mask, real, optional subset")
    predictions: str = Field(
        description="folder of predictions (<id>.<png|jpg|jpeg|webp> or <composite stem>.png), or a harmonize "
        "output prefix (its images/ folder is used)"
    )
    output: str = Field(description="output prefix URI: metrics/, summary.json and report.html are written under it")
    compare: str | None = Field(None, description="a second predictions folder, evaluated side by side (compare_* columns)")
    use_gt_bg: bool = Field(False, description="paste the ground-truth background into each prediction before any metric")
    report: bool = Field(True, description="write report.html under the output prefix")
    pool: PoolConfig = Field(default_factory=_evaluate_pool, description="the evaluation stage's tasks (CPU)")
    limit: int | None = Field(None, ge=1, description="only the first N manifest rows")
    max_pixels: int = Field(64_000_000, gt=0, description="refuse images with more pixels (decompression bombs)")
    retries: int = Field(3, ge=0, le=10, description="storage retries with exponential backoff before a row fails")
    storage_options: dict[str, Any] = Field(default_factory=dict, description="fsspec options for every client")
    ray_address: str | None = Field(None, description="Ray cluster address; unset: RAY_ADDRESS or a local instance")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of a local Ray instance (unset: all)")
    block_rows: int = Field(16, ge=1, description="manifest rows per Ray block (unit of streaming and of journal files)")
