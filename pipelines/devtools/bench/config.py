"""`harmony bench`: its options (a dataclass: the model section also runs on a bare GPU machine, without
pydantic; pipelines/devtools/flags.py derives the flags)."""

from __future__ import annotations

from dataclasses import dataclass

from pipelines.devtools.flags import opt


@dataclass
class BenchOptions:
    arch: str = opt("model architecture (random weights)", "tiny", choices=("tiny", "sd15-inpaint"))
    resolution: str = opt("comma-separated square inference sizes", "512,1024")
    batch_size: str = opt("comma-separated batch sizes", "1,2")
    device: str = opt("auto, cpu, cuda", "auto")
    dtype: str = opt("model precision", "auto", choices=("auto", "fp32", "fp16", "bf16"))
    images: int = opt("images for the pipeline and scaling sections", 12)
    repeats: int = opt("timed repeats per model configuration (median)", 2)
    steps: int = opt("denoising steps", 5)
    sections: str = opt(
        "comma-separated; model runs without Ray (torch and diffusers only), the others start Ray; cpu (CPU work "
        "per image outside the model) runs without a model, torch or Ray; job (harmonize --engine baseline against "
        "a single-process loop, --job-rows rows) starts Ray; train (training samples/s per worker for stage 1 and "
        "the refiner, at the smallest --resolution and the largest --batch-size) runs on request only; quality (the "
        "embedded model on held-out composites unlike its training data, against the composite and the baseline) "
        "runs on request, without Ray",
        "model,pipeline,adaptive,scaling")
    job_rows: int = opt("rows of 256x256 composites for the job section", 1200)
    cpu_megapixels: str = opt("image sizes of the cpu section, in megapixels", "1,4,12")
    adaptive_photo_size: int | None = opt("side of the adaptive section's four square photos (default 1024; 1536: "
                                          "where the modes differ most, slower)")
    sdpa: bool = opt("model section: attention through scaled_dot_product_attention, else diffusers' classic "
                     "processor", True)
    channels_last: bool = opt("model section: channels-last memory format for the models", False)
    compile: str | None = opt("model section: torch.compile the UNet; MODE: default, reduce-overhead, max-autotune, "
                              "max-autotune-no-cudagraphs (compile time is reported apart)", const="default")
    quality_model: str | None = opt("quality section: the DiffHarmony checkpoint to score (default: the embedded model)")
    quality_per_kind: int = opt("quality section: composites per perturbation kind and photograph", 2)
    record: bool = opt("quality section: store its figures beside the embedded weights (quality.json), where the "
                       "default engine is decided", False)
    out: str = opt("folder for bench.json and bench.md", "bench-results")
