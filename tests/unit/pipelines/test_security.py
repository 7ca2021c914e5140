"""What the job refuses: pickle weights without the flag, output paths outside `<output>/images/`,
secrets in what it prints or stores. (Decoder fuzzing: test_fuzz_decode.py; a whole job with
credentials: tests/pipeline/core/test_faults.py.)"""

from __future__ import annotations

import posixpath
import shutil
from urllib.parse import unquote

import numpy as np
import pandas as pd
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors.torch import load_file

from harmony_ops.checkpoints import CheckpointError, resolve_checkpoint
from harmony_ops.loader import load_diffharmony
from harmony_ops.masks import ellipse
from pipelines.config import ModelConfig
from pipelines.jobs.harmonize.config import HarmonizeJobConfig
from pipelines.errors import JobError
from pipelines.jobs.harmonize.job import run_harmonize
from pipelines.core.adapter import run_batch
from pipelines.jobs.harmonize.decode import DecodeStage
from pipelines.jobs.harmonize.finish import FinishStage, job_columns, output_allowed
from pipelines.jobs.harmonize.model import ModelStage
from schemas.metrics import COLUMNS, to_arrow
from pipelines.io.manifest import prepare_rows
from pipelines.io.storage import redact
from tests.conftest import png_bytes

# ---------------------------------------------------------------------------------------------
# Model loading: safetensors only unless --allow-pickle


def copy_ckpt(src, tmp_path):
    dst = tmp_path / "ckpt"
    shutil.copytree(src, dst)
    return dst


def to_pickle(model_dir, name="diffusion_pytorch_model.bin"):
    """Replace a model folder's safetensors weights by a pickle file holding the same tensors."""
    safe = model_dir / "diffusion_pytorch_model.safetensors"
    torch.save(load_file(str(safe)), model_dir / name)
    safe.unlink()


def test_pickle_refiner_is_refused_unless_allowed(tiny_checkpoint, tmp_path):
    ckpt = copy_ckpt(tiny_checkpoint, tmp_path)
    to_pickle(ckpt / "refiner")
    with pytest.raises(CheckpointError, match=r"refiner.*pickle"):
        resolve_checkpoint(str(ckpt))
    with pytest.raises(CheckpointError, match=r"refiner.*pickle"):
        load_diffharmony(str(ckpt), device="cpu")
    # an explicit refiner URI goes through the same policy
    with pytest.raises(CheckpointError, match=r"refiner.*pickle"):
        resolve_checkpoint(str(tiny_checkpoint), refiner=str(ckpt / "refiner"))
    engine = load_diffharmony(str(ckpt), device="cpu", allow_pickle=True)
    assert engine.refiner is not None
    # the pickled tensors themselves were loaded (not, say, a fresh initialisation)
    source = load_file(str(tiny_checkpoint / "refiner" / "diffusion_pytorch_model.safetensors"))
    state = engine.refiner.state_dict()
    assert sorted(state) == sorted(source)
    for name, tensor in source.items():
        assert torch.equal(state[name], tensor), name


@pytest.mark.parametrize("part", ["unet", "vae", "refiner"])
@pytest.mark.parametrize("name", ["model.ckpt", "weights.pt", "weights.pth", "model.pkl"])
def test_any_pickle_suffix_is_refused(tiny_checkpoint, tmp_path, part, name):
    ckpt = copy_ckpt(tiny_checkpoint, tmp_path)
    to_pickle(ckpt / part, name)
    with pytest.raises(CheckpointError) as e:
        resolve_checkpoint(str(ckpt))
    assert part in str(e.value) and "pickle" in str(e.value) and name in str(e.value)
    assert "--allow-pickle" in str(e.value)


def test_pickle_disguised_as_safetensors_is_refused(tiny_checkpoint, tmp_path):
    ckpt = copy_ckpt(tiny_checkpoint, tmp_path)
    safe = ckpt / "unet" / "diffusion_pytorch_model.safetensors"
    tensors = {k: v.clone() for k, v in load_file(str(safe)).items()}  # off the file's memory map first
    torch.save(tensors, safe)  # pickle bytes under the safetensors name
    with pytest.raises(CheckpointError, match=r"unet.*not a valid safetensors"):
        resolve_checkpoint(str(ckpt))
    with pytest.raises(CheckpointError, match="unet"):
        resolve_checkpoint(str(ckpt), allow_pickle=True)  # the flag allows .bin files, not a lying name


