"""An output prefix is checked before anything is written there (issue 29, class 8)."""

from __future__ import annotations

import pytest

from pipelines.io.outputs import output_problem


def test_folders_new_or_existing_are_fine(tmp_path):
    assert output_problem(str(tmp_path)) is None
    assert output_problem(str(tmp_path / "new" / "deeper")) is None
    assert output_problem(f"FILE://{tmp_path}/x") is None


@pytest.mark.parametrize("value,says", [("", "empty"), ("   ", "empty"), ("http://127.0.0.1:9/out", "read-only"),
                                        ("HTTPS://example.invalid/out", "read-only")])
def test_empty_and_http_outputs_are_refused(value, says):
    assert says in output_problem(value)


def test_a_file_or_a_path_below_a_file_is_refused(tmp_path):
    (tmp_path / "f.txt").write_text("x")
    assert "is a file, not a folder" in output_problem(str(tmp_path / "f.txt"))
    assert "which is a file" in output_problem(str(tmp_path / "f.txt" / "out"))


def test_a_missing_bucket_is_refused_in_one_line(s3_bucket):
    bucket, opts = s3_bucket
    assert output_problem(f"{bucket}/out", opts) is None
    assert "does not exist" in output_problem("s3://no-such-bucket-here/out", opts)
