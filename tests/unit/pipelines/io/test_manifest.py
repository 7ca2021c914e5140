"""pipelines/io/manifest.py and schemas/manifest.py: reading, row validation, URI resolution, seeds."""

from __future__ import annotations

import json

import pandas as pd
import pytest

from pipelines.io.manifest import (
    manifest_dir,
    manifest_format,
    prepare_rows,
    read_manifest,
    resolve_uri,
    row_seed,
)
from pipelines.errors import ManifestError
from schemas.manifest import row_problems

ROWS = [
    {"id": "a", "composite": "comp/a.png", "mask": "masks/a.png", "real": "real/a.jpg", "subset": "HCOCO"},
    {"id": "b-2", "composite": "comp/b.png", "mask": "masks/b.png", "real": "real/b.jpg", "subset": "HFlickr"},
    {"id": "c_3.x", "composite": "/abs/c.png", "mask": "s3://bkt/m/c.png", "real": "real/c.jpg", "subset": "HCOCO"},
]
COLUMNS = ["id", "composite", "mask", "real", "subset"]


def write(df: pd.DataFrame, path):
    s = str(path)
    if s.endswith((".parquet", ".pq")):
        df.to_parquet(path, index=False)
    elif s.endswith(".csv"):
        df.to_csv(path, index=False)
    else:
        df.to_json(path, orient="records", lines=True)
    return s


def records(df: pd.DataFrame) -> list[dict]:
    return [{c: r[c] for c in COLUMNS} for r in df.to_dict("records")]


def frame(ids, **cols):
    n = len(ids)
    data = {"id": pd.Series(ids, dtype=object)}
    data["composite"] = cols.pop("composite", [f"c{i}.png" for i in range(n)])
    data["mask"] = cols.pop("mask", [f"m{i}.png" for i in range(n)])
    data.update(cols)
    return pd.DataFrame(data)


# --- reading ----------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["m.parquet", "m.pq", "m.csv", "m.jsonl", "m.ndjson", "m.json"])
def test_every_format_reads_the_same_rows(tmp_path, name):
    uri = write(pd.DataFrame(ROWS, columns=COLUMNS), tmp_path / name)
    df = read_manifest(uri)
    assert list(df.columns) == COLUMNS
    assert records(df) == ROWS
    assert list(df.index) == [0, 1, 2]


def test_extra_columns_are_read(tmp_path):
    df = pd.DataFrame([{**r, "note": f"n{i}"} for i, r in enumerate(ROWS)])
    for name in ("m.parquet", "m.csv", "m.jsonl"):
        got = read_manifest(write(df, tmp_path / name))
        assert list(got["note"]) == ["n0", "n1", "n2"]


@pytest.mark.parametrize("name", ["m.txt", "m.xlsx", "manifest", "m.csv.gz"])
def test_unknown_extension(tmp_path, name):
    p = tmp_path / name
    p.write_text("id,composite,mask\n")
    with pytest.raises(ManifestError, match="unknown format"):
        read_manifest(str(p))


def test_manifest_format_is_case_insensitive():
    assert manifest_format("s3://b/M.PARQUET") == "parquet"
    assert manifest_format("x.CSV") == "csv"
    assert manifest_format("x.ndjson") == "jsonl"


@pytest.mark.parametrize("name", ["none.parquet", "none.csv", "none.jsonl"])
def test_missing_file(tmp_path, name):
    uri = str(tmp_path / name)
    with pytest.raises(ManifestError) as ei:
        read_manifest(uri)
    assert "does not exist" in str(ei.value)
    assert uri in str(ei.value)


def test_unreadable_content_is_a_manifest_error(tmp_path):
    p = tmp_path / "m.parquet"
    p.write_bytes(b"this is not parquet")
    with pytest.raises(ManifestError, match="cannot be read"):
        read_manifest(str(p))


def test_manifest_error_is_a_value_error():
    assert issubclass(ManifestError, ValueError)


@pytest.mark.parametrize("name", ["m.csv", "m.parquet", "m.jsonl"])
def test_missing_required_column_is_named(tmp_path, name):
    df = pd.DataFrame([{"id": "a", "composite": "c.png"}])
    uri = write(df, tmp_path / name)
    with pytest.raises(ValueError) as ei:
        prepare_rows(read_manifest(uri), uri, str(tmp_path / "out"), "png", 0)
    assert "'mask'" in str(ei.value)
    assert "required" in str(ei.value)


def test_empty_optional_csv_cells_are_null(tmp_path):
    p = tmp_path / "m.csv"
    p.write_text("id,composite,mask,real,subset\na,c.png,m.png,,\nb,c2.png,m2.png,r.jpg,HCOCO\n")
    df = read_manifest(str(p))
    # "not given", not an empty string (pandas 3 stores the null of a str column as NaN)
    assert df.loc[0, "real"] is None or pd.isna(df.loc[0, "real"])
    assert df.loc[0, "subset"] is None or pd.isna(df.loc[0, "subset"])
    assert df.loc[1, "real"] == "r.jpg" and df.loc[1, "subset"] == "HCOCO"
    rows = prepare_rows(df, str(p), str(tmp_path / "out"), "png", 0)
    assert list(rows["status"]) == ["pending", "pending"]
    assert not isinstance(rows.loc[0, "real"], str)  # a null real is not resolved into a path


