"""Checkpoint resolution and loading: local paths and fsspec URIs, a node-local cache, safetensors.

Layout is diffusers': a pipeline folder with `unet/`, `vae/`, `scheduler/` (and optionally
`text_encoder/` + `tokenizer/`, or a stored `null_text_embedding.safetensors`, and a
`refiner/` folder). Overrides for the UNet and the VAE (as the reference inference
script allows: base pipeline + fine-tuned UNet + sd-vae-ft-mse) may point either at a
model folder (config.json + weights) or at a pipeline folder holding that component.

Pickle-based weights (.bin/.ckpt/.pt) execute code when loaded, so they are refused
unless the caller passes `allow_pickle=True`.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path

import fsspec
import torch

from .remote import client_options
from .defaults import is_embedded

log = logging.getLogger(__name__)

SAFE_WEIGHTS = "diffusion_pytorch_model.safetensors"
PICKLE_WEIGHTS = "diffusion_pytorch_model.bin"
NULL_EMBEDDING_FILE = "null_text_embedding.safetensors"
NULL_EMBEDDING_KEY = "null_text_embedding"
PICKLE_SUFFIXES = (".bin", ".ckpt", ".pt", ".pth", ".pkl")
CACHE_ENV = "HARMONY_CACHE"
HARMONY_VAE_DIR = "harmony_vae"
RELEASED_HARMONY_VAE_DIR = "condition_vae"
DECODERS = ("auto", "vae", "harmony-vae")


class CheckpointError(RuntimeError):
    """A checkpoint cannot be used; the message names the URI and the part at fault."""


def cache_root() -> Path:
    return Path(os.environ.get(CACHE_ENV) or Path.home() / ".cache" / "harmony" / "checkpoints")


def is_remote(uri: str) -> bool:
    protocol = fsspec.core.split_protocol(uri)[0]
    return protocol not in (None, "file", "local")


def _local_path(uri: str) -> Path:
    return Path(fsspec.core.strip_protocol(uri) if uri.startswith("file://") else uri).expanduser()


def _listing(fs, root: str) -> list[tuple[str, int, str]]:
    """(relative path, size, version tag) of every file under root."""
    out = []
    for path, info in sorted(fs.find(root, detail=True).items()):
        rel = path[len(root.rstrip("/")) + 1 :]
        tag = str(info.get("ETag") or info.get("etag") or info.get("mtime") or info.get("LastModified") or "")
        out.append((rel, int(info.get("size") or 0), tag))
    return out


def resolve(uri: str, storage_options: dict | None = None, cache_dir: Path | None = None) -> Path:
    """A local folder holding the checkpoint at `uri`, downloading it into the node cache if remote.

    The cache key covers every file's path, size and version tag, so a changed object
    is fetched again; the download lands in a temporary folder renamed into place, so
    concurrent actors on one node never see a half-written checkpoint.
    """
    if not is_remote(uri):
        path = _local_path(uri)
        if not path.exists():
            if is_embedded(uri):
                raise CheckpointError(f"the embedded model is missing ({uri}): rebuild it with `make model`, "
                                      "pass --model URI, or use --engine baseline")
            raise CheckpointError(f"checkpoint {uri} does not exist")
        return path
    fs, root = fsspec.core.url_to_fs(uri, **client_options(uri, storage_options))  # HTTP(S): no redirects
    try:
        listing = _listing(fs, root)
    except FileNotFoundError:
        listing = []
    except Exception as exc:  # noqa: BLE001 - storage clients raise many kinds; say which URI failed
        raise CheckpointError(f"cannot list checkpoint {uri}: {type(exc).__name__}: {exc}") from exc
    if not listing:
        raise CheckpointError(f"checkpoint {uri} does not exist or is empty")
    key = hashlib.sha256(json.dumps([uri, listing]).encode()).hexdigest()[:24]
    base = cache_dir or cache_root()
    final = base / key
    if (final / ".complete").exists():
        return final
    base.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{key}-", dir=base))
    try:
        log.info("downloading checkpoint %s to %s", uri, final)
        for rel, _, _ in listing:
            dest = tmp / rel
            dest.parent.mkdir(parents=True, exist_ok=True)
            fs.get_file(f"{root.rstrip('/')}/{rel}", str(dest))
        (tmp / ".complete").write_text(uri)
        try:
            os.rename(tmp, final)
        except OSError:
            if not (final / ".complete").exists():  # a stale partial folder: replace it
                shutil.rmtree(final, ignore_errors=True)
                os.rename(tmp, final)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return final


def component_dir(root: Path, component: str) -> Path:
    """A model folder: `root` itself when it holds config.json, else `root/component`."""
    if (root / "config.json").exists() and not (root / component).is_dir():
        return root
    return root / component


def weights_file(model_dir: Path, label: str, allow_pickle: bool) -> Path:
    """The weight file of a diffusers model folder, enforcing the safetensors policy."""
    if not (model_dir / "config.json").exists():
        raise CheckpointError(f"{label}: missing {model_dir / 'config.json'}")
    _check_json(model_dir / "config.json", label)
    safe = model_dir / SAFE_WEIGHTS
    if safe.exists():
        check_safetensors(safe, label)
        return safe
    pickled = [p for p in model_dir.iterdir() if p.suffix in PICKLE_SUFFIXES]
    if pickled and not allow_pickle:
        raise CheckpointError(
            f"{label}: only pickle weights ({pickled[0].name}) in {model_dir}; pickle files can run code when "
            "loaded and are refused. Convert them to safetensors, or pass --allow-pickle if you trust the source"
        )
    if pickled:
        return pickled[0]
    raise CheckpointError(f"{label}: missing weights {model_dir / SAFE_WEIGHTS}")


def _check_json(path: Path, label: str) -> None:
    try:
        json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{label}: {path} is not valid JSON: {exc}") from exc


def check_safetensors(path: Path, label: str) -> list[str]:
    """The tensor names of a safetensors file, after checking its header covers the file exactly.

    Reads only the header (the file is memory-mapped), so a truncated or corrupt weight file
    stops the job before Ray starts instead of failing every model actor's setup.
    """
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as f:
            keys = list(f.keys())
    except Exception as exc:  # noqa: BLE001 - SafetensorError, OSError, ...
        raise CheckpointError(f"{label}: {path} is not a valid safetensors file: {exc}") from exc
    if not keys:
        raise CheckpointError(f"{label}: {path} holds no tensors")
    return keys


def load_model(cls, model_dir: Path, label: str, allow_pickle: bool = False, dtype: torch.dtype | None = None):
    """Load a diffusers ModelMixin from a local model folder with a clear error per missing part."""
    path = weights_file(model_dir, label, allow_pickle)
    try:
        return cls.from_pretrained(
            str(model_dir), use_safetensors=path.suffix == ".safetensors", torch_dtype=dtype, low_cpu_mem_usage=False
        )
    except Exception as exc:  # noqa: BLE001 - corrupt files surface as many exception types
        raise CheckpointError(f"{label}: cannot load {path}: {type(exc).__name__}: {exc}") from exc


def load_scheduler_config(root: Path, label: str = "scheduler") -> dict:
    path = component_dir(root, "scheduler") / "scheduler_config.json"
    if not path.exists():
        raise CheckpointError(f"{label}: missing {path}")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{label}: {path} is not valid JSON: {exc}") from exc


def load_null_embedding(root: Path, cross_attention_dim: int, allow_pickle: bool = False) -> tuple[torch.Tensor, str]:
    """The empty-text conditioning (1 x L x D) and where it came from.

    Order: the checkpoint's text encoder applied to "" (needs `transformers`), a stored
    `null_text_embedding.safetensors`, else zeros of the UNet's cross-attention width.
    """
    stored = root / NULL_EMBEDDING_FILE
    if (root / "text_encoder").is_dir() and (root / "tokenizer").is_dir() and not stored.exists():
        return _encode_empty_text(root, allow_pickle), "text_encoder"
    if stored.exists():
        from safetensors.torch import load_file

        try:
            emb = load_file(str(stored))[NULL_EMBEDDING_KEY]
        except Exception as exc:  # noqa: BLE001
            raise CheckpointError(f"null text embedding: cannot read {stored}: {exc}") from exc
        if emb.ndim == 2:
            emb = emb[None]
        if emb.shape[-1] != cross_attention_dim:
            raise CheckpointError(
                f"null text embedding: {stored} has width {emb.shape[-1]}, the UNet expects {cross_attention_dim}"
            )
        return emb.float(), "stored"
    return torch.zeros(1, 77, cross_attention_dim), "zeros"


def _encode_empty_text(root: Path, allow_pickle: bool) -> torch.Tensor:
    try:
        from transformers import CLIPTextModel, CLIPTokenizer
    except ImportError as exc:
        raise CheckpointError(
            f"{root} has a text encoder; install the `clip` extra (pip install 'harmony[clip]') to use it, "
            f"or store its empty-text embedding as {NULL_EMBEDDING_FILE}"
        ) from exc
    weights_ok = any((root / "text_encoder").glob("*.safetensors"))
    if not weights_ok and not allow_pickle:
        raise CheckpointError(f"text_encoder: no safetensors weights in {root / 'text_encoder'}")
    tokenizer = CLIPTokenizer.from_pretrained(str(root / "tokenizer"))
    encoder = CLIPTextModel.from_pretrained(str(root / "text_encoder"), use_safetensors=weights_ok)
    ids = tokenizer([""], padding="max_length", max_length=tokenizer.model_max_length, truncation=True, return_tensors="pt").input_ids
    with torch.no_grad():
        return encoder(ids)[0].float()


def fingerprint(*dirs: Path | None) -> str:
    """A short id of the checkpoint(s) for metrics tables and resume keys.

    Covers every config file and, for weight files, their size and the first and last
    MiB, which tells fine-tunes of one architecture apart without reading gigabytes.
    """
    h = hashlib.sha256()
    for d in dirs:
        if d is None:
            h.update(b"<none>")
            continue
        for path in sorted(p for p in Path(d).rglob("*") if p.is_file() and not p.name.startswith(".")):
            h.update(str(path.relative_to(d)).encode())
            size = path.stat().st_size
            h.update(str(size).encode())
            with open(path, "rb") as f:
                if size <= 2 << 20:
                    h.update(f.read())
                else:
                    h.update(f.read(1 << 20))
                    f.seek(size - (1 << 20))
                    h.update(f.read())
    return h.hexdigest()[:16]


@dataclass
class ResolvedCheckpoint:
    """Local folders for each part of a DiffHarmony checkpoint (after download)."""

    root: Path
    unet: Path
    vae: Path
    refiner: Path | None
    harmony_vae: Path | None = None

    @property
    def class_sizes(self) -> tuple[int, int] | None:
        """The inference class sizes the model declares (model_index.json `harmony.class_sizes`): a
        model trained at other sizes than SD's 512 / 1024 px says so, and runs there by default."""
        try:
            sizes = json.loads((self.root / "model_index.json").read_text()).get("harmony", {}).get("class_sizes")
        except (OSError, ValueError, AttributeError):
            return None
        return (int(sizes[0]), int(sizes[1])) if sizes else None

    @property
    def model_id(self) -> str:
        parts = [self.unet, self.vae, self.root / "scheduler", self.refiner]
        if self.harmony_vae is not None:  # ids of checkpoints decoded by the plain VAE stay as they were
            parts.append(self.harmony_vae)
        return fingerprint(*parts)


