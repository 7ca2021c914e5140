"""Reading a manifest (parquet, CSV, JSON Lines) into validated rows, each with a status.

Bad rows are not dropped: they become `invalid` with a reason, so every manifest row
leaves exactly one metrics row.
"""

from __future__ import annotations

import hashlib
import io
import posixpath

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from schemas.manifest import OPTIONAL, PLACEMENT, URI_COLUMNS, row_layouts, row_problems
from schemas.vocabulary import ID_RULE, ErrorKind, Status, is_safe_name

from pipelines.errors import ManifestError
from pipelines.io.access import AccessPolicy
from pipelines.io.storage import arrow_filesystem, filesystem, is_uri, join

FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}


def manifest_format(uri: str) -> str:
    ext = posixpath.splitext(uri.rstrip("/"))[1].lower()
    if ext not in FORMATS:
        raise ManifestError(f"manifest {uri}: unknown format {ext or '(no extension)'}; use .parquet, .csv or .jsonl")
    return FORMATS[ext]


def read_manifest(uri: str, options: dict | None = None) -> pd.DataFrame:
    fmt = manifest_format(uri)
    try:
        if fmt == "parquet":
            fs, path = arrow_filesystem(uri, options)
            df = pq.read_table(path, filesystem=fs).to_pandas()
        else:
            fs, path = filesystem(uri, options)
            data = fs.cat_file(path)
            if fmt == "csv":
                df = pd.read_csv(io.BytesIO(data), dtype=str, keep_default_na=False)
            else:
                df = pd.read_json(io.BytesIO(data), lines=True, dtype=False)
    except FileNotFoundError:
        raise ManifestError(f"manifest {uri} does not exist") from None
    except ManifestError:
        raise
    except Exception as exc:  # noqa: BLE001 - parsers raise many types; the job cannot run either way
        raise ManifestError(f"manifest {uri} cannot be read: {type(exc).__name__}: {exc}") from exc
    for c in OPTIONAL + URI_COLUMNS + PLACEMENT:  # CSV has no nulls: an empty cell means "not given"
        if c in df.columns:
            df[c] = df[c].map(lambda v: None if v is None or (isinstance(v, str) and v == "") else v)
    return df.reset_index(drop=True)


def manifest_dir(uri: str) -> str:
    return uri.rsplit("/", 1)[0] if "/" in uri else "."


def resolve_uri(base: str, value):
    """Relative paths resolve against the manifest's folder; URIs and absolute paths stay."""
    if not isinstance(value, str) or not value or "://" in value or value.startswith("/"):
        return value
    return join(base, value)


def row_seed(seed: int, row_id: str) -> int:
    """Per-row noise seed: a function of the job seed and the id only, so batching never changes it."""
    digest = hashlib.blake2b(f"{seed}:{row_id}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "little") & 0x7FFF_FFFF


def uri_problems(out: pd.DataFrame, policy: AccessPolicy, columns=URI_COLUMNS) -> pd.Series:
    """Per row, the (resolved) URIs the access policy refuses, naming the column and the URI ("" when none)."""
    def problems(rec) -> str:
        refused = [(c, rec[c], policy.refusal(rec[c])) for c in columns if is_uri(rec[c])]
        return "; ".join(f"{c}: {u!r} is not allowed: {why}" for c, u, why in refused if why)

    return pd.Series([problems(rec) for rec in out[list(columns)].to_dict("records")], index=out.index, dtype=object)


def prepare_rows(df: pd.DataFrame, manifest_uri: str, output: str, image_format: str, seed: int,
                 allow: tuple[str, ...] | list[str] = ()) -> pd.DataFrame:
    """Validate, resolve URIs, refuse the ones outside the manifest's storage and the `allow` prefixes
    (pipelines/io/access.py), mark duplicates, assign seeds and output URIs; returns the job's row table."""
    reasons = row_problems(df)
    # Defence in depth: the id names the output object, so it must be one plain path segment.
    # (A `$`-anchored pattern alone lets a trailing newline through.)
    unsafe = df["id"].map(lambda v: isinstance(v, str) and not is_safe_name(v))
    for i in df.index[unsafe & (reasons == "")]:
        reasons[i] = ID_RULE
    out = df.copy()
    out.insert(0, "row", range(len(out)))
    base = manifest_dir(manifest_uri)
    for c in URI_COLUMNS:
        if c in out.columns:
            out[c] = out[c].map(lambda v: resolve_uri(base, v))
        else:
            out[c] = None
    for c in PLACEMENT:  # numbers of cutout rows (checked by row_problems); null for composite rows
        out[c] = pd.to_numeric(out[c], errors="coerce").astype("float64") if c in out.columns else np.nan
    out["layout"] = row_layouts(out)
    if "subset" not in out.columns:
        out["subset"] = None
    out["status"] = Status.PENDING
    out["error_type"] = None
    out["error_message"] = None
    bad = reasons != ""
    out.loc[bad, "status"] = Status.INVALID
    out.loc[bad, "error_type"] = ErrorKind.INVALID_ROW
    out.loc[bad, "error_message"] = reasons[bad]
    # Where a row may read from, decided before anything is fetched.
    refused = uri_problems(out, AccessPolicy(manifest_uri, tuple(allow))).where(~bad, "")
    far = refused != ""
    out.loc[far, "status"] = Status.INVALID
    out.loc[far, "error_type"] = ErrorKind.URI_NOT_ALLOWED
    out.loc[far, "error_message"] = refused[far]
    bad = bad | far
    ids = out["id"].where(~bad)
    dup = ids.notna() & ids.duplicated(keep="first")
    out.loc[dup, "status"] = Status.INVALID
    out.loc[dup, "error_type"] = ErrorKind.DUPLICATE_ID
    out.loc[dup, "error_message"] = [f"id {i!r} appears earlier in the manifest" for i in out.loc[dup, "id"]]
    ok = out["status"] == Status.PENDING
    out["output"] = None
    out.loc[ok, "output"] = [join(output, "images", f"{i}.{image_format}") for i in out.loc[ok, "id"]]
    out["seed"] = [row_seed(seed, str(i)) if k else None for i, k in zip(out["id"], ok)]
    # Keep the table Arrow-friendly: ids as strings even where the manifest had other types.
    out["id"] = out["id"].map(lambda v: v if isinstance(v, str) else ("" if v is None else str(v)))
    return out


def load_rows(cfg, image_format: str, seed: int, need: dict[str, str] | None = None) -> pd.DataFrame:
    """The job's row table from `cfg.manifest` (first `cfg.limit` rows): read, validated, resolved.
    `need`: optional columns this job cannot run without, each with the reason it is needed."""
    manifest = read_manifest(cfg.manifest, cfg.storage_options)
    for column, why in (need or {}).items():
        if column not in manifest.columns:
            raise ManifestError(f"manifest {cfg.manifest} has no `{column}` column: {why}")
    if cfg.limit:
        manifest = manifest.head(cfg.limit)
    return prepare_rows(manifest, cfg.manifest, cfg.output, image_format, seed, allow=cfg.allow_uri)