def test_empty_required_csv_cell_makes_the_row_invalid(tmp_path):
    p = tmp_path / "m.csv"
    p.write_text("id,composite,mask\na,,m.png\nb,c.png,m.png\n")
    rows = prepare_rows(read_manifest(str(p)), str(p), str(tmp_path / "out"), "png", 0)
    assert list(rows["status"]) == ["invalid", "pending"]
    assert "composite" in rows.loc[0, "error_message"]


def test_csv_ids_stay_strings(tmp_path):
    # leading zeros survive: CSV cells are read as text
    p = tmp_path / "m.csv"
    p.write_text("id,composite,mask\n007,c.png,m.png\n")
    rows = prepare_rows(read_manifest(str(p)), str(p), "/out", "png", 0)
    assert rows.loc[0, "id"] == "007"
    assert rows.loc[0, "output"] == "/out/images/007.png"


# --- URI resolution ---------------------------------------------------------------------------


def test_relative_uris_resolve_against_the_local_manifest_folder(tmp_path):
    (tmp_path / "sub").mkdir()
    uri = write(pd.DataFrame(ROWS, columns=COLUMNS), tmp_path / "sub" / "m.csv")
    rows = prepare_rows(read_manifest(uri), uri, str(tmp_path / "out"), "png", 0)
    base = tmp_path / "sub"
    assert rows.loc[0, "composite"] == str(base / "comp" / "a.png")
    assert rows.loc[0, "mask"] == str(base / "masks" / "a.png")
    assert rows.loc[0, "real"] == str(base / "real" / "a.jpg")
    # absolute paths and URIs are kept as they are
    assert rows.loc[2, "composite"] == "/abs/c.png"
    assert rows.loc[2, "mask"] == "s3://bkt/m/c.png"


def test_relative_uris_resolve_against_an_s3_manifest():
    df = frame(["x"], composite=["comp/x.png"], mask=["masks/x.png"], real=["https://host/r/x.jpg"])
    # (an HTTP(S) source needs an allowed prefix: pipelines/io/access.py)
    rows = prepare_rows(df, "s3://bucket/dir/manifest.csv", "s3://bucket/out", "png", 0, allow=["https://host/r"])
    assert rows.loc[0, "status"] == "pending"
    assert rows.loc[0, "composite"] == "s3://bucket/dir/comp/x.png"
    assert rows.loc[0, "mask"] == "s3://bucket/dir/masks/x.png"
    assert rows.loc[0, "real"] == "https://host/r/x.jpg"
    assert rows.loc[0, "output"] == "s3://bucket/out/images/x.png"


def test_resolve_uri_and_manifest_dir():
    assert manifest_dir("s3://b/d/m.csv") == "s3://b/d"
    assert manifest_dir("m.csv") == "."
    assert resolve_uri("s3://b/d", "x/y.png") == "s3://b/d/x/y.png"
    assert resolve_uri("s3://b/d", "gs://o/y.png") == "gs://o/y.png"
    assert resolve_uri("/data", "/abs/y.png") == "/abs/y.png"
    assert resolve_uri("/data", "") == ""
    assert resolve_uri("/data", None) is None


def test_missing_optional_columns_are_added():
    rows = prepare_rows(frame(["a"]), "/d/m.csv", "/out", "png", 0)
    assert "real" in rows.columns and "subset" in rows.columns
    assert rows.loc[0, "real"] is None and rows.loc[0, "subset"] is None
    assert list(rows["row"]) == [0]


# --- invalid rows -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "bad_id,why",
    [
        ("../etc", "no_dot_dot"),
        ("a..b", "no_dot_dot"),
        ("a/b", "str_matches"),
        ("", "str_length"),
        ("x" * 201, "str_length"),
        ("sp ace", "str_matches"),
    ],
)
def test_unsafe_ids_are_invalid_rows(bad_id, why):
    rows = prepare_rows(frame(["good", bad_id]), "/d/m.csv", "/out", "png", 0)
    assert rows.loc[0, "status"] == "pending"
    assert rows.loc[1, "status"] == "invalid"
    assert rows.loc[1, "error_type"] == "invalid_row"
    assert "id" in rows.loc[1, "error_message"] and why in rows.loc[1, "error_message"]
    assert rows.loc[1, "output"] is None
    assert pd.isna(rows.loc[1, "seed"])


def test_id_of_200_characters_is_fine():
    rows = prepare_rows(frame(["x" * 200]), "/d/m.csv", "/out", "png", 0)
    assert rows.loc[0, "status"] == "pending"


