"""Checkpoint resolution: local and S3 URIs, node cache, safetensors-only policy, named missing parts."""

import shutil

import pytest
import torch

from harmony_ops.checkpoints import CheckpointError, fingerprint, resolve, resolve_checkpoint
from harmony_ops.loader import load_diffharmony, load_engine
from tests.conftest import upload_dir


def copy_ckpt(src, tmp_path):
    dst = tmp_path / "ckpt"
    shutil.copytree(src, dst)
    return dst


def test_tiny_checkpoint_loads_with_refiner(tiny_checkpoint):
    engine = load_diffharmony(str(tiny_checkpoint), device="cpu")
    assert engine.refiner is not None and engine.sampler.unet.config.in_channels == 9
    assert engine.sampler.vae_scale_factor == 8
    assert len(engine.model_id) == 16
    assert load_diffharmony(str(tiny_checkpoint), refiner="none", device="cpu").refiner is None


@pytest.mark.parametrize("part", ["unet/diffusion_pytorch_model.safetensors", "vae/config.json",
                                  "scheduler/scheduler_config.json", "refiner/diffusion_pytorch_model.safetensors"])
def test_missing_part_is_named(tiny_checkpoint, tmp_path, part):
    ckpt = copy_ckpt(tiny_checkpoint, tmp_path)
    (ckpt / part).unlink()
    with pytest.raises(CheckpointError) as e:
        resolve_checkpoint(str(ckpt), refiner=str(ckpt / "refiner"))
    assert part.split("/")[0] in str(e.value)


def test_corrupt_weights_are_reported(tiny_checkpoint, tmp_path):
    ckpt = copy_ckpt(tiny_checkpoint, tmp_path)
    (ckpt / "vae" / "diffusion_pytorch_model.safetensors").write_bytes(b"not a safetensors file")
    with pytest.raises(CheckpointError, match="vae"):
        load_diffharmony(str(ckpt), device="cpu")


def assert_same_weights(module: torch.nn.Module, weights: dict[str, torch.Tensor]):
    """The module holds exactly these tensors, bit for bit (not, say, a fresh initialisation)."""
    state = module.state_dict()
    assert sorted(state) == sorted(weights)
    for name, tensor in weights.items():
        assert torch.equal(state[name], tensor), name


def test_pickle_weights_refused_unless_allowed(tiny_checkpoint, tmp_path):
    ckpt = copy_ckpt(tiny_checkpoint, tmp_path)
    unet_dir = ckpt / "unet"
    from safetensors.torch import load_file

    source = load_file(str(tiny_checkpoint / "unet" / "diffusion_pytorch_model.safetensors"))
    torch.save(source, unet_dir / "diffusion_pytorch_model.bin")
    (unet_dir / "diffusion_pytorch_model.safetensors").unlink()
    with pytest.raises(CheckpointError, match="pickle"):
        resolve_checkpoint(str(ckpt))
    engine = load_diffharmony(str(ckpt), device="cpu", allow_pickle=True)
    assert engine.sampler.unet.config.in_channels == 9
    assert_same_weights(engine.sampler.unet, source)  # the pickled tensors were loaded
    assert_same_weights(engine.sampler.vae, load_file(str(tiny_checkpoint / "vae" / "diffusion_pytorch_model.safetensors")))


def test_unet_and_vae_overrides_accept_model_or_pipeline_folders(tiny_checkpoint, tmp_path):
    from harmony_ops.factory import build_vae

    other_vae = tmp_path / "sd-vae-ft-mse"
    build_vae("tiny", seed=5).save_pretrained(other_vae, safe_serialization=True)  # a bare model folder
    c = resolve_checkpoint(str(tiny_checkpoint), unet=str(tiny_checkpoint), vae=str(other_vae))
    assert c.unet == tiny_checkpoint / "unet" and c.vae == other_vae
    base = resolve_checkpoint(str(tiny_checkpoint))
    assert c.model_id != base.model_id  # a different VAE is a different model


def test_fingerprint_tells_weights_apart(tiny_checkpoint, tmp_path):
    from harmony_ops.factory import write_checkpoint

    other = write_checkpoint(tmp_path / "other", seed=1)
    assert fingerprint(tiny_checkpoint) == fingerprint(tiny_checkpoint)
    assert fingerprint(tiny_checkpoint) != fingerprint(other)


