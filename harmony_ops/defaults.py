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


def model_label(engine: str, model: str | None, by_default: bool = False) -> str:
    """What the start banners say runs; `by_default`: neither an engine nor a model was named, so also why."""
    if by_default:
        return f"{model_label(engine, model)} by default: {default_engine_note()}"
    if engine == "baseline":
        return "engine baseline (Lab colour-statistics transfer)"
    return f"engine diffharmony, {EMBEDDED_MODEL_NAME} ({EMBEDDED_MODEL_DIR})" if is_embedded(model) else f"engine diffharmony, {model}"


# --- which engine runs without --engine / --model -------------------------------------------------------
# The embedded model is the default only where it improves images unlike its training data: the quality
# benchmark's figures (`harmony bench --sections quality --record`, stored beside the weights) must show its
# fMSE at most QUALITY_BOUND x the untouched composite's on every perturbation kind and overall.
QUALITY_FILE = "quality.json"
QUALITY_BOUND = 0.8


def meets_bound(quality: dict, variant: str = "stage1+refiner") -> bool:
    """The rule, on the benchmark's figures ({"by_kind": {kind: {variant: {"fmse": ...}}}, "overall": ...})."""
    blocks = [*quality.get("by_kind", {}).values(), quality.get("overall")]
    bound = float(quality.get("bound", QUALITY_BOUND))
    return bool(blocks[:-1]) and all(b and b[variant]["fmse"] <= bound * b["composite"]["fmse"] for b in blocks)


def embedded_quality() -> dict | None:
    """The recorded benchmark of the shipped weights, or None (never measured: not the default)."""
    import json

    path = EMBEDDED_MODEL_DIR / QUALITY_FILE
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None


def default_engine() -> str:
    """The engine of a run that names neither an engine nor a model: the embedded model where its recorded
    figures meet the bound, else the baseline."""
    q = embedded_quality()
    return "diffharmony" if q is not None and meets_bound(q) else "baseline"


def default_engine_note() -> str:
    """Why a run without --model runs the engine it does (for the start banners)."""
    q = embedded_quality()
    if q is None:
        return "the embedded model's quality benchmark was never recorded; --engine diffharmony runs it"
    share = q["overall"]["stage1+refiner"]["fmse"] / q["overall"]["composite"]["fmse"]
    if meets_bound(q):
        return f"the embedded model's fMSE on unseen images is {share:.2f}x the composite's (harmony bench --sections quality)"
    over = [k for k, b in q["by_kind"].items() if b["stage1+refiner"]["fmse"] > QUALITY_BOUND * b["composite"]["fmse"]]
    return (f"the embedded DiffHarmony model does not yet improve unseen images enough (fMSE {share:.2f}x the "
            f"composite's overall, over {QUALITY_BOUND}x on {', '.join(over) or 'the overall mean'}; harmony bench "
            f"--sections quality): --engine diffharmony runs it anyway")
