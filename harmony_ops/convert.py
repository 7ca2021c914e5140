"""Turn the archive the DiffHarmony authors released into this project's checkpoint layout, once.

Released layout (unpacked): `base/` (an SD-inpainting diffusers pipeline with `.bin` weights,
text encoder, tokenizer, safety checker, feature extractor), `weights-N/` (fine-tuned stage-1
UNets), `refinement/` (the UNet2DCustom refiner), `condition_vae/` (the Harmony-VAE), `inverse/`
(the inverse-harmonization model, its UNet in a `weights-N/` folder).

Written layout: DST is a stage-1 checkpoint (`unet/`, `vae/`, `scheduler/`, the stored empty-text
embedding, `refiner/`, `harmony_vae/`), DST/inverse/ one of the same layout for the inverse model,
DST/harmony.json a model card. Everything written is safetensors, so no worker ever unpickles:
`.bin` files are read with torch's weights-only loader, and one that needs more is refused.
"""

from __future__ import annotations

import hashlib
import json
import pickle
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

import fsspec
import torch
from safetensors.torch import load_file, save_file

from .checkpoints import (
    HARMONY_VAE_DIR,
    NULL_EMBEDDING_FILE,
    NULL_EMBEDDING_KEY,
    PICKLE_SUFFIXES,
    SAFE_WEIGHTS,
    CheckpointError,
    _encode_empty_text,
    is_remote,
    resolve,
)
from .remote import client_options

DROPPED = ("safety_checker", "feature_extractor")
PARTS = ("unet", "refiner", "harmony_vae", "inverse", "inverse_unet")


@dataclass
class Conversion:
    """What the converter used for each part and what it said about it, for the CLI to print."""

    dst: str
    used: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    files: list[dict] = field(default_factory=list)


def read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Tensors of a weight file; pickle files through torch's weights-only loader, which runs no code."""
    if path.suffix == ".safetensors":
        return load_file(str(path))
    try:
        sd = torch.load(path, map_location="cpu", weights_only=True)
    except (pickle.UnpicklingError, RuntimeError, AttributeError, TypeError) as exc:
        raise CheckpointError(
            f"{path}: this pickle file needs full unpickling (it holds objects other than tensors), which can run "
            f"arbitrary code, so it is refused; load it yourself in a sandbox and save its tensors as safetensors "
            f"({type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''})"
        ) from exc
    if not isinstance(sd, dict) or not all(isinstance(v, torch.Tensor) for v in sd.values()):
        raise CheckpointError(f"{path}: not a state dict of tensors")
    return sd


def _weights_in(folder: Path) -> Path:
    files = sorted(p for p in folder.iterdir() if p.suffix == ".safetensors") or sorted(
        p for p in folder.iterdir() if p.suffix in PICKLE_SUFFIXES)
    if not (folder / "config.json").exists() or not files:
        raise CheckpointError(f"{folder}: not a model folder (needs config.json and one weight file)")
    if len(files) > 1:
        raise CheckpointError(f"{folder}: several weight files ({', '.join(p.name for p in files)}); sharded weights are not supported")
    return files[0]


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class _Converter:
    def __init__(self, src_root: Path, src_uri: str, out: Path, report: Conversion):
        self.src, self.src_uri, self.out, self.report = src_root, src_uri, out, report

    def record(self, path: Path) -> None:
        rel = str(path.relative_to(self.src)) if path.is_relative_to(self.src) else str(path)
        if not any(f["path"] == rel for f in self.report.files):
            self.report.files.append({"path": rel, "size": path.stat().st_size, "sha256": _sha256(path)})

    def rel(self, path: Path) -> str:
        return str(path.relative_to(self.src)) + "/" if path.is_relative_to(self.src) else str(path)

    def model(self, folder: Path, dest: Path) -> None:
        """Copy a diffusers model folder: its config unchanged, its tensors as safetensors."""
        weights = _weights_in(folder)
        sd = read_state_dict(weights)
        dest.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(folder / "config.json", dest / "config.json")
        save_file({k: v.contiguous() for k, v in sd.items()}, str(dest / SAFE_WEIGHTS))
        self.record(folder / "config.json")
        self.record(weights)

    def embedding(self, base: Path, dest: Path) -> str:
        """Store the empty-text embedding computed once from base/'s text encoder; where it came from."""
        te, tok = base / "text_encoder", base / "tokenizer"
        if not (te.is_dir() and tok.is_dir()):
            self.report.notes.append(f"{self.rel(base)} has no text_encoder/ + tokenizer/: no empty-text embedding stored, "
                                     "the loader falls back to zeros of the UNet's cross-attention width")
            return "zeros"
        with tempfile.TemporaryDirectory() as tmp:
            stage = Path(tmp)
            weights = _weights_in(te)
            (stage / "text_encoder").mkdir()
            shutil.copyfile(te / "config.json", stage / "text_encoder" / "config.json")
            save_file({k: v.contiguous() for k, v in read_state_dict(weights).items()}, str(stage / "text_encoder" / "model.safetensors"))
            shutil.copytree(tok, stage / "tokenizer")
            emb = _encode_empty_text(stage, allow_pickle=False)
        for p in [te / "config.json", weights, *sorted(q for q in tok.iterdir() if q.is_file())]:
            self.record(p)
        save_file({NULL_EMBEDDING_KEY: emb.contiguous()}, str(dest / NULL_EMBEDDING_FILE))
        return "text_encoder"


