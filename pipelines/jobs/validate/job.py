"""`harmony validate`: check a manifest and that every object it names exists (writes nothing); with
`deep`, also fetch and decode every row as harmonize's decode stage would, as a Ray job on CPU workers
(no model), and optionally write validation.parquet: one row per manifest row."""

from __future__ import annotations

import os
import stat
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from harmony_ops.remote import RedirectRefused
import pandas as pd

from pipelines.io.manifest import prepare_rows, read_manifest
from pipelines.io.row_inputs import INPUT_COLUMNS
from schemas.manifest import URI_COLUMNS
from schemas.vocabulary import ErrorKind, Status
from pipelines.io.storage import filesystem, is_uri, join, protocol_of

SHOW = 20


@dataclass
class ValidationReport:
    manifest: str
    rows: int
    invalid: list[tuple[int, str, str]] = field(default_factory=list)  # (row, id, reason)
    missing: list[tuple[int, str, str]] = field(default_factory=list)  # (row, id, uri)
    checked_objects: int = 0

    @property
    def ok(self) -> bool:
        return not self.invalid and not self.missing

    def text(self) -> str:
        lines = [f"manifest {self.manifest}: {self.rows} rows, {len(self.invalid)} invalid, "
                 f"{len(self.missing)} missing objects ({self.checked_objects} objects checked)"]
        for row, rid, why in self.invalid[:SHOW]:
            lines.append(f"  invalid row {row} (id {rid!r}): {why}")
        for row, rid, uri in self.missing[:SHOW]:
            lines.append(f"  missing object for row {row} (id {rid!r}): {uri}")
        hidden = max(0, len(self.invalid) - SHOW) + max(0, len(self.missing) - SHOW)
        if hidden:
            lines.append(f"  ... and {hidden} more")
        lines.append("OK" if self.ok else "PROBLEMS FOUND")
        return "\n".join(lines)


def run_validate(manifest: str, storage_options: dict | None = None, check_objects: bool = True, workers: int = 16,
                 allow_uri: tuple[str, ...] | list[str] = ()) -> ValidationReport:
    """Rows are checked as the jobs check them, `allow_uri` included: a refused URI is an invalid row
    and is never looked up."""
    df = read_manifest(manifest, storage_options)
    rows = prepare_rows(df, manifest, "unused://", "png", 0, allow=allow_uri)
    report = ValidationReport(manifest=manifest, rows=len(rows))
    for _, r in rows[rows["status"] == Status.INVALID].iterrows():
        report.invalid.append((int(r["row"]), str(r["id"]), str(r["error_message"])))
    if not check_objects:
        return report
    checks = []
    for _, r in rows[rows["status"] != Status.INVALID].iterrows():
        for col in URI_COLUMNS:  # a composite row's composite and mask, a cutout row's foreground and background
            if is_uri(r.get(col)):
                checks.append((int(r["row"]), str(r["id"]), r[col]))

    def exists(uri: str) -> bool | str:
        """True, False (missing), or the problem the jobs would fail the row with: one object's error is its row's
        finding, never the end of the check."""
        try:
            fs, path = filesystem(uri, storage_options)
            if protocol_of(uri) != "file":
                return fs.exists(path)
            mode = os.stat(path).st_mode
        except FileNotFoundError:
            return False
        except RedirectRefused as exc:  # an HTTP(S) source that redirects: the jobs would fail the row
            return f"{ErrorKind.URI_NOT_ALLOWED}: {exc}"
        except Exception as exc:  # noqa: BLE001 - a store's answer about one object
            return f"{ErrorKind.STORAGE_ERROR}: {uri}: {type(exc).__name__}: {exc}"
        if not stat.S_ISREG(mode):  # a folder, a pipe or a device: nothing the jobs would read
            return f"{ErrorKind.STORAGE_ERROR}: {uri} is not a regular file"
        return True

    with ThreadPoolExecutor(max_workers=workers) as pool:
        found = list(pool.map(lambda c: exists(c[2]), checks))
    report.checked_objects = len(checks)
    report.missing = [c for c, ok in zip(checks, found) if ok is False]
    report.invalid += [(row, rid, why) for (row, rid, _), why in zip(checks, found) if isinstance(why, str)]
    return report


