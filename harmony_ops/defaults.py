"""Defaults and names shared by the model code and the configuration, importable without torch
(CPU workers that only decode and encode never load torch)."""

SCHEDULER_NAMES = ("euler_a", "euler", "ddim", "dpmpp_2m")
DEFAULT_SCHEDULER = "euler_a"
DEFAULT_STEPS = 5  # the paper's setting
DEFAULT_REFINE_MAX_PIXELS = 2048 * 2048
BASELINE_MODEL_ID = "baseline-lab-meanstd-v1"
