"""`harmony validate`: its options."""

from __future__ import annotations

from pydantic import Field

from pipelines.config import Location, StorageOptions


class ValidateOptions(StorageOptions):
    manifest: Location = Field(description="manifest URI (parquet, csv or jsonl)")
    check_objects: bool = Field(True, description="check that every object exists (--no-check-objects: only the table)")
    allow_uri: list[str] = Field(default_factory=list, description="let manifest rows read under this prefix besides "
                                 "the manifest's own folder or bucket (repeatable)")