VALIDATION_FILE = "validation.parquet"
VALIDATION_COLUMNS = ("row", "id", "status", "error_type", "error_message", "width", "height", "notes")


@dataclass
class DeepReport:
    manifest: str
    rows: pd.DataFrame  # VALIDATION_COLUMNS, one per manifest row

    @property
    def failing(self) -> pd.DataFrame:
        return self.rows[self.rows["status"] != Status.OK]

    @property
    def ok(self) -> bool:
        return self.failing.empty

    def text(self) -> str:
        bad = self.failing
        lines = [f"manifest {self.manifest}: {len(self.rows)} rows decoded as harmonize would: "
                 f"{len(self.rows) - len(bad)} ok, {len(bad)} would fail"]
        for r in bad.head(SHOW).itertuples():
            lines.append(f"  row {r.row} (id {r.id!r}): {r.status} {r.error_type}: {r.error_message}")
        if len(bad) > SHOW:
            lines.append(f"  ... and {len(bad) - SHOW} more")
        if len(bad):
            counts = bad["error_type"].value_counts()
            lines.append("by error type: " + ", ".join(f"{k} {v}" for k, v in counts.items()))
        lines.append("OK" if self.ok else "PROBLEMS FOUND")
        return "\n".join(lines)


def run_deep(o, echo=print) -> DeepReport:
    """`harmony validate --deep` (`o`: ValidateOptions)."""
    import ray.data

    from pipelines.config import FetchSettings
    from pipelines.core.adapter import apply_stages, ensure_ray
    from pipelines.core.console import progress_of
    from pipelines.io.tables import write_table_atomic
    from pipelines.jobs.validate.stage import CheckStage

    df = read_manifest(o.manifest, o.storage_options)
    rows = prepare_rows(df, o.manifest, "unused://", "png", 0, allow=o.allow_uri)
    todo = rows[rows["status"] == Status.PENDING]
    echo(f"harmony validate --deep: {len(rows)} rows ({len(todo)} to decode, {len(rows) - len(todo)} invalid)")
    parts = [rows[rows["status"] != Status.PENDING]]
    if len(todo):
        ensure_ray(o.ray_address)
        columns = ["row", "id", "status", "error_type", "error_message", *INPUT_COLUMNS]
        stage = CheckStage(FetchSettings(storage_options=o.storage_options, retries=o.retries, max_pixels=o.max_pixels),
                           pool=o.pool)
        n = max(o.pool.batch_size, -(-len(todo) // 200))  # blocks of whole batches, at most 200 of them
        source = ray.data.from_pandas([todo[columns].iloc[i : i + n] for i in range(0, len(todo), n)])
        ds = apply_stages(source, [stage], inputs=columns, keep=VALIDATION_COLUMNS)
        progress = progress_of(echo, "harmony validate", len(todo))
        try:
            for block in ds.iter_batches(batch_format="pandas", batch_size=None):
                parts.append(block)
                if progress is not None:
                    progress.advance(len(block), block["status"].value_counts().to_dict())
        finally:
            if progress is not None:
                progress.close()
    table = pd.concat([p.reindex(columns=VALIDATION_COLUMNS) for p in parts if len(p)], ignore_index=True)
    table = table.sort_values("row").reset_index(drop=True)
    table["status"] = table["status"].replace({Status.PENDING: Status.OK})
    report = DeepReport(o.manifest, table)
    if o.output:
        import pyarrow as pa

        uri = join(o.output, VALIDATION_FILE)
        write_table_atomic(pa.Table.from_pandas(table.astype({"width": "Int64", "height": "Int64"}), preserve_index=False),
                           uri, o.storage_options)
        echo(f"validation table: {uri}")
    return report