def test_non_string_id_among_strings_is_an_invalid_row():
    rows = prepare_rows(frame(["a", 5]), "/d/m.csv", "/out", "png", 0)
    assert list(rows["status"]) == ["pending", "invalid"]
    assert rows.loc[1, "error_type"] == "invalid_row"
    assert "id: must be a string" in rows.loc[1, "error_message"]
    assert rows.loc[1, "id"] == "5"  # kept Arrow-friendly as a string


def test_non_string_required_cell_is_an_invalid_row():
    rows = prepare_rows(frame(["a", "b"], mask=["m.png", None]), "/d/m.csv", "/out", "png", 0)
    assert list(rows["status"]) == ["pending", "invalid"]
    assert "mask: must be a string, not null (required)" in rows.loc[1, "error_message"]


def test_non_string_optional_cell_is_an_invalid_row():
    rows = prepare_rows(frame(["a", "b"], real=["r.jpg", 3]), "/d/m.csv", "/out", "png", 0)
    assert list(rows["status"]) == ["pending", "invalid"]
    assert "real: must be a string, not int" in rows.loc[1, "error_message"]


def test_all_integer_ids_are_invalid_rows_not_a_crash(tmp_path):
    p = tmp_path / "m.jsonl"
    p.write_text("".join(json.dumps({"id": i, "composite": "c.png", "mask": "m.png"}) + "\n" for i in (1, 2)))
    rows = prepare_rows(read_manifest(str(p)), str(p), "/out", "png", 0)
    assert list(rows["status"]) == ["invalid", "invalid"]
    assert all("id: must be a string" in m for m in rows["error_message"])


def test_several_problems_of_one_row_are_joined():
    rows = prepare_rows(frame(["a/..b"], composite=[""]), "/d/m.csv", "/out", "png", 0)
    msg = rows.loc[0, "error_message"]
    assert "id: fails" in msg and "composite: fails" in msg and "; " in msg


def test_row_problems_is_empty_for_good_rows():
    reasons = row_problems(frame(["a", "b"]))
    assert list(reasons) == ["", ""]


def test_duplicate_ids_first_kept_later_invalid():
    rows = prepare_rows(frame(["a", "b", "a", "a"]), "/d/m.csv", "/out", "png", 0)
    assert list(rows["status"]) == ["pending", "pending", "invalid", "invalid"]
    assert list(rows["error_type"]) == [None, None, "duplicate_id", "duplicate_id"]
    assert rows.loc[2, "error_message"] == "id 'a' appears earlier in the manifest"
    assert rows.loc[0, "output"] == "/out/images/a.png"
    assert rows.loc[2, "output"] is None and rows.loc[3, "output"] is None


def test_an_invalid_first_occurrence_does_not_make_a_later_valid_row_a_duplicate():
    rows = prepare_rows(frame(["a", "a"], composite=[None, "c.png"]), "/d/m.csv", "/out", "png", 0)
    assert list(rows["status"]) == ["invalid", "pending"]
    assert rows.loc[0, "error_type"] == "invalid_row"


def test_output_uris_only_for_pending_rows():
    rows = prepare_rows(frame(["a", "../b", "c"]), "/d/m.csv", "s3://bkt/out", "webp", 0)
    assert list(rows["output"]) == ["s3://bkt/out/images/a.webp", None, "s3://bkt/out/images/c.webp"]
    assert list(rows["row"]) == [0, 1, 2]


def test_pass_through_columns_are_kept():
    df = frame(["a", "b"], note=["x", "y"], weight=[1.5, 2.5])
    rows = prepare_rows(df, "/d/m.csv", "/out", "png", 0)
    assert list(rows["note"]) == ["x", "y"]
    assert list(rows["weight"]) == [1.5, 2.5]


def test_prepare_rows_does_not_modify_its_input():
    df = frame(["a"], composite=["rel/c.png"])
    before = df.copy()
    prepare_rows(df, "/d/m.csv", "/out", "png", 0)
    pd.testing.assert_frame_equal(df, before)


# --- seeds ------------------------------------------------------------------------------------


def test_row_seed_is_deterministic_and_depends_on_seed_and_id():
    assert row_seed(0, "a") == row_seed(0, "a")
    assert row_seed(0, "a") != row_seed(0, "b")
    assert row_seed(0, "a") != row_seed(1, "a")
    seeds = {row_seed(3, f"id{i}") for i in range(200)}
    assert len(seeds) == 200
    assert all(0 <= s < 2**31 for s in seeds)


def test_row_seeds_do_not_depend_on_position_or_neighbours():
    one = prepare_rows(frame(["a", "b", "c"]), "/d/m.csv", "/out", "png", 5)
    other = prepare_rows(frame(["c", "z", "a"]), "/d/m.csv", "/out", "png", 5)
    s1 = dict(zip(one["id"], one["seed"]))
    s2 = dict(zip(other["id"], other["seed"]))
    assert s1["a"] == s2["a"] == row_seed(5, "a")
    assert s1["c"] == s2["c"] == row_seed(5, "c")
    assert len(set(s1.values())) == 3
    changed = prepare_rows(frame(["a"]), "/d/m.csv", "/out", "png", 6)
    assert changed.loc[0, "seed"] != s1["a"]
