"""pipelines/io/iharmony4.py: name mapping, the three listing layouts, writing manifests that read back."""

from __future__ import annotations

from pathlib import Path

import pandas as pd
import pytest

from pipelines.io.iharmony4 import build_manifest, import_iharmony4, names_for, write_manifest
from pipelines.io.manifest import prepare_rows, read_manifest


def touch(p: Path) -> None:
    p.parent.mkdir(parents=True, exist_ok=True)
    p.write_bytes(b"\x00placeholder")


def make_subset(root: Path, subset: str, composites: list[str]) -> None:
    """composite_images/, masks/, real_images/ for the given composite names (tiny placeholder bytes)."""
    for name in composites:
        mask, real = names_for(name)
        touch(root / subset / "composite_images" / name)
        touch(root / subset / "masks" / mask)
        touch(root / subset / "real_images" / real)


@pytest.fixture
def ihd_root(tmp_path) -> Path:
    """iHarmony4 root with IHD_test.txt / IHD_train.txt listing Subset/composite_images/name.jpg."""
    root = tmp_path / "iHarmony4"
    make_subset(root, "HCOCO", ["c1_1_1.jpg", "c1_2_3.jpg"])
    make_subset(root, "HAdobe5k", ["a0001_1_1.jpg"])
    (root / "IHD_test.txt").write_text(
        "HCOCO/composite_images/c1_1_1.jpg\nHAdobe5k/composite_images/a0001_1_1.jpg\n\n"
    )
    (root / "IHD_train.txt").write_text("HCOCO/composite_images/c1_2_3.jpg\n")
    return root


# --- names ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "composite,mask,real",
    [
        ("c1_1_1.jpg", "c1_1.png", "c1.jpg"),
        ("a0001_1_1.jpg", "a0001_1.png", "a0001.jpg"),
        ("c100010_1330413_2.jpg", "c100010_1330413.png", "c100010.jpg"),
        ("HCOCO/composite_images/c1_2_3.jpg", "c1_2.png", "c1.jpg"),
        ("d90000001-10_1_5.jpg", "d90000001-10_1.png", "d90000001-10.jpg"),
    ],
)
def test_names_for(composite, mask, real):
    assert names_for(composite) == (mask, real)


@pytest.mark.parametrize("bad", ["c1.jpg", "c1_1.jpg", "noext", "HCOCO/composite_images/x_1.jpg"])
def test_names_for_rejects_other_names(bad):
    with pytest.raises(ValueError, match="iHarmony4 naming"):
        names_for(bad)


def test_names_for_keeps_underscores_in_the_image_name():
    assert names_for("a_b_1_2.jpg")[0] == "a_b_1.png"


# --- layouts ----------------------------------------------------------------------------------


def test_build_manifest_from_ihd_listing(ihd_root):
    df = build_manifest(str(ihd_root), "test")
    assert list(df.columns) == ["id", "composite", "mask", "real", "subset"]
    assert list(df["id"]) == ["c1_1_1", "a0001_1_1"]
    assert list(df["subset"]) == ["HCOCO", "HAdobe5k"]
    r = df.iloc[0]
    assert r["composite"] == str(ihd_root / "HCOCO" / "composite_images" / "c1_1_1.jpg")
    assert r["mask"] == str(ihd_root / "HCOCO" / "masks" / "c1_1.png")
    assert r["real"] == str(ihd_root / "HCOCO" / "real_images" / "c1.jpg")
    r = df.iloc[1]
    assert r["mask"] == str(ihd_root / "HAdobe5k" / "masks" / "a0001_1.png")
    assert r["real"] == str(ihd_root / "HAdobe5k" / "real_images" / "a0001.jpg")
    for col in ("composite", "mask", "real"):
        assert all(Path(p).is_file() for p in df[col])


def test_split_selects_the_listing(ihd_root):
    df = build_manifest(str(ihd_root), "train")
    assert list(df["id"]) == ["c1_2_3"]
    assert df.iloc[0]["mask"] == str(ihd_root / "HCOCO" / "masks" / "c1_2.png")


def test_build_manifest_from_per_subset_listings(tmp_path):
    root = tmp_path / "data"
    make_subset(root, "HCOCO", ["c1_1_1.jpg", "c2_1_1.jpg"])
    make_subset(root, "HFlickr", ["f9_3_2.jpg"])
    (root / "HCOCO" / "HCOCO_test.txt").write_text("c1_1_1.jpg\nc2_1_1.jpg\n")
    # a listing line may also carry the composite_images/ folder
    (root / "HFlickr" / "HFlickr_test.txt").write_text("composite_images/f9_3_2.jpg\n")
    df = build_manifest(str(root), "test")
    assert list(df["id"]) == ["c1_1_1", "c2_1_1", "f9_3_2"]
    assert list(df["subset"]) == ["HCOCO", "HCOCO", "HFlickr"]
    f = df.iloc[2]
    assert f["composite"] == str(root / "HFlickr" / "composite_images" / "f9_3_2.jpg")
    assert f["mask"] == str(root / "HFlickr" / "masks" / "f9_3.png")
    assert f["real"] == str(root / "HFlickr" / "real_images" / "f9.jpg")
    for col in ("composite", "mask", "real"):
        assert all(Path(p).is_file() for p in df[col])


