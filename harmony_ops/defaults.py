"""Defaults and names shared by the model code and the configuration, importable without torch
(CPU workers that only decode and encode never load torch)."""

from pathlib import Path

SCHEDULER_NAMES = ("euler_a", "euler", "ddim", "dpmpp_2m")
DEFAULT_SCHEDULER = "euler_a"
DEFAULT_STEPS = 5  # the paper's setting
DEFAULT_REFINE_MAX_PIXELS = 2048 * 2048
BASELINE_MODEL_ID = "baseline-lab-meanstd-v1"

# The embedded DiffHarmony model: trained here by `make model` (configs/recipes/demo), committed
# as safetensors; the model of `harmony harmonize`, `harmony image` and `harmony demo` when no
# --model is given. Its model_index.json declares the inference sizes it was trained for.
EMBEDDED_MODEL_DIR = Path(__file__).resolve().parent / "weights" / "demo"
EMBEDDED_MODEL_NAME = "embedded demo model"


def is_embedded(model: str | None) -> bool:
    if not model or "://" in model:
        return False
    return Path(model).resolve() == EMBEDDED_MODEL_DIR


def model_label(engine: str, model: str | None) -> str:
    """What the start banners say runs."""
    if engine == "baseline":
        return "engine baseline (Lab colour-statistics transfer)"
    return f"engine diffharmony, {EMBEDDED_MODEL_NAME} ({EMBEDDED_MODEL_DIR})" if is_embedded(model) else f"engine diffharmony, {model}"
