"""`harmony validate`: check a manifest and that every object it names exists. Writes nothing."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field

from harmony_ops.remote import RedirectRefused
from pipelines.io.manifest import prepare_rows, read_manifest
from schemas.manifest import URI_COLUMNS
from schemas.vocabulary import ErrorKind, Status
from pipelines.io.storage import filesystem, is_uri

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
        fs, path = filesystem(uri, storage_options)
        try:
            return fs.exists(path)
        except RedirectRefused as exc:  # an HTTP(S) source that redirects: the jobs would fail the row
            return str(exc)

    with ThreadPoolExecutor(max_workers=workers) as pool:
        found = list(pool.map(lambda c: exists(c[2]), checks))
    report.checked_objects = len(checks)
    report.missing = [c for c, ok in zip(checks, found) if ok is False]
    report.invalid += [(row, rid, f"{ErrorKind.URI_NOT_ALLOWED}: {why}") for (row, rid, _), why in zip(checks, found)
                       if isinstance(why, str)]
    return report
