"""Pipeline tests: one local Ray instance shared by the session, a moto S3 endpoint, tiny checkpoints."""

from __future__ import annotations

import atexit
import io
import os
import shutil
import tempfile

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from tests.scenes import enc, make_scene  # noqa: F401 - re-exported for the pipeline tests

pytestmark = pytest.mark.pipeline

TMP = tempfile.mkdtemp(prefix="ray-")
os.environ.setdefault("RAY_TMPDIR", TMP)


@atexit.register
def _cleanup() -> None:
    import ray

    ray.shutdown()
    shutil.rmtree(TMP, ignore_errors=True)


@pytest.fixture
def ray_local():
    import ray

    if not ray.is_initialized():
        ray.init(num_cpus=2, include_dashboard=False, _temp_dir=os.environ["RAY_TMPDIR"],
                 logging_level="ERROR", log_to_driver=False)
    from ray.data import DataContext

    DataContext.get_current().enable_progress_bars = False
    yield ray


def write_dataset(put, good: int = 4) -> pd.DataFrame:
    """Objects through `put(relpath, bytes)`; returns the manifest (relative paths) with an `expect` column."""
    rows = []
    for k in range(good):
        comp, mask, real = make_scene(k, ratio=(0.03, 0.1, 0.3, 0.5)[k % 4])
        put(f"comp/good{k}.png", enc(comp))
        put(f"mask/good{k}.png", enc(mask))
        put(f"real/good{k}.png", enc(real))
        rows.append(dict(id=f"good{k}", composite=f"comp/good{k}.png", mask=f"mask/good{k}.png",
                         real=f"real/good{k}.png", subset="A" if k % 2 else "B", expect="ok"))
    comp, mask, real = make_scene(10)
    h, w = mask.shape
    put("comp/base.png", enc(comp))
    put("mask/base.png", enc(mask))
    jpg = enc(comp, "JPEG")
    put("comp/truncated.jpg", jpg[: len(jpg) // 2])
    put("comp/notimage.png", b"this is not an image")
    put("mask/small.png", enc(mask[: h // 2]))
    put("mask/empty.png", enc(np.zeros_like(mask)))
    put("mask/full.png", enc(np.full_like(mask, 255)))
    soft = (mask.astype(np.float32) * 0.8).astype(np.uint8)
    put("mask/soft.png", enc(soft))
    put("comp/palette.png", enc(np.asarray(Image.fromarray(comp).convert("P", palette=Image.ADAPTIVE).convert("RGB"))))
    rgba = np.dstack([comp, np.full((h, w), 128, np.uint8)])
    put("comp/rgba.png", enc(rgba))
    exif = Image.Exif()
    exif[0x0112] = 6
    buf = io.BytesIO()
    Image.fromarray(comp).save(buf, format="JPEG", exif=exif.tobytes(), quality=95)
    put("comp/rotated.jpg", buf.getvalue())
    big = np.zeros((400, 400, 3), np.uint8)
    put("comp/big.png", enc(big))
    bigmask = np.zeros((400, 400), np.uint8)
    bigmask[100:200, 100:200] = 255
    put("mask/big.png", enc(bigmask))

    def row(i, c, m, expect, **kw):
        rows.append(dict(id=i, composite=c, mask=m, real=None, subset="C", expect=expect, **kw))

    row("missing", "comp/nope.png", "mask/base.png", "missing_object")
    row("truncated", "comp/truncated.jpg", "mask/base.png", "corrupt")
    row("notimage", "comp/notimage.png", "mask/base.png", "unreadable")
    row("sizes", "comp/base.png", "mask/small.png", "size_mismatch")
    row("empty", "comp/base.png", "mask/empty.png", "empty_mask")
    row("full", "comp/base.png", "mask/full.png", "full_mask")
    row("soft", "comp/base.png", "mask/soft.png", "ok")
    row("palette", "comp/palette.png", "mask/base.png", "ok")
    row("rgba", "comp/rgba.png", "mask/base.png", "ok")
    row("rotated", "comp/rotated.jpg", "mask/base.png", "ok")  # mask matches the raw pixels: both rotated
    row("bomb", "comp/big.png", "mask/big.png", "too_large")
    row("good0", "comp/base.png", "mask/base.png", "duplicate_id")
    row("../escape", "comp/base.png", "mask/base.png", "invalid_row")
    row("a/b", "comp/base.png", "mask/base.png", "invalid_row")
    row("", "comp/base.png", "mask/base.png", "invalid_row")
    return pd.DataFrame(rows)
