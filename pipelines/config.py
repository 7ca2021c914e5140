"""Typed job configuration: one pydantic model per job, loaded from YAML and flags in one place.

Precedence: defaults < YAML file (`--config`) < command-line flags. Validation happens
here, before any model is loaded or Ray is started, and errors name the field.
"""

from __future__ import annotations

from pathlib import Path
import os
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from harmony_ops.defaults import DEFAULT_REFINE_MAX_PIXELS, EMBEDDED_MODEL_DIR, SCHEDULER_NAMES, is_embedded
from harmony_ops.perturb import DEFAULT_KIND_WEIGHTS, normalise_weights
from harmony_ops.resolution import ResolutionPolicy
from pipelines.core.stage import PoolConfig
from pipelines.errors import ConfigError


def absolute_location(v: str | None) -> str | None:
    """A local path made absolute where the user typed it (the driver's folder): Ray workers run in
    folders of their own, where a relative path names nothing. URIs and the refiner's words pass."""
    if not v or "://" in v or v in ("auto", "none"):
        return v
    return os.path.abspath(os.path.expanduser(v))


# A path or URI that reaches workers.
Location = Annotated[str, AfterValidator(absolute_location)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ModelConfig(Strict):
    engine: Literal["diffharmony", "baseline"] | None = Field(
        None,
        description="diffharmony (two-stage diffusion) or baseline (Lab colour-statistics transfer); "
        "unset: diffharmony",
    )
    model: Location | None = Field(None, description="DiffHarmony checkpoint (diffusers layout): local path or fsspec URI; "
                              "unset: the embedded demo model (harmony_ops/weights/demo, trained by `make model`)")
    unet: Location | None = Field(None, description="override for the UNet (model folder or pipeline folder)")
    vae: Location | None = Field(None, description="override for the VAE, e.g. sd-vae-ft-mse")
    refiner: Location | None = Field(
        "auto", description="refinement U-Net URI, 'none', or 'auto' (the model's refiner/ folder when present)"
    )
    scheduler: str = Field("euler_a", description=f"sampler: one of {sorted(SCHEDULER_NAMES)}")
    steps: int = Field(5, ge=1, le=1000, description="denoising steps (the paper uses 5)")
    device: str = Field("auto", description="auto (CUDA when available), cpu, cuda, cuda:N")
    dtype: Literal["auto", "fp32", "fp16", "bf16"] = Field("auto", description="auto: fp16 on CUDA, fp32 on CPU")
    harmony_vae: Location | None = Field(None, description="Harmony-VAE (DiffHarmony++) URI; default: the model's harmony_vae/ folder")
    decoder: Literal["auto", "vae", "harmony-vae"] = Field(
        "auto", description="auto: the Harmony-VAE when there is one, else the VAE; vae; harmony-vae (an error without one)"
    )
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
        # validate_assignment would re-enter this validator: set the fields directly.
        if self.engine is None:
            object.__setattr__(self, "engine", "diffharmony")
        if self.engine == "diffharmony" and not self.model:
            object.__setattr__(self, "model", str(EMBEDDED_MODEL_DIR))
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
            harmony_vae=self.harmony_vae,
            decoder=self.decoder,
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

    def adopt_class_sizes(self, declared: tuple[int, int] | None) -> None:
        """A model's declared class sizes (model_index.json `harmony.class_sizes`) replace the
        default 512 / 1024 px, unless the configuration set class_sizes itself."""
        if declared and "class_sizes" not in self.model_fields_set:
            self.class_sizes = tuple(declared)

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

    composite: Location = Field(description="composite image path or URI")
    mask: Location = Field(description="foreground mask path or URI")
    output: Location = Field(description="output image path or URI")
    seed: int = Field(0, description="seed of this image's noise")
    model: ModelConfig = Field(default_factory=ModelConfig)
    resolution: ResolutionConfig = Field(default_factory=ResolutionConfig)
    storage_options: dict[str, Any] = Field(default_factory=dict, description="fsspec storage options")


def _decode_pool() -> PoolConfig:
    return PoolConfig(num_cpus=0.25, batch_size=4, min_workers=1, max_workers=4, num_gpus=0)


def _model_pool() -> PoolConfig:
    # num_cpus left at PoolConfig's default (1.0) and unset: the job gives the baseline engine a smaller share
    # when the operator has not chosen one (pipelines/jobs/harmonize/job.py: model_pool).
    return PoolConfig(batch_size=4, min_workers=1, max_workers=1)


def _finish_pool() -> PoolConfig:
    return PoolConfig(num_cpus=0.25, batch_size=4, min_workers=1, max_workers=4, num_gpus=0)


class PoolsConfig(Strict):
    """Size decode/finish so the model pool never waits: roughly (decode+encode seconds per image x
    model images per second) CPU workers per model actor."""

    decode: PoolConfig = Field(default_factory=_decode_pool, description="fetch + decode + plan (CPU)")
    model: PoolConfig = Field(default_factory=_model_pool, description="stage 1 + refinement (GPU when present)")
    finish: PoolConfig = Field(default_factory=_finish_pool, description="composite + encode + write + metrics (CPU)")


class JobConfig(Strict):
    """Fields every Ray job shares: storage, robustness, where to run."""

    limit: int | None = Field(None, ge=1, description="only the first N manifest rows")
    max_pixels: int = Field(64_000_000, gt=0, description="refuse images with more pixels (decompression bombs)")
    retries: int = Field(3, ge=0, le=10, description="storage retries with exponential backoff before a row fails")
    max_worker_crashes: int = Field(
        2, ge=1, le=20, description="worker deaths (native crash, OOM kill) on one batch before it is split; a row that "
        "still kills its worker this often is failed with worker_crashed"
    )
    storage_options: dict[str, Any] = Field(default_factory=dict, description="fsspec options for every client")
    ray_address: str | None = Field(None, description="Ray cluster address; unset: RAY_ADDRESS or a local instance")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of a local Ray instance (unset: all)")
    allow_uri: list[str] = Field(
        default_factory=list,
        description="prefixes manifest rows (and HTTP(S) checkpoints) may read from besides the manifest's own storage "
        "(its folder, or its bucket); HTTP(S) only under such a prefix (--allow-uri PREFIX, repeatable)",
    )

    @field_validator("allow_uri")
    @classmethod
    def _allow_uri(cls, v: list[str]) -> list[str]:
        from pipelines.io.access import parse_prefix

        for prefix in v:
            parse_prefix(prefix)  # raises ValueError naming the prefix
        return v

    force: bool = Field(False, description="take over the output prefix's lease even when another run holds it (--force)")
    lease_ttl_seconds: float = Field(
        120.0, ge=1, le=86400, description="the output prefix's lease expires this long after its holder's last heartbeat"
    )


class HarmonizeJobConfig(JobConfig):
    """`harmony harmonize`: a manifest of composites to harmonized images and metric tables."""

    block_rows: int = Field(16, ge=1, description="manifest rows per Ray block (unit of streaming and of journal files)")
    manifest: Location = Field(description="manifest URI (parquet, csv or jsonl)")
    output: Location = Field(description="output prefix URI: images/, metrics/, summary.json are written under it")
    model: ModelConfig = Field(default_factory=ModelConfig)
    resolution: ResolutionConfig = Field(default_factory=ResolutionConfig)
    pools: PoolsConfig = Field(default_factory=PoolsConfig)
    seed: int = Field(0, description="job seed; each row's noise seed is derived from it and the row id")
    image_format: Literal["png", "jpg", "webp"] = Field("png", description="format of images/{id}.{ext}")
    resume: bool = Field(True, description="skip rows already done with the same configuration")
    max_failed_fraction: float | None = Field(
        None, ge=0, le=1, description="exit non-zero when more than this fraction of rows failed or were invalid"
    )


def _evaluate_pool() -> PoolConfig:
    return PoolConfig(num_cpus=1.0, num_gpus=0, batch_size=4, min_workers=1, max_workers=16)


class EvaluateJobConfig(JobConfig):
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
    pool: PoolConfig = Field(default_factory=_evaluate_pool, description="the evaluation stage's tasks (CPU)")


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


class SynthesizeJobConfig(JobConfig):
    """`harmony synthesize`: real images (+ masks) to iHarmony4-style training triples and their parameters."""

    manifest: Location = Field(description="input manifest URI (parquet, csv or jsonl) with id, real and, for --mask-source given, mask")
    output: Location = Field(description="output prefix URI: composite_images/, masks/, real_images/, manifest.parquet, params.parquet")
    mask_source: Literal["given", "ellipse", "box", "blob"] = Field(
        "given", description="given: the manifest's mask column; ellipse, box, blob: a random shape per sample"
    )
    fg_ratio: tuple[float, float] = Field((0.05, 0.4), description="random masks: foreground ratio range (MIN,MAX), max 0.7")
    per_image: int = Field(1, ge=1, le=100, description="samples (composites) per real image")
    kinds: dict[str, float] = Field(
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
    jpeg_quality: int = Field(95, ge=50, le=100, description="JPEG quality of composite_images/ and real_images/")
    seed: int = Field(0, description="job seed; a sample depends only on it, the row id and the sample number")
    pool: PoolConfig = Field(default_factory=_synthesize_pool, description="the synthesis stage's tasks (CPU); batch_size in input rows")
    method: Literal["classical", "inverse"] = Field(
        "classical", description="classical: perturb the foreground's colours; inverse: the inverse-harmonization model "
        "re-renders it (needs model.model, e.g. DST/inverse from convert-weights)"
    )
    model: ModelConfig = Field(default_factory=ModelConfig, description="inverse: the inverse model (DiffHarmony layout)")
    resolution: ResolutionConfig = Field(default_factory=ResolutionConfig, description="inverse: inference size planning")
    candidates: int = Field(4, ge=1, le=32, description="inverse: seeded candidates per sample; the largest fMSE in range is kept")
    model_pool: PoolConfig = Field(default_factory=_model_pool, description="inverse: the model actors (GPU when present); "
                                   "batch_size in input rows")

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


def _train_decode_pool() -> PoolConfig:
    return PoolConfig(num_cpus=0.25, num_gpus=0, batch_size=8, min_workers=1, max_workers=4)


class TrainJobConfig(JobConfig):
    """`harmony train`: fine-tune one part of a DiffHarmony checkpoint on Ray Train."""

    block_rows: int = Field(8, ge=1, description="manifest rows per Ray block")
    task: Literal["stage1", "refiner", "inverse", "harmony-vae", "vae"] = Field(
        description="stage1: the inpainting UNet; refiner: the stage-2 U-Net; inverse: stage 1 with real and composite "
        "swapped; harmony-vae: DiffHarmony++'s conditional decoder; vae: the AutoencoderKL itself, for reconstruction "
        "(from scratch when no pretrained VAE can be had; train it before stage 1, whose latents it defines)"
    )
    data: Location = Field(description="training manifest (composite, mask, real), as synthesize and import-iharmony4 write")
    init: Location = Field(description="checkpoint to start from; its other parts are copied into model/ unchanged")
    output: Location = Field(description="output prefix URI: model/, metrics/, checkpoints/, summary.json, report/")
    validate_data: Location | None = Field(None, alias="validate", description="validation manifest (composite, mask, real)")
    validate_rows: int = Field(8, ge=1, le=1024, description="validation rows used (the first N valid ones)")
    workers: int = Field(1, ge=1, le=1024, description="Ray Train workers (DDP ranks)")
    gpus_per_worker: float = Field(0.0, ge=0, description="GPUs per worker; 0 trains on CPU (gloo)")
    cpus_per_worker: float | None = Field(
        None, gt=0, description="CPUs reserved per worker; unset: 1, or on a local Ray that has too few CPUs an equal "
        "share of what the data stage leaves")
    resource_wait_seconds: float = Field(
        600.0, ge=0, description="on a cluster joined by address (which an autoscaler may grow), how long to wait for "
        "the workers' resources before stopping; a local Ray never grows, so a request it cannot hold stops at once")
    max_steps: int = Field(1000, ge=1, description="train until this optimisation step (a re-run continues to it)")
    batch_size: int = Field(4, ge=1, description="samples per worker per step")
    lr: float = Field(1e-5, gt=0, le=1, description="AdamW learning rate after warmup")
    weight_decay: float = Field(1e-2, ge=0, description="AdamW weight decay (the reference's default)")
    warmup_steps: int = Field(0, ge=0, description="linear warmup steps, then constant")
    resolution: int = Field(512, ge=32, le=2048, description="training side in pixels (a multiple of the model's stride)")
    random_crop: bool = Field(True, description="random resized crop (scale 0.5-1) before resizing")
    random_flip: bool = Field(True, description="horizontal flip with probability 0.5")
    plain_mse: bool = Field(False, description="stage1/inverse: plain MSE instead of the foreground-weighted MSE")
    checkpoint_every: int = Field(500, ge=1, description="save a resumable checkpoint every N steps (and at the end)")
    validate_every: int = Field(500, ge=1, description="validate every N steps (and at the end) when --validate is given")
    log_every: int = Field(10, ge=1, description="progress line every N steps")
    ema: bool = Field(True, description="keep an EMA of the trained weights; model/ then holds the EMA weights")
    ema_decay: float = Field(0.9999, gt=0, lt=1, description="EMA decay (diffusers EMAModel, with its warmup)")
    precision: Literal["auto", "fp32", "bf16", "fp16"] = Field("auto", description="autocast on GPU (auto: bf16); CPU runs fp32")
    sampler_steps: int = Field(5, ge=1, le=100, description="Euler-A steps of the frozen stage 1 (refiner inputs, validation)")
    stage1_cache: Location | None = Field(
        None, description="refiner: URI of a stage-1 cache; the frozen --init stage 1 runs once over --data, its outputs "
        "are written there as PNGs with a cache manifest (stage1.parquet) and reused by later runs whose init model, "
        "resolution, sampler steps and seed match (else rebuilt); unset: stage 1 runs online at every step",
    )
    seed: int = Field(0, description="seed of initial noise and per-step randomness")
    max_failures: int = Field(
        3, ge=0, le=100, description="worker deaths and transient errors survived (the run restarts from its last "
        "checkpoint); errors no restart can fix (a missing or broken --init, a shape mismatch) stop the run at once")
    decode_pool: PoolConfig = Field(default_factory=_train_decode_pool, description="fetch + decode + augment (CPU tasks)")

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)

    @model_validator(mode="after")
    def _sizes(self) -> "TrainJobConfig":
        if self.resolution % 32:
            raise ValueError(f"resolution must be a multiple of 32, got {self.resolution}")
        if self.stage1_cache and self.task != "refiner":
            raise ValueError(f"stage1_cache is for --task refiner, not {self.task}")
        return self
