"""pipelines/io/tables.py: reading a journal that a killed run left half-written."""

from __future__ import annotations

import pandas as pd
import pyarrow as pa
import pytest

from pipelines.io.tables import read_parquet_tree


def test_a_truncated_journal_file_is_skipped_only_when_asked(tmp_path):
    pd.DataFrame({"row": [0, 1]}).to_parquet(tmp_path / "a.parquet")
    (tmp_path / "b.parquet").write_bytes(b"")  # what a run killed during Ray Data's write leaves
    good = pd.DataFrame({"row": [2]})
    good.to_parquet(tmp_path / "c.parquet")
    assert read_parquet_tree(str(tmp_path), {}, skip_truncated=True)["row"].tolist() == [0, 1, 2]
    with pytest.raises(pa.ArrowInvalid):
        read_parquet_tree(str(tmp_path), {})
