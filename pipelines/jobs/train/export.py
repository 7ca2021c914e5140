"""model/: the --init checkpoint with the trained part replaced, in the layout harmonize loads."""

from __future__ import annotations

import tempfile
from pathlib import Path

from harmony_ops.checkpoints import HARMONY_VAE_DIR, resolve
from pipelines.io.storage import filesystem, join
from pipelines.jobs.train.card import INIT_ONLY

# The folder of the checkpoint each task trains.
PART = {"stage1": "unet", "inverse": "unet", "refiner": "refiner", "harmony-vae": HARMONY_VAE_DIR, "vae": "vae"}


def export_model(init: str, trained_dir: Path, task: str, output: str, options: dict) -> str:
    root = resolve(init, options)
    part = PART[task]
    uri = join(output, "model")
    fs, dest = filesystem(uri, options)
    with tempfile.TemporaryDirectory():
        for p in sorted(root.rglob("*")):
            rel = p.relative_to(root).as_posix()
            if not p.is_file() or rel.startswith(f"{part}/") or p.name.startswith(".") or rel in INIT_ONLY:
                continue
            fs.makedirs(f"{dest}/{Path(rel).parent.as_posix()}", exist_ok=True)
            fs.put_file(str(p), f"{dest}/{rel}")
        for p in sorted(Path(trained_dir).rglob("*")):
            if p.is_file():
                rel = p.relative_to(trained_dir).as_posix()
                fs.makedirs(f"{dest}/{part}/{Path(rel).parent.as_posix()}", exist_ok=True)
                fs.put_file(str(p), f"{dest}/{part}/{rel}")
    return uri
