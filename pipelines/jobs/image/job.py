"""`harmony image`: harmonize one composite with one mask, at the composite's full resolution."""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass

import numpy as np

from harmony_ops.fidelity import apply_fidelity, fidelity_metrics
from harmony_ops.regions import finish, prepare
from harmony_ops.imageio import encode_image
from harmony_ops.inputs import load_sample
from harmony_ops.loader import load_engine
from harmony_ops.metrics import no_reference_metrics

from pipelines.jobs.image.config import ImageJobConfig
from pipelines.io.storage import read_bytes, write_bytes_atomic

log = logging.getLogger(__name__)


@dataclass
class ImageResult:
    output: str
    width: int
    height: int
    plan: object
    seconds: dict
    metrics: dict
    notes: list


def output_format(uri: str) -> str:
    ext = uri.rsplit(".", 1)[-1].lower() if "." in uri.rsplit("/", 1)[-1] else ""
    if ext not in ("png", "jpg", "jpeg", "webp"):
        raise ValueError(f"output {uri!r} must end in .png, .jpg or .webp")
    return ext


def run_image(cfg: ImageJobConfig) -> ImageResult:
    fmt = output_format(cfg.output)
    opts = cfg.storage_options
    sample = load_sample(read_bytes(cfg.composite, opts), read_bytes(cfg.mask, opts))
    t0 = time.perf_counter()
    engine = load_engine(cfg.model.engine, **cfg.model.engine_kwargs(opts))
    seconds = {"load": time.perf_counter() - t0}
    resolution = cfg.resolution.adopted(engine.class_sizes)
    item = prepare(sample.composite, sample.mask, resolution.policy(), resize=engine.needs_resize)
    result = engine.run([item], [cfg.seed])
    seconds.update(result.seconds)
    out = finish(sample.composite, sample.mask, item.plan.region, result.regions[0], feather=cfg.resolution.feather)
    out = apply_fidelity(sample.composite, out, sample.mask, cfg.fidelity.mode, cfg.fidelity.max_chroma_shift)
    write_bytes_atomic(cfg.output, encode_image(out, fmt), opts)
    metrics = {**no_reference_metrics(sample.composite, out, sample.mask).as_dict(),
               **fidelity_metrics(sample.composite, out, sample.mask, cfg.fidelity.audit_bound())}
    h, w = out.shape[:2]
    assert np.array_equal(out[sample.mask < 0.5], sample.composite[sample.mask < 0.5])
    return ImageResult(cfg.output, w, h, item.plan, seconds, dict(metrics), sample.notes)
