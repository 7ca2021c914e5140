"""`harmony convert-weights` on a tiny archive in the released layout, and `harmony image` on its output."""

from __future__ import annotations

import argparse
import json
import shutil

import pytest
import torch
from safetensors.torch import load_file

from harmony_ops.checkpoints import NULL_EMBEDDING_FILE, NULL_EMBEDDING_KEY, CheckpointError
from harmony_ops.convert import convert_weights, read_state_dict
from pipelines.cli import main

from ..pipelines.test_cli_image import assert_harmonized, inputs, run_image  # noqa: F401 - fixture reused


@pytest.fixture(scope="module")
def archive(tmp_path_factory):
    pytest.importorskip("transformers")
    d = tmp_path_factory.mktemp("archive") / "released"
    assert main(["make-checkpoint", "--tiny", "--archive", str(d)]) == 0
    return d


@pytest.fixture(scope="module")
def converted(archive, tmp_path_factory):
    out = tmp_path_factory.mktemp("converted") / "ckpt"
    assert main(["convert-weights", str(archive), str(out)]) == 0
    return out


def test_archive_has_the_released_layout(archive):
    base = archive / "base"
    for part in ("unet", "vae", "text_encoder", "tokenizer", "scheduler", "safety_checker", "feature_extractor"):
        assert (base / part).is_dir(), part
    assert (base / "unet" / "diffusion_pytorch_model.bin").is_file()
    assert (archive / "weights-1" / "config.json").is_file()
    assert json.loads((archive / "condition_vae" / "config.json").read_text())["_class_name"] == "ConditionVAE"
    assert (archive / "inverse" / "weights-1" / "config.json").is_file()


def test_converted_layout_is_safetensors_with_a_model_card(archive, converted, capsys):
    files = [p for p in converted.rglob("*") if p.is_file()]
    assert not [p for p in files if p.suffix in (".bin", ".pt", ".ckpt")]
    for part in ("unet", "vae", "refiner", "harmony_vae", "inverse/unet", "inverse/vae"):
        assert (converted / part / "diffusion_pytorch_model.safetensors").is_file(), part
    assert not (converted / "text_encoder").exists() and not (converted / "safety_checker").exists()
    card = json.loads((converted / "harmony.json").read_text())
    assert card["parts"]["unet"] == "weights-1/" and card["parts"]["inverse unet"] == "inverse/weights-1/"
    by_path = {f["path"]: f for f in card["files"]}
    src = archive / "base" / "unet" / "diffusion_pytorch_model.bin"
    assert "base/unet/diffusion_pytorch_model.bin" not in by_path  # weights-1/ was used, not base/unet
    src = archive / "base" / "vae" / "diffusion_pytorch_model.bin"
    assert by_path["base/vae/diffusion_pytorch_model.bin"]["size"] == src.stat().st_size
    import hashlib

    assert by_path["base/vae/diffusion_pytorch_model.bin"]["sha256"] == hashlib.sha256(src.read_bytes()).hexdigest()
    # the weights themselves, unchanged
    ref = read_state_dict(src)
    got = load_file(str(converted / "vae" / "diffusion_pytorch_model.safetensors"))
    assert ref.keys() == got.keys() and all(torch.equal(ref[k], got[k]) for k in ref)


def test_stored_embedding_is_the_text_encoders_empty_text(archive, converted):
    from harmony_ops.checkpoints import _encode_empty_text

    stored = load_file(str(converted / NULL_EMBEDDING_FILE))[NULL_EMBEDDING_KEY]
    direct = _encode_empty_text(archive / "base", allow_pickle=True)  # the trusted test archive, read directly
    torch.testing.assert_close(stored, direct, rtol=0, atol=1e-6)
    assert stored.abs().max() > 0


def test_converted_checkpoint_runs_harmony_image_with_the_harmony_vae(converted, inputs, tmp_path, capsys):  # noqa: F811
    from tests.unit.pipelines.test_cli_image import spy_loaded_models

    mp = pytest.MonkeyPatch()
    labels = spy_loaded_models(mp)
    try:
        assert run_image(inputs, tmp_path / "a.png", "--model", str(converted)) == 0
        parts = [label.split(" ")[0] for label in labels]
        assert "harmony-vae" in parts and "vae" not in parts
        labels.clear()
        assert run_image(inputs, tmp_path / "b.png", "--model", str(converted), "--decoder", "vae") == 0
        parts = [label.split(" ")[0] for label in labels]
        assert "harmony-vae" not in parts and "vae" in parts
    finally:
        mp.undo()
    a, b = assert_harmonized(inputs, tmp_path / "a.png"), assert_harmonized(inputs, tmp_path / "b.png")
    assert (a.astype(int) - b).any()  # the decoders differ
    assert run_image(inputs, tmp_path / "c.png", "--model", str(converted / "inverse"), "--decoder", "harmony-vae") == 2
    assert "harmony_vae/" in capsys.readouterr().err


def test_ambiguous_layout_stops_and_lists_candidates(archive, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(archive, src)
    shutil.copytree(src / "weights-1", src / "weights-2")
    with pytest.raises(CheckpointError, match=r"weights-1/, weights-2/.*--unet"):
        convert_weights(str(src), str(tmp_path / "out"))
    r = convert_weights(str(src), str(tmp_path / "out"), unet="weights-2")
    assert r.used["unet"] == "weights-2/"


def test_pickle_needing_full_unpickling_is_refused(archive, tmp_path):
    src = tmp_path / "src"
    shutil.copytree(archive, src, ignore=shutil.ignore_patterns("text_encoder", "tokenizer"))
    sd = read_state_dict(src / "base" / "vae" / "diffusion_pytorch_model.bin")
    torch.save({**sd, "extra": argparse.Namespace(x=1)}, src / "base" / "vae" / "diffusion_pytorch_model.bin")
    with pytest.raises(CheckpointError, match="needs full unpickling"):
        convert_weights(str(src), str(tmp_path / "out"))


def test_without_a_text_encoder_it_falls_back_and_says_so(archive, tmp_path, capsys):
    src = tmp_path / "src"
    shutil.copytree(archive, src, ignore=shutil.ignore_patterns("text_encoder", "tokenizer", "inverse", "condition_vae"))
    assert main(["convert-weights", str(src), str(tmp_path / "out")]) == 0
    out = capsys.readouterr().out
    assert "falls back to zeros" in out and "dropped safety_checker/, feature_extractor/" in out
    assert "harmony-vae: none found" in out
    assert not (tmp_path / "out" / NULL_EMBEDDING_FILE).exists() and not (tmp_path / "out" / "inverse").exists()


def test_dst_may_be_any_fsspec_uri(archive):
    import fsspec

    dst = "memory://harmony-test/converted"
    r = convert_weights(str(archive), dst)
    fs = fsspec.filesystem("memory")
    names = {p.split("converted/", 1)[1] for p in fs.find("/harmony-test/converted")}
    assert {"harmony.json", "unet/diffusion_pytorch_model.safetensors", "harmony_vae/config.json",
            "inverse/unet/diffusion_pytorch_model.safetensors", NULL_EMBEDDING_FILE} <= names
    assert json.loads(fs.cat_file("/harmony-test/converted/harmony.json"))["parts"] == r.used
    fs.rm("/harmony-test", recursive=True)
