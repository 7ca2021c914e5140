"""`harmony import-iharmony4`: a manifest from the iHarmony4 layout.

Each subset folder (HCOCO, HAdobe5k, HFlickr, Hday2night) holds composite_images/,
masks/, real_images/ and {subset}_{split}.txt listing composite names; iHarmony4's root
holds IHD_{split}.txt listing `Subset/composite_images/name.jpg`. Names map as
`a0001_1_1.jpg` -> mask `a0001_1.png`, real `a0001.jpg`.
"""

from __future__ import annotations

import io

import pandas as pd

from pipelines.io.storage import filesystem, join, write_bytes_atomic
from schemas.vocabulary import IHARMONY4_SUBSETS

SUBSETS = IHARMONY4_SUBSETS


def names_for(composite_name: str) -> tuple[str, str]:
    """(mask name, real name) of an iHarmony4 composite file name."""
    stem = composite_name.rsplit("/", 1)[-1].rsplit(".", 1)[0]
    parts = stem.split("_")
    if len(parts) < 3:
        raise ValueError(f"{composite_name!r} does not follow iHarmony4 naming (<image>_<mask>_<n>.jpg)")
    # The last two fields are the mask and sample numbers; the image name may hold underscores.
    return f"{'_'.join(parts[:-1])}.png", f"{'_'.join(parts[:-2])}.jpg"


def _list_entries(root: str, split: str, options: dict | None) -> list[tuple[str, str]]:
    """(subset, composite path relative to root) for the split."""
    fs, path = filesystem(root, options)
    top = f"{path.rstrip('/')}/IHD_{split}.txt"
    if fs.exists(top):
        lines = fs.cat_file(top).decode().split()
        return [(ln.split("/", 1)[0], ln) for ln in lines if ln.strip()]
    entries = []
    for subset in SUBSETS:
        listing = f"{path.rstrip('/')}/{subset}/{subset}_{split}.txt"
        if fs.exists(listing):
            entries += [(subset, f"{subset}/{ln}" if "/" in ln else f"{subset}/composite_images/{ln}")
                        for ln in fs.cat_file(listing).decode().split() if ln.strip()]
    if not entries:
        name = path.rstrip("/").rsplit("/", 1)[-1]
        own = f"{path.rstrip('/')}/{name}_{split}.txt"
        if fs.exists(own):  # root is one subset folder
            entries = [(name, ln if "/" in ln else f"composite_images/{ln}")
                       for ln in fs.cat_file(own).decode().split() if ln.strip()]
    if not entries:
        raise FileNotFoundError(f"no IHD_{split}.txt or <Subset>_{split}.txt under {root}")
    return entries


def build_manifest(root: str, split: str = "test", options: dict | None = None) -> pd.DataFrame:
    rows = []
    for subset, rel in _list_entries(root, split, options):
        folder, _, name = ("/" + rel).rpartition("/composite_images/")
        folder = folder.lstrip("/")
        mask_name, real_name = names_for(name)
        base = f"{folder}/" if folder else ""
        rows.append({
            "id": name.rsplit(".", 1)[0],
            "composite": join(root, rel),
            "mask": join(root, f"{base}masks/{mask_name}"),
            "real": join(root, f"{base}real_images/{real_name}"),
            "subset": subset,
        })
    return pd.DataFrame(rows, columns=["id", "composite", "mask", "real", "subset"])


def write_manifest(df: pd.DataFrame, uri: str, options: dict | None = None) -> None:
    ext = uri.rsplit(".", 1)[-1].lower()
    buf = io.BytesIO()
    if ext in ("parquet", "pq"):
        df.to_parquet(buf, index=False)
    elif ext == "csv":
        df.to_csv(buf, index=False)
    elif ext in ("jsonl", "ndjson", "json"):
        df.to_json(buf, orient="records", lines=True)
    else:
        raise ValueError(f"manifest {uri} must end in .parquet, .csv or .jsonl")
    write_bytes_atomic(uri, buf.getvalue(), options)


def import_iharmony4(root: str, split: str, output: str, options: dict | None = None) -> int:
    df = build_manifest(root, split, options)
    write_manifest(df, output, options)
    return len(df)
