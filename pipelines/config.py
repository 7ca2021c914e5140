"""What the jobs' configurations share: storage, robustness and where to run (`JobConfig`), the model,
resolution and pool settings, paths made absolute, and loading one from YAML and flags.

Each job's own model lives beside the job (`pipelines/jobs/<job>/config.py`). Precedence: defaults <
YAML file (`--config`) < command-line flags. Validation happens before any model is loaded or Ray is
started, and errors name the field.
"""

from __future__ import annotations

import math

from pathlib import Path
import os
from typing import Annotated, Any, Literal

import yaml
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from harmony_ops.defaults import DEFAULT_REFINE_MAX_PIXELS, EMBEDDED_MODEL_DIR, SCHEDULER_NAMES, default_engine
from harmony_ops.resolution import ResolutionPolicy
from pipelines.core.stage import PoolConfig
from pipelines.errors import ConfigError


def absolute_location(v: str | None) -> str | None:
    """A local path made absolute where the user typed it (the driver's folder): Ray workers run in
    folders of their own, where a relative path names nothing. URIs and the refiner's words pass."""
    if v and "://" in v:
        from pipelines.io.storage import normalise_uri

        return normalise_uri(v)
    if not v or v in ("auto", "none"):
        return v
    return os.path.abspath(os.path.expanduser(v))


# A path or URI that reaches workers.
Location = Annotated[str, AfterValidator(absolute_location)]


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", validate_assignment=True)


class ReviewImagesOption(Strict):
    """Declared once for the jobs that write a report (harmonize, evaluate)."""

    review_images: bool = Field(True, description="write each row's review images under report_files/rows/<row>/ "
                                "(composite, mask, ground truth, compare output, difference map at full resolution; a "
                                "thumbnail) for the report's detail view; --no-review-images saves their storage")