def test_job_refuses_pickle_weights_before_ray_starts(tiny_checkpoint, tmp_path, forbid_ray_start):
    ckpt = copy_ckpt(tiny_checkpoint, tmp_path)
    to_pickle(ckpt / "refiner", "refiner.ckpt")
    (tmp_path / "m.csv").write_text("id,composite,mask\na,c.png,m.png\n")
    cfg = HarmonizeJobConfig(manifest=str(tmp_path / "m.csv"), output=str(tmp_path / "out"),
                             model=ModelConfig(model=str(ckpt)))
    with pytest.raises(JobError, match=r"refiner.*pickle"):
        run_harmonize(cfg, echo=lambda *a, **k: None)
    assert forbid_ray_start == []  # the checkpoint was refused before any attempt to start or join Ray
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------
# Output paths: ids can never escape <output>/images/

HOSTILE_IDS = [
    "../x", "..", "../../etc/passwd", "a/../../b", "a/b", "/abs", "/", "//x", "\\", "a\\..\\b", "..\\x", "C:\\x",
    "C:x", "%2e%2e%2f", "%2e%2e", "..%2f", "%2e%2e%5cx", "%252e%252e%252f", "%00", "a%2fb",
    "\u2024\u2024/x", "\u2025", "\uff0e\uff0e\uff0fx", "\uff0e\uff0e", "\u3002\u3002", "\u2215x", "\u29f5x",
    "a\x00b", "\x00", "abc\n", "abc\r", "\nabc", "a\tb", "a\u200bb", "\u202e..", "\ufeffa",
    "file:///etc/passwd", "s3://other-bucket/x", "http://evil/x", "~", "~root", "$HOME", "`id`", "a;b", "a b", " ",
    "", "a" * 201, "é", "ı", "A\u0301", "...", "a..b", ".", "./a", "a/.", "images/../x",
    None, 3, 4.5, True, ["x"], {"a": 1},
]
PREFIXES = ["s3://bucket/runs/2026-11-24", "s3://bucket/runs/x/", "/tmp/harmony-out", "file:///tmp/harmony-out"]


def assert_inside(output_uri: str, prefix: str):
    images = prefix.rstrip("/") + "/images/"
    assert output_uri.startswith(images), output_uri
    name = output_uri[len(images):]
    assert name and "/" not in name and "\\" not in name and name not in (".", "..")
    assert unquote(name) == name and name.isascii() and name.isprintable()
    path = output_uri.split("://", 1)[-1]
    base = posixpath.normpath(images.split("://", 1)[-1])
    assert posixpath.dirname(posixpath.normpath(path)) == base
    assert output_allowed(output_uri, prefix)


@pytest.mark.parametrize("prefix", PREFIXES)
def test_hostile_ids_never_produce_an_output_outside_the_prefix(prefix):
    ids = HOSTILE_IDS + ["ok", "ok-2_x.v1", ".hidden", "a."]
    df = pd.DataFrame({"id": pd.Series(ids, dtype=object), "composite": "c.png", "mask": "m.png"})
    rows = prepare_rows(df, "s3://bucket/catalog/manifest.parquet", prefix, "png", 0)
    assert len(rows) == len(ids)
    for _, r in rows.iterrows():
        if r["status"] == "pending":
            assert_inside(r["output"], prefix)
        else:
            assert r["status"] == "invalid" and r["error_type"] == "invalid_row" and r["error_message"]
            assert r["output"] is None
    pending = set(rows.loc[rows["status"] == "pending", "id"])
    assert pending == {"ok", "ok-2_x.v1", ".hidden", "a.", "."}  # "." names "..png": one plain file


