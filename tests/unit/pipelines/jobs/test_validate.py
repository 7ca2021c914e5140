"""pipelines/jobs/validate/job.py and `harmony validate`: table checks, object existence, report and exit codes."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from pipelines.cli import main
from pipelines.jobs.validate.job import SHOW, ValidationReport, run_validate
from tests.conftest import png_bytes


@pytest.fixture
def data(tmp_path):
    """Small real PNG files: composites, masks and ground truth for ids a and b."""
    img = np.full((8, 8, 3), 120, np.uint8)
    mask = np.zeros((8, 8), np.uint8)
    mask[2:6, 2:6] = 255
    for sub in ("comp", "masks", "real"):
        (tmp_path / sub).mkdir()
    for i in ("a", "b"):
        (tmp_path / "comp" / f"{i}.png").write_bytes(png_bytes(img))
        (tmp_path / "masks" / f"{i}.png").write_bytes(png_bytes(mask))
        (tmp_path / "real" / f"{i}.png").write_bytes(png_bytes(img))
    return tmp_path


def good_rows():
    return [
        {"id": "a", "composite": "comp/a.png", "mask": "masks/a.png", "real": "real/a.png"},
        {"id": "b", "composite": "comp/b.png", "mask": "masks/b.png", "real": None},
    ]


def write_manifest(path, rows) -> str:
    pd.DataFrame(rows).to_json(path, orient="records", lines=True)
    return str(path)


@pytest.fixture
def bad_manifest(data):
    rows = good_rows() + [
        {"id": "c", "composite": "comp/missing.png", "mask": "masks/a.png", "real": None},
        {"id": "../evil", "composite": "comp/a.png", "mask": "masks/a.png", "real": None},
    ]
    return write_manifest(data / "bad.jsonl", rows)


def test_report_counts_missing_and_invalid(bad_manifest, data):
    report = run_validate(bad_manifest)
    assert report.rows == 4
    assert report.ok is False
    # rows a (3 objects), b (2: no real), c (2); the invalid row is not checked
    assert report.checked_objects == 7
    assert report.missing == [(2, "c", str(data / "comp" / "missing.png"))]
    assert len(report.invalid) == 1
    row, rid, why = report.invalid[0]
    assert (row, rid) == (3, "../evil")
    assert "id" in why
    text = report.text()
    assert "4 rows, 1 invalid, 1 missing objects (7 objects checked)" in text
    assert str(data / "comp" / "missing.png") in text
    assert "invalid row 3 (id '../evil')" in text
    assert text.endswith("PROBLEMS FOUND")


def test_check_objects_false_skips_existence_checks(bad_manifest):
    report = run_validate(bad_manifest, check_objects=False)
    assert report.checked_objects == 0
    assert report.missing == []
    assert len(report.invalid) == 1
    assert report.ok is False  # the invalid row still counts


def test_check_objects_false_ok_for_a_valid_table_of_missing_files(tmp_path):
    m = write_manifest(tmp_path / "m.jsonl", [{"id": "x", "composite": "nope.png", "mask": "nope2.png"}])
    assert run_validate(m, check_objects=False).ok is True
    assert run_validate(m).ok is False


def test_all_good_manifest_is_ok(data):
    m = write_manifest(data / "good.jsonl", good_rows())
    report = run_validate(m)
    assert report.ok is True
    assert report.invalid == [] and report.missing == []
    assert report.checked_objects == 5
    text = report.text()
    assert text.endswith("OK")
    assert "2 rows, 0 invalid, 0 missing objects" in text


def test_duplicate_id_is_reported_as_invalid(data):
    m = write_manifest(data / "dup.jsonl", good_rows() + [good_rows()[0]])
    report = run_validate(m)
    assert [(r, i) for r, i, _ in report.invalid] == [(2, "a")]
    assert "appears earlier" in report.invalid[0][2]


def test_long_lists_are_truncated():
    report = ValidationReport(manifest="m", rows=50, invalid=[(i, f"id{i}", "bad") for i in range(SHOW + 5)])
    text = report.text()
    assert text.count("invalid row") == SHOW
    assert "... and 5 more" in text


# --- CLI --------------------------------------------------------------------------------------


def test_cli_validate_ok_returns_0(data, capsys):
    m = write_manifest(data / "good.jsonl", good_rows())
    assert main(["validate", "--manifest", m]) == 0
    out = capsys.readouterr().out
    assert out.strip().endswith("OK")
    assert "5 objects checked" in out


def test_cli_validate_problems_return_1(bad_manifest, data, capsys):
    assert main(["validate", "--manifest", bad_manifest]) == 1
    out = capsys.readouterr().out
    assert str(data / "comp" / "missing.png") in out
    assert "'../evil'" in out
    assert "PROBLEMS FOUND" in out


def test_cli_validate_no_check_objects(tmp_path, capsys):
    m = write_manifest(tmp_path / "m.jsonl", [{"id": "x", "composite": "nope.png", "mask": "nope2.png"}])
    assert main(["validate", "--manifest", m, "--no-check-objects"]) == 0
    assert main(["validate", "--manifest", m]) == 1
    assert "nope.png" in capsys.readouterr().out


def test_cli_validate_missing_manifest_returns_2(tmp_path, capsys):
    m = str(tmp_path / "none.csv")
    assert main(["validate", "--manifest", m]) == 2
    err = capsys.readouterr().err
    assert "harmony validate: error:" in err and "does not exist" in err


def test_cli_validate_missing_column_returns_2(tmp_path, capsys):
    m = write_manifest(tmp_path / "m.jsonl", [{"id": "x", "composite": "c.png"}])
    assert main(["validate", "--manifest", m]) == 2
    assert "'mask'" in capsys.readouterr().err