def test_missing_checkpoint_and_engine_without_model():
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve("/nonexistent/ckpt")
    with pytest.raises(ValueError, match="model"):
        load_engine("diffharmony")


@pytest.fixture
def s3_calls(monkeypatch):
    """Every S3 API call any s3fs client makes during the test, by operation name, and the
    file-system level reads (get/cat/open), in order."""
    import s3fs

    calls: list[str] = []
    real_call = s3fs.S3FileSystem._call_s3

    async def call_s3(self, method, *args, **kwargs):
        calls.append(method if isinstance(method, str) else getattr(method, "__name__", str(method)))
        return await real_call(self, method, *args, **kwargs)

    monkeypatch.setattr(s3fs.S3FileSystem, "_call_s3", call_s3)
    for name in ("_get_file", "_cat_file", "_open"):
        real = getattr(s3fs.S3FileSystem, name)
        if name == "_open":
            def spy(self, *a, _real=real, _name=name, **k):
                calls.append(_name)
                return _real(self, *a, **k)
        else:
            async def spy(self, *a, _real=real, _name=name, **k):
                calls.append(_name)
                return await _real(self, *a, **k)
        monkeypatch.setattr(s3fs.S3FileSystem, name, spy)
    return calls


READS = ("get_object", "_get_file", "_cat_file", "_open")


def test_s3_checkpoint_goes_through_the_node_cache(tiny_checkpoint, s3_bucket, tmp_path, monkeypatch, s3_calls):
    bucket, opts = s3_bucket
    uri = f"{bucket}/models/tiny"
    upload_dir(tiny_checkpoint, uri, opts)
    monkeypatch.setenv("HARMONY_CACHE", str(tmp_path / "cache"))
    files = sorted(p.relative_to(tiny_checkpoint).as_posix() for p in tiny_checkpoint.rglob("*") if p.is_file())
    s3_calls.clear()
    first = resolve(uri, opts)
    assert (first / ".complete").exists() and (first / "unet" / "config.json").exists()
    assert sorted(p.relative_to(first).as_posix() for p in first.rglob("*") if p.is_file()) == sorted(files + [".complete"])
    # The spy sees the downloads at the S3 API (always looked up on the instance; the file-system-level
    # spies can miss calls of a client fsspec cached before the test, which bound them at creation).
    assert s3_calls.count("get_object") >= len(files)
    cache_before = sorted(p.name for p in (tmp_path / "cache").iterdir())
    s3_calls.clear()
    assert resolve(uri, opts) == first  # cached: same folder...
    assert not [c for c in s3_calls if c in READS], s3_calls  # ...and not one object read again, only listed
    assert s3_calls, "the second resolve lists the objects (to see changes), so the spy must see it"
    assert sorted(p.name for p in (tmp_path / "cache").iterdir()) == cache_before  # no temporary download folder
    engine = load_diffharmony(uri, storage_options=opts, device="cpu")
    assert engine.refiner is not None
    assert engine.model_id == resolve_checkpoint(str(tiny_checkpoint)).model_id  # same bytes, same id

    import fsspec

    fs, root = fsspec.core.url_to_fs(uri, **opts)
    fs.rm(f"{root}/vae/diffusion_pytorch_model.safetensors")
    with pytest.raises(CheckpointError, match="vae"):
        resolve_checkpoint(uri, storage_options=opts)
    with pytest.raises(CheckpointError, match="does not exist"):
        resolve(f"{bucket}/models/nothing-here", opts)


def test_a_checkpoint_declares_its_inference_class_sizes(tiny_checkpoint, tmp_path):
    import json

    assert resolve_checkpoint(str(tiny_checkpoint)).class_sizes is None  # SD's 512 / 1024 then
    ck = tmp_path / "ck"
    shutil.copytree(tiny_checkpoint, ck)
    index = json.loads((ck / "model_index.json").read_text())
    index["harmony"]["class_sizes"] = [64, 128]
    (ck / "model_index.json").write_text(json.dumps(index))
    assert resolve_checkpoint(str(ck)).class_sizes == (64, 128)
    assert load_engine("diffharmony", model=str(ck), device="cpu").class_sizes == (64, 128)