def resolve_checkpoint(
    model: str,
    unet: str | None = None,
    vae: str | None = None,
    refiner: str | None = "auto",
    storage_options: dict | None = None,
    allow_pickle: bool = False,
    harmony_vae: str | None = None,
    decoder: str = "auto",
) -> ResolvedCheckpoint:
    """Resolve and check every part before any weights are loaded, so a job fails fast.

    refiner: a URI, "none"/None for no refinement, or "auto" for the model's `refiner/`
    folder when it has one.
    harmony_vae: a Harmony-VAE URI (a `condition_vae/` model folder or a folder holding one);
    without it, the model's `harmony_vae/` folder when it has one.
    decoder: "auto" (the Harmony-VAE when there is one), "vae" or "harmony-vae" (an error without one).
    """
    if decoder not in DECODERS:
        raise CheckpointError(f"decoder must be one of {', '.join(DECODERS)}, got {decoder!r}")
    root = resolve(model, storage_options)
    unet_dir = component_dir(resolve(unet, storage_options), "unet") if unet else root / "unet"
    vae_dir = component_dir(resolve(vae, storage_options), "vae") if vae else root / "vae"
    weights_file(unet_dir, f"unet ({unet or model})", allow_pickle)
    weights_file(vae_dir, f"vae ({vae or model})", allow_pickle)
    load_scheduler_config(root, f"scheduler ({model})")
    if (root / NULL_EMBEDDING_FILE).exists():
        label = f"null text embedding ({model})"
        if NULL_EMBEDDING_KEY not in check_safetensors(root / NULL_EMBEDDING_FILE, label):
            raise CheckpointError(f"{label}: {root / NULL_EMBEDDING_FILE} lacks the tensor {NULL_EMBEDDING_KEY!r}")
    refiner_dir: Path | None = None
    if refiner == "auto":
        refiner_dir = root / "refiner" if (root / "refiner" / "config.json").exists() else None
    elif refiner and refiner != "none":
        refiner_dir = component_dir(resolve(refiner, storage_options), "refiner")
    if refiner_dir is not None:
        weights_file(refiner_dir, f"refiner ({refiner if refiner != 'auto' else model})", allow_pickle)
    harmony_dir: Path | None = None
    if decoder != "vae":
        if harmony_vae:
            found = resolve(harmony_vae, storage_options)
            harmony_dir = next((d for d in (found, found / HARMONY_VAE_DIR, found / RELEASED_HARMONY_VAE_DIR)
                                if (d / "config.json").exists()), found)
        elif (root / HARMONY_VAE_DIR / "config.json").exists():
            harmony_dir = root / HARMONY_VAE_DIR
        if harmony_dir is None and decoder == "harmony-vae":
            raise CheckpointError(f"--decoder harmony-vae: {model} has no {HARMONY_VAE_DIR}/ folder; pass --harmony-vae URI")
        if harmony_dir is not None:
            weights_file(harmony_dir, f"harmony-vae ({harmony_vae or model})", allow_pickle)
    return ResolvedCheckpoint(root=root, unet=unet_dir, vae=vae_dir, refiner=refiner_dir, harmony_vae=harmony_dir)