class ModelConfig(Strict):
    engine: Literal["diffharmony", "baseline"] | None = Field(
        None,
        description="diffharmony (two-stage diffusion) or baseline (Lab colour-statistics transfer); unset: "
        "diffharmony with --model; without, the embedded model where its recorded quality benchmark shows it improves "
        "unseen images (harmony bench --sections quality), else baseline",
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
        if self.engine is None:  # a model given: it runs; none: the embedded model only where it earns it
            object.__setattr__(self, "engine", "diffharmony" if self.model else default_engine())
        if self.engine == "diffharmony" and not self.model:
            object.__setattr__(self, "model", str(EMBEDDED_MODEL_DIR))
        return self

    def device_problem(self, gpus_per_worker: float) -> str | None:
        """Why `device` cannot work in a Ray worker given `gpus_per_worker` GPUs (it sees them as cuda:0, ...)."""
        d = self.device
        if self.engine == "baseline" or d in ("auto", "cpu"):
            return None
        if d.startswith("cuda"):
            if not gpus_per_worker:
                return f"model.device {d}: the model pool has no GPU (num_gpus 0 on this cluster); use auto or cpu"
            index = d.partition(":")[2]
            if index and (not index.isdigit() or int(index) >= max(1, math.ceil(gpus_per_worker))):
                return (f"model.device {d}: each model worker sees only its own {math.ceil(gpus_per_worker)} GPU(s), "
                        f"as cuda:0{'' if gpus_per_worker <= 1 else f' to cuda:{math.ceil(gpus_per_worker) - 1}'}")
        return None

    @property
    def by_default(self) -> bool:
        """Neither an engine nor a model was named: the engine is the quality benchmark's choice."""
        return not {"engine", "model"} & self.model_fields_set

    def label(self) -> str:
        """What a start banner says runs (and, where it was not named, why)."""
        from harmony_ops.defaults import model_label

        return model_label(self.engine, self.model, self.by_default)

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
    class_sizes: tuple[int, int] = Field((512, 1024), description="sides of the 512- and 1024-class pixel budgets "
                                         "(multiples of 8, the VAE's factor; the first not larger than the second)")
    feather: int = Field(0, ge=0, le=256, description="feather the paste-back inside the mask edge, in pixels")

    @model_validator(mode="before")
    @classmethod
    def _scalar(cls, v: Any) -> Any:
        # `resolution: 512` (YAML) or `--resolution 512`: the mode, as `resolution` reads in the train job
        return {"mode": v} if isinstance(v, (int, str)) else v

    @field_validator("mode", mode="before")
    @classmethod
    def _str_mode(cls, v: Any) -> Any:
        return str(v) if isinstance(v, int) else v

    @field_validator("class_sizes")
    @classmethod
    def _sizes(cls, v: tuple[int, int]) -> tuple[int, int]:
        small, large = v
        if small < 8 or large < 8 or small % 8 or large % 8 or small > large:
            raise ValueError(f"class_sizes {list(v)}: two sides of at least 8 px, multiples of 8 (the VAE's factor), "
                             "the first not larger than the second")
        return v

    def adopted(self, declared: tuple[int, int] | None) -> "ResolutionConfig":
        """This configuration with a model's declared class sizes (model_index.json `harmony.class_sizes`)
        in place of the default 512 / 1024 px, unless it set class_sizes itself (a copy: self is unchanged)."""
        if declared and "class_sizes" not in self.model_fields_set:
            return self.model_copy(update={"class_sizes": tuple(declared)})
        return self

    def adopt_class_sizes(self, declared: tuple[int, int] | None) -> None:
        """`adopted`, in place."""
        if (new := self.adopted(declared)) is not self:
            self.class_sizes = new.class_sizes

    def policy(self) -> ResolutionPolicy:
        return ResolutionPolicy(
            mode=self.mode,
            small_fg_ratio=self.small_fg_ratio,
            crop_target_fg_ratio=self.crop_target_fg_ratio,
            large_region_pixels=self.large_region_pixels,
            class_sizes=tuple(self.class_sizes),
        )


class FidelityConfig(Strict):
    """Colour fidelity of the delivered foreground (harmony_ops/fidelity.py), for every engine."""

    mode: Literal["free", "lighting"] = Field(
        "free", description="free: the engine's output (the iHarmony4 protocol); lighting: the product keeps its "
        "chroma per pixel, takes its lightness from the engine, and its mean colour may shift by at most "
        "max_chroma_shift toward the engine's (the cast of the scene's light)")
    max_chroma_shift: float | None = Field(
        None, ge=0, le=100, description="bound, in ΔE76, on the shift of the foreground's mean a*b*; lighting: "
        "unset is 3; free: only checked (the fidelity_ok column), never enforced")

    @model_validator(mode="before")
    @classmethod
    def _scalar(cls, v: Any) -> Any:
        return {"mode": v} if isinstance(v, str) else v  # `fidelity: lighting`

    def audit_bound(self) -> float | None:
        """The bound fidelity_ok checks: the one enforced (lighting), or the one set for an audit."""
        if self.mode == "lighting":
            from harmony_ops.fidelity import DEFAULT_MAX_CHROMA_SHIFT

            return DEFAULT_MAX_CHROMA_SHIFT if self.max_chroma_shift is None else self.max_chroma_shift
        return self.max_chroma_shift


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
    if _expanded_size(data, YAML_MAX_VALUES) > YAML_MAX_VALUES:
        raise ConfigError(f"config file {path} expands to more than {YAML_MAX_VALUES} values (YAML aliases repeating "
                          "aliases?): refused")
    return data


# A job configuration is a few hundred values. YAML aliases share one node; expanded (as a summary.json would
# write them), nine levels of nine aliases make 387 million values from a few lines.
YAML_MAX_VALUES = 100_000


def _expanded_size(value, limit: int) -> int:
    """How many values `value` holds with every shared (aliased) node counted each time it appears; stops
    counting past `limit`."""
    count, stack = 0, [value]
    while stack and count <= limit:
        v = stack.pop()
        count += 1
        if isinstance(v, dict):
            stack.extend(v.keys())
            stack.extend(v.values())
        elif isinstance(v, (list, tuple)):
            stack.extend(v)
    return count


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
    data = deep_merge(_expand_shorthands(model_cls, load_yaml(yaml_path)), _drop_none(flags))
    try:
        return model_cls.model_validate(data)
    except ValidationError as exc:
        raise ConfigError(format_validation_error(exc)) from None


def _expand_shorthands(model_cls: type[BaseModel], data: dict[str, Any]) -> dict[str, Any]:
    """`resolution: 512`, `fidelity: lighting` (a settings model given by its `mode`) as {"mode": ...}, before
    flags are merged in: `--feather 3` must add to the YAML's mode, not replace it."""
    out = dict(data)
    for name, f in model_cls.model_fields.items():
        sub, v = f.annotation, out.get(name)
        if isinstance(sub, type) and issubclass(sub, BaseModel) and "mode" in sub.model_fields \
                and isinstance(v, (str, int)) and not isinstance(v, bool):
            out[name] = {"mode": v}
    return out


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


def cpu_pool() -> PoolConfig:
    """A pool of CPU tasks: a quarter CPU each, up to 4."""
    return PoolConfig(num_cpus=0.25, batch_size=4, min_workers=1, max_workers=4, num_gpus=0)


def model_pool() -> PoolConfig:
    # num_cpus left at PoolConfig's default (1.0) and unset: the job gives the baseline engine a smaller share
    # when the operator has not chosen one (pipelines/jobs/harmonize/job.py: model_pool).
    return PoolConfig(batch_size=4, min_workers=1, max_workers=1)


def legacy_names(data: Any, renamed: dict[str, str]) -> Any:
    """Move keys of an older configuration to their current place (`decode_pool` to `pools.decode`):
    YAML files written before the rename keep working; where both are given, the current name's keys win
    (a flag such as `--batch-size` on a YAML file that still says `model_pool:`)."""
    if not isinstance(data, dict):
        return data
    data = dict(data)
    for old, new in renamed.items():
        if old not in data:
            continue
        *parents, leaf = new.split(".")
        node = data
        for part in parents:
            node[part] = node = dict(node.get(part) or {})
        value = data.pop(old)
        current = node.get(leaf)
        node[leaf] = {**value, **current} if isinstance(value, dict) and isinstance(current, dict) else \
            (value if current is None else current)
    return data


class PoolsConfig(Strict):
    """Size decode/finish so the model pool never waits: roughly (decode+encode seconds per image x
    model images per second) CPU workers per model actor."""

    decode: PoolConfig = Field(default_factory=cpu_pool, description="fetch + decode + plan (CPU)")
    model: PoolConfig = Field(default_factory=model_pool, description="stage 1 + refinement (GPU when present)")
    finish: PoolConfig = Field(default_factory=cpu_pool, description="composite + encode + write + metrics (CPU)")


class FetchSettings(Strict):
    """How a stage reads its inputs: the storage clients' options, retries, the decompression-bomb guard."""

    storage_options: dict[str, Any] = Field(default_factory=dict, description="fsspec options for every client")
    retries: int = Field(3, ge=0, le=10, description="storage retries with exponential backoff before a row fails")
    max_pixels: int = Field(64_000_000, gt=0, description="refuse images with more pixels (decompression bombs)")
    read_deadline_seconds: float = Field(300.0, gt=0, description="a row's reads, every attempt and retry together")

    def until(self) -> float:
        """The deadline of a row's reads starting now (`time.monotonic()` instant)."""
        import time

        return time.monotonic() + self.read_deadline_seconds


class StorageOptions(Strict):
    storage_options: dict[str, Any] = Field(
        default_factory=dict, description="fsspec options for every client: KEY=VALUE, repeatable, e.g. "
        "endpoint_url=http://host:9000")


class JobConfig(StorageOptions):
    """Fields every Ray job shares: storage, robustness, where to run."""

    @property
    def fetch(self) -> FetchSettings:
        """What the job's reading stages are given (not the whole job configuration)."""
        return FetchSettings(storage_options=self.storage_options, retries=self.retries, max_pixels=self.max_pixels,
                             read_deadline_seconds=self.read_deadline_seconds)

    limit: int | None = Field(None, ge=1, description="only the first N manifest rows")
    max_pixels: int = Field(64_000_000, gt=0, description="refuse images with more pixels (decompression bombs)")
    retries: int = Field(3, ge=0, le=10, description="storage retries with exponential backoff before a row fails")
    read_deadline_seconds: float = Field(
        300.0, gt=0, description="a row's reads (every attempt and retry together) stop after this many seconds: the "
        "row fails storage_error and the job goes on; one request waits at most read_timeout (storage option, 30 s "
        "on S3) between bytes")
    max_worker_crashes: int = Field(
        2, ge=1, le=20, description="worker deaths (native crash, OOM kill) on one batch before it is split; a row that "
        "still kills its worker this often is failed with worker_crashed"
    )
    ray_address: str | None = Field(None, description="Ray cluster address; unset: RAY_ADDRESS or a local instance")
    num_cpus: int | None = Field(None, ge=1, description="CPUs of a local Ray instance (unset: all)")
    resource_wait_seconds: float = Field(
        600.0, ge=0, description="on a cluster joined by address (which an autoscaler may grow), how long to wait for "
        "nodes that can hold the workers (a pool's CPUs, GPUs, custom resources) before stopping; a local Ray never "
        "grows, so a request it cannot hold stops at once")
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