@settings(max_examples=60, deadline=None, database=None, derandomize=True)
@given(st.lists(st.text(max_size=12), min_size=1, max_size=8))
def test_any_text_id_stays_inside(ids):
    df = pd.DataFrame({"id": ids, "composite": "c.png", "mask": "m.png"})
    rows = prepare_rows(df, "/data/m.csv", "s3://b/out", "webp", 1)
    for out in rows.loc[rows["status"] == "pending", "output"]:
        assert_inside(out, "s3://b/out")


@pytest.mark.parametrize("uri", [
    "s3://b/out/images/../evil.png", "s3://b/out/images/a/../../evil.png", "s3://b/out/images/sub/a.png",
    "s3://b/out/metrics/metrics.parquet", "s3://b/out/imagesX/a.png", "s3://b/other/images/a.png",
    "s3://other/out/images/a.png", "/tmp/evil.png", "s3://b/out/images/", "s3://b/out/images/..",
    "s3://b/out/images/%2e%2e%2fa.png", "s3://b/out/images/a\\..\\b.png", "s3://b/out/images/a\n.png",
    "s3://b/out/images/a\x00.png", None, 7,
])
def test_finish_write_guard_refuses_anything_but_one_image_name(uri):
    assert not output_allowed(uri, "s3://b/out")


def _decoded(tmp_path, n=3):
    rng = np.random.default_rng(0)
    rows = []
    for k in range(n):
        (tmp_path / f"c{k}.png").write_bytes(png_bytes(rng.integers(0, 255, (32, 40, 3), dtype=np.uint8)))
        (tmp_path / f"m{k}.png").write_bytes(png_bytes((ellipse(32, 40, rng, (0.25, 0.25)) * 255).astype(np.uint8)))
        rows.append({"id": f"r{k}", "composite": f"c{k}.png", "mask": f"m{k}.png"})
    cfg = HarmonizeJobConfig(manifest=str(tmp_path / "m.csv"), output=str(tmp_path / "out"),
                             model=ModelConfig(engine="baseline"))
    batch = prepare_rows(pd.DataFrame(rows), str(tmp_path / "m.csv"), cfg.output, "png", 0)
    model = ModelStage.for_job(cfg)
    model.setup()
    chain = [DecodeStage.for_job(cfg, False), model, FinishStage.for_job(cfg, job_columns(cfg, "baseline", "k"))]
    return cfg, chain, run_batch(chain, batch, keep=COLUMNS, finalize=to_arrow, stop=2)


def test_finish_stage_refuses_a_tampered_output_uri(tmp_path):
    cfg, chain, batch = _decoded(tmp_path)
    batch.at[batch.index[1], "output"] = str(tmp_path / "out" / "images" / ".." / ".." / "evil.png")
    batch.at[batch.index[2], "output"] = str(tmp_path / "evil2.png")
    table = run_batch(chain, batch, keep=COLUMNS, finalize=to_arrow, start=2)
    out = table.to_pandas().set_index("id")
    assert out.loc["r0", "status"] == "ok" and (tmp_path / "out" / "images" / "r0.png").exists()
    for i in ("r1", "r2"):
        assert out.loc[i, "status"] == "failed" and out.loc[i, "error_type"] == "unsafe_output"
        assert pd.isna(out.loc[i, "output"])
    assert not (tmp_path / "evil.png").exists() and not (tmp_path / "evil2.png").exists()
    assert sorted(p.name for p in (tmp_path / "out" / "images").iterdir()) == ["r0.png"]


# ---------------------------------------------------------------------------------------------
# Secrets


def test_redact_hides_secrets_at_any_depth():
    opts = {"key": "AKIAEXAMPLE", "secret": "s3cr3t", "token": "tok", "endpoint_url": "http://minio:9000",
            "client_kwargs": {"region_name": "eu-west-1", "aws_secret_access_key": "nested-secret",
                              "aws_session_token": "nested-token"},
            "config_kwargs": {"retries": {"max_attempts": 2}}, "Password": "pw"}
    text = repr(redact(opts))
    for secret in ("AKIAEXAMPLE", "s3cr3t", "tok'", "nested-secret", "nested-token", "pw'"):
        assert secret not in text
    assert "http://minio:9000" in text and "eu-west-1" in text and "max_attempts" in text
    assert opts["client_kwargs"]["aws_secret_access_key"] == "nested-secret"  # the input is untouched