def _pick(src: Path, explicit: str | None, candidates: list[Path], part: str, flag: str) -> Path | None:
    if explicit:
        p = Path(explicit) if Path(explicit).is_absolute() else src / explicit
        if not p.is_dir():
            raise CheckpointError(f"{flag} {explicit}: no such folder (relative paths are taken under SRC)")
        return p
    if len(candidates) > 1:
        names = ", ".join(str(c.relative_to(src)) + "/" for c in candidates)
        raise CheckpointError(f"the archive has several candidates for the {part}: {names}; choose one with {flag} PATH")
    return candidates[0] if candidates else None


def _weights_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.glob("weights-*") if p.is_dir() and (p / "config.json").exists())


def _first(*paths: Path) -> Path | None:
    return next((p for p in paths if (p / "config.json").exists()), None)


def convert_weights(src: str, dst: str, unet: str | None = None, refiner: str | None = None,
                    harmony_vae: str | None = None, inverse: str | None = None, inverse_unet: str | None = None,
                    storage_options: dict | None = None) -> Conversion:
    root = resolve(src, storage_options)
    report = Conversion(dst=dst)
    base = root / "base" if (root / "base").is_dir() else root
    if not (base / "vae").is_dir() or not (base / "scheduler").is_dir():
        raise CheckpointError(f"{src}: no base pipeline (base/ with vae/ and scheduler/)")
    unet_dir = _pick(root, unet, _weights_dirs(root), "stage-1 UNet", "--unet") or _first(base / "unet")
    if unet_dir is None:
        raise CheckpointError(f"{src}: no stage-1 UNet (weights-N/ or base/unet/); name one with --unet PATH")
    refiner_dir = _pick(root, refiner, [p for p in (root / "refinement", root / "refiner") if (p / "config.json").exists()],
                        "refiner", "--refiner")
    hvae_dir = _pick(root, harmony_vae, [p for p in (root / "condition_vae", root / HARMONY_VAE_DIR) if (p / "config.json").exists()],
                     "Harmony-VAE", "--harmony-vae")
    inv_dir = _pick(root, inverse, [root / "inverse"] if (root / "inverse").is_dir() else [], "inverse model", "--inverse")
    inv_unet = None
    if inv_dir is not None:
        inv_unet = _pick(root, inverse_unet, _weights_dirs(inv_dir), "inverse UNet", "--inverse-unet") or _first(inv_dir / "unet")
        if inv_unet is None:
            raise CheckpointError(f"{inv_dir}: no inverse UNet (weights-N/ or unet/); name one with --inverse-unet PATH")

    remote = is_remote(dst)
    stage_dir = Path(tempfile.mkdtemp(prefix="harmony-convert-")) if remote else Path(dst).expanduser()
    stage_dir.mkdir(parents=True, exist_ok=True)
    conv = _Converter(root, src, stage_dir, report)
    try:
        def checkpoint(out: Path, unet_from: Path, own: Path) -> str:
            conv.model(unet_from, out / "unet")
            conv.model(_first(own / "vae") or base / "vae", out / "vae")
            sched = own / "scheduler" if (own / "scheduler").is_dir() else base / "scheduler"
            (out / "scheduler").mkdir(parents=True, exist_ok=True)
            shutil.copyfile(sched / "scheduler_config.json", out / "scheduler" / "scheduler_config.json")
            conv.record(sched / "scheduler_config.json")
            return conv.embedding(own if (own / "text_encoder").is_dir() else base, out)

        report.used["unet"] = conv.rel(unet_dir)
        report.used["vae"] = conv.rel(base / "vae")
        report.used["empty-text embedding"] = checkpoint(stage_dir, unet_dir, base)
        if refiner_dir is not None:
            conv.model(refiner_dir, stage_dir / "refiner")
        report.used["refiner"] = conv.rel(refiner_dir) if refiner_dir else "none found"
        if hvae_dir is not None:
            conv.model(hvae_dir, stage_dir / HARMONY_VAE_DIR)
        report.used["harmony-vae"] = conv.rel(hvae_dir) if hvae_dir else "none found"
        if inv_dir is not None:
            checkpoint(stage_dir / "inverse", inv_unet, inv_dir)
        report.used["inverse unet"] = conv.rel(inv_unet) if inv_unet else "none found"
        dropped = [d for d in DROPPED if (base / d).exists()]
        if dropped:
            report.notes.append(f"dropped {', '.join(d + '/' for d in dropped)}: harmonization never runs them")
        card = {"format": "harmony-checkpoint", "source": src, "parts": report.used, "notes": report.notes,
                "files": report.files}
        (stage_dir / "harmony.json").write_text(json.dumps(card, indent=2))
        if remote:
            fs, path = fsspec.core.url_to_fs(dst, **client_options(dst, storage_options))
            fs.put(str(stage_dir) + "/", path.rstrip("/") + "/", recursive=True)
    finally:
        if remote:
            shutil.rmtree(stage_dir, ignore_errors=True)
    return report
