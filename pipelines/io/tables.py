"""Parquet tables under an output prefix: the journal of a streaming job, consolidated tables, and
one-file tables written from a stream of parts.

Local paths and object stores alike, through `pipelines.io.storage`.
"""

from __future__ import annotations

import io
import json
import os
import uuid
from collections.abc import Iterable

import pandas as pd
import pyarrow as pa
import pyarrow.fs  # noqa: F401 - makes `pa.fs` available
import pyarrow.parquet as pq

from pipelines.io.storage import arrow_filesystem, filesystem, join, protocol_of, write_bytes_atomic

JOURNAL = "_journal"
METRICS_FILE = "metrics/metrics.parquet"
SUMMARY_FILE = "summary.json"
REVIEW_DIR = "report_files/rows"  # each row's review images, beside report.html (pipelines/jobs/review_images.py)


def parquet_files(uri: str, options: dict) -> tuple[pa.fs.FileSystem, list[str]]:
    """(arrow filesystem, sorted parquet files): the file itself, every parquet file under a folder, or none."""
    fs, path = arrow_filesystem(uri, options)
    info = fs.get_file_info(path)
    if info.type == pa.fs.FileType.NotFound:
        return fs, []
    if info.type != pa.fs.FileType.Directory:
        return fs, [path]
    return fs, sorted(f.path for f in fs.get_file_info(pa.fs.FileSelector(path, recursive=True))
                      if f.type == pa.fs.FileType.File and f.path.endswith(".parquet"))


def read_parquet_tree(uri: str, options: dict, skip_truncated: bool = False) -> pd.DataFrame:
    """One parquet file, or every parquet file under a folder (sorted, schemas promoted); empty if absent.
    `skip_truncated`: leave out files that are not whole parquet files (a journal file a killed run was
    writing: Ray Data's writes are not atomic on file systems); their rows are simply not done yet."""
    try:
        fs, files = parquet_files(uri, options)
        tables = []
        for f in files:
            try:
                tables.append(pq.read_table(f, filesystem=fs))
            except pa.ArrowInvalid:
                if not skip_truncated:
                    raise
        if not tables:
            return pd.DataFrame()
        return pa.concat_tables(tables, promote_options="permissive").to_pandas()
    except FileNotFoundError:
        return pd.DataFrame()


def write_table_atomic(table: pa.Table, uri: str, options: dict) -> None:
    buf = io.BytesIO()
    pq.write_table(table, buf)
    write_bytes_atomic(uri, buf.getvalue(), options)


def write_parquet_stream(tables: Iterable[pa.Table], uri: str, schema: pa.Schema, options: dict) -> None:
    """One parquet file from a stream of tables, never holding more than one: a temporary file renamed
    into place on file systems; on object stores a (multipart) upload, visible only once complete."""
    fs, path = arrow_filesystem(uri, options)
    local = protocol_of(uri) == "file"
    target = f"{path}.tmp-{uuid.uuid4().hex}" if local else path
    if local:
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    with fs.open_output_stream(target) as out, pq.ParquetWriter(out, schema) as writer:
        for t in tables:
            writer.write_table(t)
    if local:
        os.replace(target, path)


def journal_dataset(ds, uri: str, options: dict, read_back: bool = True, on_block=None) -> pd.DataFrame:
    """Stream a Ray dataset's blocks to parquet files under `uri` as they finish (each written whole:
    a temporary file renamed into place, or one object PUT), calling `on_block(rows, status_counts)`
    on the driver after each; then read them back (or return an empty frame when the caller reads the
    parts itself). The driver receives one small row of counts per block, never the rows."""
    writer = _JournalWriter(uri, options)
    # Writes are small; a fraction of a CPU keeps them from starving the stages.
    counts = ds.map_batches(writer, batch_format="pyarrow", batch_size=None, num_cpus=0.1, zero_copy_batch=True)
    for batch in counts.iter_batches(batch_format="pyarrow", batch_size=None):
        for rec in batch.to_pylist():
            if on_block is not None:
                on_block(int(rec["rows"]), json.loads(rec["counts"]))
    return read_parquet_tree(uri, options) if read_back else pd.DataFrame()


class _JournalWriter:
    """Ray Data task body: one journal file per block, answered by its row and status counts."""

    def __init__(self, uri: str, options: dict):
        self.uri, self.options = uri, options

    def __call__(self, table: pa.Table) -> pa.Table:
        counts: dict[str, int] = {}
        if table.num_rows:
            write_table_atomic(table, join(self.uri, f"{uuid.uuid4().hex}.parquet"), self.options)
            if "status" in table.column_names:
                for v, n in pd.Series(table.column("status").to_pylist()).value_counts().items():
                    counts[str(v)] = int(n)
        return pa.table({"rows": [table.num_rows], "counts": [json.dumps(counts)]})


def remove_tree(uri: str, options: dict) -> None:
    fs, path = filesystem(uri, options)
    try:
        fs.rm(path, recursive=True)
    except FileNotFoundError:
        pass
