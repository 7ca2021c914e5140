"""The job section's single-process loop: what it writes is what the section claims it does."""

import numpy as np
from PIL import Image

from pipelines.devtools.bench.pipeline import make_images
from pipelines.devtools.bench.job import SHIFT, job_markdown, loop


def test_loop_shifts_only_the_foreground_of_every_row(tmp_path):
    manifest = make_images(tmp_path / "data", 3, 64, with_real=True)
    assert loop(manifest, tmp_path / "out") == 3
    for k in range(3):
        comp = np.asarray(Image.open(tmp_path / "data" / "composite_images" / f"img{k:03d}.png").convert("RGB")).astype(int)
        mask = np.asarray(Image.open(tmp_path / "data" / "masks" / f"img{k:03d}.png").convert("L")) >= 128
        out = np.asarray(Image.open(tmp_path / "out" / f"img{k:03d}.png")).astype(int)
        assert mask.any() and (~mask).any()
        np.testing.assert_array_equal(out[~mask], comp[~mask])
        np.testing.assert_array_equal(out[mask], np.clip(comp[mask] + np.array(SHIFT), 0, 255))


def test_loop_compress_level_changes_the_file_not_the_pixels(tmp_path):
    manifest = make_images(tmp_path / "data", 1, 64)
    loop(manifest, tmp_path / "a")
    loop(manifest, tmp_path / "b", compress_level=1)
    a, b = tmp_path / "a" / "img000.png", tmp_path / "b" / "img000.png"
    assert a.read_bytes() != b.read_bytes()
    np.testing.assert_array_equal(np.asarray(Image.open(a)), np.asarray(Image.open(b)))


def test_job_markdown_reports_both_ratios():
    r = {"rows": 10, "size": 256, "loop_default_seconds": 4.0, "loop_level1_seconds": 2.0, "job_seconds": 8.0, "job_ok": 10,
         "job_mean_seconds_per_stage": {"decode": 0.01, "stage1": 0.02, "refine": 0.0}, "job_vs_loop_default": 0.5,
         "job_vs_loop_level1": 0.25}
    text = "\n".join(job_markdown(r))
    assert "| 4.0 | 2.0 | 8.0 | 10 | 0.50x | 0.25x | decode 0.010, stage1 0.020 |" in text
