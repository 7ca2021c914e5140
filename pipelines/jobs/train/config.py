"""`harmony train`: its configuration."""

from __future__ import annotations

from typing import Literal

from typing import Any

from pydantic import ConfigDict, Field, model_validator

from pipelines.config import JobConfig, Location, Strict, legacy_names
from pipelines.core.stage import PoolConfig


def _train_decode_pool() -> PoolConfig:
    return PoolConfig(num_cpus=0.25, num_gpus=0, batch_size=8, min_workers=1, max_workers=4)


class TrainPools(Strict):
    decode: PoolConfig = Field(default_factory=_train_decode_pool, description="fetch + decode + augment (CPU tasks)")


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
    pools: TrainPools = Field(default_factory=TrainPools)

    model_config = ConfigDict(extra="forbid", validate_assignment=True, populate_by_name=True)

    @model_validator(mode="before")
    @classmethod
    def _older_names(cls, data: Any) -> Any:
        return legacy_names(data, {"decode_pool": "pools.decode"})

    @model_validator(mode="after")
    def _sizes(self) -> "TrainJobConfig":
        if self.resolution % 32:
            raise ValueError(f"resolution must be a multiple of 32, got {self.resolution}")
        if self.stage1_cache and self.task != "refiner":
            raise ValueError(f"stage1_cache is for --task refiner, not {self.task}")
        return self
