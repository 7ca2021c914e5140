"""Reading a manifest (parquet, CSV, JSON Lines) into validated rows, each with a status.

Bad rows are not dropped: they become `invalid` with a reason, so every manifest row
leaves exactly one metrics row.
"""

from __future__ import annotations

import hashlib
import io
import json
import posixpath

import numpy as np
import pandas as pd
import pyarrow.parquet as pq

from schemas.manifest import OPTIONAL, PLACEMENT, REQUIRED, URI_COLUMNS, row_layouts, row_problems
from schemas.vocabulary import ID_RULE, ErrorKind, Status, is_safe_name

from pipelines.errors import ManifestError
from pipelines.io.access import AccessPolicy
from pipelines.io.storage import arrow_filesystem, is_uri, join, normalise_uri, read_bytes

FORMATS = {".parquet": "parquet", ".pq": "parquet", ".csv": "csv", ".jsonl": "jsonl", ".ndjson": "jsonl", ".json": "jsonl"}


def manifest_format(uri: str) -> str:
    ext = posixpath.splitext(uri.rstrip("/"))[1].lower()
    if ext not in FORMATS:
        raise ManifestError(f"manifest {uri}: unknown format {ext or '(no extension)'}; use .parquet, .csv or .jsonl")
    return FORMATS[ext]


def read_manifest(uri: str, options: dict | None = None) -> pd.DataFrame:
    uri = normalise_uri(uri)
    fmt = manifest_format(uri)
    try:
        if fmt == "parquet":
            fs, path = arrow_filesystem(uri, options)
            df = pq.read_table(path, filesystem=fs).to_pandas()
        else:
            data = read_bytes(uri, options)
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
    return normalise_columns(df)


# What a manifest row gives the jobs; every other column passes through to the metrics table.
INPUT_COLUMNS = REQUIRED + URI_COLUMNS + OPTIONAL + PLACEMENT
# Columns the jobs add on the way (besides the metrics table's and the regions'): a manifest column of one of
# these names is carried under PASS_PREFIX + its name instead.
TRANSIT = ("comp_bytes", "mask_bytes", "real_bytes", "result_rgb", "compare_prediction", "layout", "seed", "row",
           "output", "review", "notes")
PASS_PREFIX = "manifest."


def reserved_columns() -> frozenset[str]:
    """Every column name a job writes or carries between its stages (tests/unit/pipelines/io keeps it complete)."""
    from harmony_ops.regions import REGION_COLUMNS
    from schemas import synthesis
    from schemas.metrics import COLUMNS, OPTIONAL_FLOAT_COLUMNS, OPTIONAL_STRING_COLUMNS

    names = set(COLUMNS) | set(OPTIONAL_FLOAT_COLUMNS) | set(OPTIONAL_STRING_COLUMNS) | set(REGION_COLUMNS) | set(TRANSIT)
    for k, v in vars(synthesis).items():
        if k.endswith("COLUMNS") and isinstance(v, tuple):
            names |= set(v)
    return frozenset(names - set(INPUT_COLUMNS))


def _scalar_kind(v):
    if v is None or (pd.api.types.is_scalar(v) and pd.isna(v)):  # None, NaN, pd.NA, NaT
        return None
    return type(v) if isinstance(v, (str, bool, int, float, np.integer, np.floating, np.bool_)) else object


def normalise_columns(df: pd.DataFrame) -> pd.DataFrame:
    """The manifest's columns as every job can carry them, decided once when read: an index that holds `id` (a
    parquet file written from pandas with `id` as its index) becomes the column; a pass-through column named like
    one the jobs write is renamed `manifest.<name>`; a pass-through column whose cells are not all one scalar type
    (nested, mixed) is carried as JSON text."""
    if "id" not in df.columns and "id" in [n for n in df.index.names if n]:
        df = df.reset_index()
    df = df.reset_index(drop=True)
    reserved = reserved_columns()
    renames = {}
    for c in df.columns:
        if c in reserved:
            new = PASS_PREFIX + str(c)
            while new in df.columns or new in renames.values():
                new = PASS_PREFIX + new
            renames[c] = new
    df = df.rename(columns=renames)
    for c in df.columns:
        if c in INPUT_COLUMNS or df[c].dtype != object:  # a typed column (Int64, datetime, ...) carries as it is
            continue
        kinds = {_scalar_kind(v) for v in df[c]} - {None}
        if object in kinds or len(kinds) > 1:
            df[c] = pd.Series([None if _scalar_kind(v) is None else v if isinstance(v, str)
                               else json.dumps(v, default=str, sort_keys=True) for v in df[c]], index=df.index, dtype=object)
    return df


def manifest_dir(uri: str) -> str:
    return uri.rsplit("/", 1)[0] if "/" in uri else "."


def resolve_uri(base: str, value):
    """Relative paths resolve against the manifest's folder; URIs (their scheme in lower case) and absolute paths
    stay."""
    if isinstance(value, str) and "://" in value:
        return normalise_uri(value)
    if not isinstance(value, str) or not value or value.startswith("/"):
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
    if len(df) == 0:  # a manifest of no rows is an empty run, whatever its columns
        df = pd.DataFrame({c: pd.Series([], dtype=object) for c in (*REQUIRED, "composite", "mask")}) \
            .join(df.drop(columns=[c for c in (*REQUIRED, "composite", "mask") if c in df.columns]))
    reasons = row_problems(df)
    # Defence in depth: the id names the output object, so it must be one plain path segment.
    # (A `$`-anchored pattern alone lets a trailing newline through.)
    unsafe = df["id"].map(lambda v: isinstance(v, str) and not is_safe_name(v)).astype(bool)
    for i in df.index[unsafe & (reasons == "")]:
        reasons[i] = ID_RULE
    out = df.copy()
    # Text cells of another type (numbers, lists, ...) are their row's reason above; the table keeps strings only.
    for c in (*URI_COLUMNS, "subset"):
        if c in out.columns:
            out[c] = out[c].map(lambda v: v if isinstance(v, str) else None).astype(object)
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