def test_root_listing_wins_over_per_subset_listings(ihd_root):
    (ihd_root / "HCOCO" / "HCOCO_test.txt").write_text("c1_2_3.jpg\n")
    assert list(build_manifest(str(ihd_root), "test")["id"]) == ["c1_1_1", "a0001_1_1"]


def test_single_subset_folder_paths_and_subset(tmp_path):
    make_subset(tmp_path, "HCOCO", ["c1_1_1.jpg"])
    sub = tmp_path / "HCOCO"
    (sub / "HCOCO_test.txt").write_text("c1_1_1.jpg\n")
    df = build_manifest(str(sub), "test")
    assert len(df) == 1
    r = df.iloc[0]
    assert r["subset"] == "HCOCO"
    assert r["composite"] == str(sub / "composite_images" / "c1_1_1.jpg")
    assert r["mask"] == str(sub / "masks" / "c1_1.png")
    assert r["real"] == str(sub / "real_images" / "c1.jpg")


def test_single_subset_folder_ids_are_the_composite_stem(tmp_path):
    make_subset(tmp_path, "HCOCO", ["c1_1_1.jpg"])
    sub = tmp_path / "HCOCO"
    (sub / "HCOCO_test.txt").write_text("c1_1_1.jpg\n")
    df = build_manifest(str(sub), "test")
    assert list(df["id"]) == ["c1_1_1"]
    rows = prepare_rows(df, str(tmp_path / "m.csv"), str(tmp_path / "out"), "png", 0)
    assert list(rows["status"]) == ["pending"]


def test_missing_listing_raises_file_not_found(tmp_path):
    make_subset(tmp_path, "HCOCO", ["c1_1_1.jpg"])
    with pytest.raises(FileNotFoundError) as ei:
        build_manifest(str(tmp_path), "test")
    assert "IHD_test.txt" in str(ei.value)
    assert str(tmp_path) in str(ei.value)


def test_other_split_listing_is_not_used(ihd_root):
    (ihd_root / "IHD_test.txt").unlink()
    with pytest.raises(FileNotFoundError):
        build_manifest(str(ihd_root), "test")  # IHD_train.txt alone does not serve the test split


def test_bad_names_in_a_listing_raise_value_error(tmp_path):
    make_subset(tmp_path, "HCOCO", ["c1_1_1.jpg"])
    (tmp_path / "IHD_test.txt").write_text("HCOCO/composite_images/broken.jpg\n")
    with pytest.raises(ValueError, match="broken"):
        build_manifest(str(tmp_path), "test")


# --- writing ----------------------------------------------------------------------------------


@pytest.mark.parametrize("ext", ["parquet", "csv", "jsonl"])
def test_import_writes_a_manifest_that_reads_back(ihd_root, tmp_path, ext):
    out = tmp_path / "out" / f"manifest.{ext}"
    n = import_iharmony4(str(ihd_root), "test", str(out))
    assert n == 2
    assert out.is_file()
    back = read_manifest(str(out))
    expected = build_manifest(str(ihd_root), "test")
    assert list(back.columns) == list(expected.columns)
    assert back.to_dict("records") == expected.to_dict("records")
    # The dataset lies outside the manifest's folder: its rows read from it once it is allowed.
    refused = prepare_rows(back, str(out), str(tmp_path / "res"), "png", 0)
    assert list(refused["error_type"]) == ["uri_not_allowed", "uri_not_allowed"]
    rows = prepare_rows(back, str(out), str(tmp_path / "res"), "png", 0, allow=[str(ihd_root)])
    assert list(rows["status"]) == ["pending", "pending"]
    # absolute paths from the importer are kept as they are
    assert list(rows["composite"]) == list(expected["composite"])
    assert not any(p.name.startswith("manifest.") and ".tmp-" in p.name for p in out.parent.iterdir())


def test_write_manifest_rejects_unknown_extension(tmp_path):
    with pytest.raises(ValueError, match=r"\.parquet, \.csv or \.jsonl"):
        write_manifest(pd.DataFrame({"id": ["a"]}), str(tmp_path / "m.txt"))
    assert not (tmp_path / "m.txt").exists()


def test_import_cli(ihd_root, tmp_path, capsys):
    from pipelines.cli import main

    out = tmp_path / "m.csv"
    assert main(["import-iharmony4", str(ihd_root), "--split", "train", "-o", str(out)]) == 0
    assert "wrote 1 rows" in capsys.readouterr().out
    assert list(read_manifest(str(out))["id"]) == ["c1_2_3"]


def test_import_cli_says_when_the_jobs_need_allow_uri(ihd_root, tmp_path, capsys):
    from pipelines.cli import main

    assert main(["import-iharmony4", str(ihd_root), "--split", "train", "-o", str(tmp_path / "m.csv")]) == 0
    assert "--allow-uri" not in capsys.readouterr().out  # the dataset lies under the manifest's folder
    assert main(["import-iharmony4", str(ihd_root), "--split", "train", "-o", str(tmp_path / "elsewhere" / "m.csv")]) == 0
    assert f"pass --allow-uri {ihd_root} to the jobs" in capsys.readouterr().out
