"""Options of the commands that are not Ray jobs (each job's configuration lives beside the job), and
the flags every job shares that are not part of its configuration: where its YAML is, how it reports."""

from __future__ import annotations

from typing import Literal

from pydantic import Field
from pydantic_settings import CliPositionalArg

from pipelines.config import StorageOptions, Strict


class ConfigFile(Strict):
    config: str | None = Field(None, description="YAML job config (flags win)")


class OutputFlags(Strict):
    """How a Ray job reports: the same four flags on harmonize, evaluate, synthesize, train and demo."""

    progress_every: float = Field(10.0, ge=0, description="when redirected (no terminal): one progress line every "
                                  "PROGRESS_EVERY seconds (0: every event)")
    log_format: Literal["text", "json"] = Field(
        "text", description="json: one JSON object per line (progress events, messages, the final summary)")
    quiet: bool = Field(False, description="print only the final summary and errors")
    verbose: bool = Field(False, description="Ray's own logs and warnings on the terminal too (default: in a log file, "
                          "its path printed)")


class ReportOptions(StorageOptions):
    prefix: CliPositionalArg[str] = Field(description="a harmonize or evaluate output prefix")
    screenshot: str | None = Field(None, description="also save a PNG of the written report as headless chromium shows "
                                   "it (local prefixes; needs chromium, chromium-driver and selenium)")
    row: int | None = Field(None, ge=0, description="with --screenshot: that manifest row's detail view instead of "
                            "the row table")


class ImportIHarmony4Options(StorageOptions):
    root: CliPositionalArg[str] = Field(description="dataset root (a subset folder or the folder holding several)")
    split: Literal["train", "test"] = Field("test", description="which split's list files to read")
    output: str = Field(description="manifest to write (.parquet, .csv, .jsonl)")


class MakeCheckpointOptions(Strict):
    dir: CliPositionalArg[str] = Field(description="folder to write the checkpoint to")
    tiny: bool = Field(False, description="same as --arch tiny")
    arch: Literal["tiny", "demo", "sd15-inpaint"] = Field("tiny", description="architecture")
    seed: int = Field(0, description="seed of the random weights")
    refiner: bool = Field(True, description="write refiner/ (--no-refiner: do not)")
    archive: bool = Field(False, description="write an archive in the layout the DiffHarmony authors released "
                          "(tiny only), for convert-weights")


_PART = "relative to SRC or absolute; default: found by the layout"


class ConvertWeightsOptions(StorageOptions):
    src: CliPositionalArg[str] = Field(description="the unpacked archive (base/, weights-N/, refinement/, "
                                       "condition_vae/, inverse/)")
    dst: CliPositionalArg[str] = Field(description="output checkpoint URI (the inverse model goes to DST/inverse)")
    unet: str | None = Field(None, description=f"the stage-1 UNet (a weights-N/ folder or base/unet), {_PART}")
    refiner: str | None = Field(None, description=f"the refiner folder, {_PART}")
    harmony_vae: str | None = Field(None, description=f"the Harmony-VAE folder (condition_vae/), {_PART}")
    inverse: str | None = Field(None, description=f"the inverse model folder, {_PART}")
    inverse_unet: str | None = Field(None, description=f"the inverse UNet folder (a weights-N/ folder under "
                                     f"--inverse), {_PART}")
