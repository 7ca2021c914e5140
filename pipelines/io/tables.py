"""Parquet tables under an output prefix: the journal of a streaming job and the consolidated metrics.

Shared by every job that writes `metrics/metrics.parquet` (harmonize, evaluate) and by the
report, which reads it back. Local paths and object stores alike, through `pipelines.io.storage`.
"""

from __future__ import annotations

import io

import pandas as pd
import pyarrow as pa
import pyarrow.fs  # noqa: F401 - makes `pa.fs` available
import pyarrow.parquet as pq

from pipelines.io.storage import arrow_filesystem, filesystem, write_bytes_atomic

JOURNAL = "_journal"
METRICS_FILE = "metrics/metrics.parquet"
SUMMARY_FILE = "summary.json"


def read_parquet_tree(uri: str, options: dict) -> pd.DataFrame:
    """One parquet file, or every parquet file under a folder (sorted, schemas promoted); empty if absent."""
    fs, path = arrow_filesystem(uri, options)
    try:
        info = fs.get_file_info(path)
        if info.type == pa.fs.FileType.NotFound:
            return pd.DataFrame()
        files = [f.path for f in fs.get_file_info(pa.fs.FileSelector(path, recursive=True))
                 if f.type == pa.fs.FileType.File and f.path.endswith(".parquet")] if info.type == pa.fs.FileType.Directory else [path]
        if not files:
            return pd.DataFrame()
        tables = [pq.read_table(f, filesystem=fs) for f in sorted(files)]
        return pa.concat_tables(tables, promote_options="permissive").to_pandas()
    except FileNotFoundError:
        return pd.DataFrame()


def write_table_atomic(table: pa.Table, uri: str, options: dict) -> None:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    write_bytes_atomic(uri, buf.getvalue(), options)


def journal_dataset(ds, uri: str, options: dict) -> pd.DataFrame:
    """Stream a Ray dataset's blocks to parquet files under `uri` as they finish, then read them back."""
    fs, path = arrow_filesystem(uri, options)
    # Writes are small; a fraction of a CPU keeps them from starving the stages.
    ds.write_parquet(path, filesystem=fs, ray_remote_args={"num_cpus": 0.1})
    return read_parquet_tree(uri, options)


def remove_tree(uri: str, options: dict) -> None:
    fs, path = filesystem(uri, options)
    try:
        fs.rm(path, recursive=True)
    except FileNotFoundError:
        pass
