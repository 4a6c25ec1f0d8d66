"""Label files: both schemes, the 2021 -> 2018 mapping, multi-hot arrays, submissions, and every error."""

from __future__ import annotations

import logging
import re
from pathlib import Path

import numpy as np
import pytest

from hpa_cells.classes import CLASS_2021_OF_2018, CLASS_NAMES, NUM_CLASSES, class_name, map_2021_to_2018
from hpa_cells.labels import (
    LabelFileError,
    detect_scheme,
    from_multi_hot,
    match_labels_to_images,
    read_labels,
    to_multi_hot,
    write_labels_2018,
    write_submission,
)


def _write(tmp_path: Path, text: str, name: str = "labels.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def test_class_table() -> None:
    assert NUM_CLASSES == 28
    assert CLASS_NAMES[0] == "Nucleoplasm"
    assert CLASS_NAMES[27] == "Rods & rings"
    assert class_name(23) == "Mitochondria"
    with pytest.raises(ValueError, match="unknown class id 28; expected 0-27"):
        class_name(28)


def test_2021_mapping_table() -> None:
    assert map_2021_to_2018(17) == (8, 9, 10, 20, 26)
    assert map_2021_to_2018(17, ambiguous="primary") == (26,)
    assert map_2021_to_2018(9) == (12, 13)
    assert map_2021_to_2018(9, ambiguous="primary") == (12,)
    assert map_2021_to_2018(18) == ()
    # every 2018 class maps back to its 2021 class, except the three without a counterpart
    assert [c for c, v in CLASS_2021_OF_2018.items() if v is None] == [15, 16, 27]
    for c18, c21 in CLASS_2021_OF_2018.items():
        if c21 is not None:
            assert c18 in map_2021_to_2018(c21)
    with pytest.raises(ValueError, match="unknown 2021 class id 19"):
        map_2021_to_2018(19)


def test_read_2018(tmp_path: Path) -> None:
    path = _write(tmp_path, "Id,Target\nimg-a,16 0\nimg_b,7 1 2 0\r\nc,5\n\n")
    labels = read_labels(path)
    assert labels == {"img-a": (0, 16), "img_b": (0, 1, 2, 7), "c": (5,)}
    assert list(labels) == ["img-a", "img_b", "c"]  # file order kept
    assert detect_scheme(path) == "2018"


def test_read_2021_mapped_to_2018(tmp_path: Path) -> None:
    path = _write(tmp_path, "ID,Label\na,8|5|0\nb,18\nc,17\nd,13|9\n")
    assert read_labels(path) == {"a": (0, 5, 11), "b": (), "c": (8, 9, 10, 20, 26), "d": (12, 13, 21, 22)}
    assert read_labels(path, ambiguous="primary")["c"] == (26,)
    assert detect_scheme(path) == "2021"


def test_bom_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "bom.csv"
    path.write_bytes("\ufeffId,Target\nx,3\n".encode())
    assert read_labels(path) == {"x": (3,)}


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "{p}: empty label file (expected a header 'Id,Target' or 'ID,Label')"),
        ("  \n\n", "{p}: empty label file (expected a header 'Id,Target' or 'ID,Label')"),
        (
            "Image,Labels\na,1\n",
            "{p}, line 1: unexpected header 'Image,Labels'; expected 'Id,Target' (2018 scheme) or 'ID,Label' (2021 scheme)",
        ),
        ("Id,Target\n", "{p}: no label rows after the header"),
        (
            "Id,Target\na,1\nb,2,3\n",
            "{p}, line 3: malformed row 'b,2,3': expected 2 comma-separated fields (Id,Target), got 3",
        ),
        ("Id,Target\na\n", "{p}, line 2: malformed row 'a': expected 2 comma-separated fields (Id,Target), got 1"),
        ("Id,Target\na,1\nb,28\n", "{p}, line 3: unknown class id 28 for image 'b'; valid ids are 0-27"),
        ("Id,Target\na,-1\n", "{p}, line 2: unknown class id -1 for image 'a'; valid ids are 0-27"),
        ("Id,Target\na,1 x\n", "{p}, line 2: label 'x' of image 'a' is not an integer class id"),
        ("Id,Target\na,1\nb,2\na,3\n", "{p}, line 4: duplicate image id 'a' (first seen on line 2)"),
        ("Id,Target\n,1\n", "{p}, line 2: empty image id"),
        ("ID,Label\na,19\n", "{p}, line 2: unknown class id 19 for image 'a'; valid ids are 0-18"),
        ("ID,Label\na,1||2\n", "{p}, line 2: empty label between '|' separators for image 'a'"),
        (
            "ID,Label\na,18|3\n",
            "{p}, line 2: image 'a' is labelled Negative (18) together with other classes [3]",
        ),
    ],
)
def test_label_file_errors_name_the_line(tmp_path: Path, text: str, message: str) -> None:
    path = _write(tmp_path, text)
    with pytest.raises(LabelFileError, match=f"^{re.escape(message.format(p=path))}$"):
        read_labels(path)


def test_missing_file_and_scheme_mismatch(tmp_path: Path) -> None:
    missing = tmp_path / "nope.csv"
    with pytest.raises(LabelFileError, match=re.escape(f"{missing}: label file not found")):
        read_labels(missing)
    path = _write(tmp_path, "ID,Label\na,1\n")
    with pytest.raises(
        LabelFileError,
        match=re.escape(f"{path}, line 1: header 'ID,Label' is the 2021 scheme, but the 2018 scheme was requested"),
    ):
        read_labels(path, scheme="2018")


def test_not_utf8(tmp_path: Path) -> None:
    path = tmp_path / "bin.csv"
    path.write_bytes(b"Id,Target\n\xff\xfe,1\n")
    with pytest.raises(LabelFileError, match=re.escape(f"{path}: not a UTF-8 text file")):
        read_labels(path)


def test_multi_hot_round_trip() -> None:
    sets = [(0, 16), (), (27,), (1, 2, 3)]
    matrix = to_multi_hot(sets)
    assert matrix.shape == (4, 28) and matrix.dtype == np.uint8
    assert matrix.sum() == 6 and matrix[0, 16] == 1 and matrix[2, 27] == 1 and matrix[1].sum() == 0
    assert from_multi_hot(matrix) == sets
    assert from_multi_hot(matrix.astype(bool)) == sets
    with pytest.raises(ValueError, match="label set 0: class id 28 outside 0-27"):
        to_multi_hot([(28,)])
    with pytest.raises(ValueError, match="threshold probabilities first"):
        from_multi_hot(np.full((1, 28), 0.7))
    with pytest.raises(ValueError, match=re.escape("expected an N,C multi-hot matrix, got shape (28,)")):
        from_multi_hot(np.zeros(28))


def test_write_and_read_back(tmp_path: Path) -> None:
    labels = {"a": [16, 0, 0], "b": [5]}
    path = write_labels_2018(tmp_path / "sub" / "train.csv", labels)
    assert path.read_text() == "Id,Target\na,0 16\nb,5\n"
    assert read_labels(path) == {"a": (0, 16), "b": (5,)}
    assert not list(path.parent.glob("*.tmp"))
    assert sorted(p.name for p in path.parent.iterdir()) == ["train.csv"]


def test_write_submission_format(tmp_path: Path) -> None:
    path = write_submission(tmp_path / "submission.csv", {"x": (2, 0), "y": ()})
    assert path.read_text() == "Id,Predicted\nx,0 2\ny,\n"
    with pytest.raises(ValueError, match=re.escape("image 'z': class ids [30] outside 0-27")):
        write_submission(tmp_path / "bad.csv", {"z": (30,)})
    assert not (tmp_path / "bad.csv").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["submission.csv"]  # no partial file left behind


def test_match_labels_to_images_reports_both_sides(caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING):
        match = match_labels_to_images({"a": (), "b": (1,), "c": (2,)}, ["b", "c", "d"])
    assert match.matched == ("b", "c")
    assert match.labels_without_images == ("a",)
    assert match.images_without_labels == ("d",)
    assert match.summary() == "2 images with labels, 1 labelled ids without images, 1 images without labels"
    assert "1 labelled ids have no images, e.g. a" in caplog.text
    assert "1 images have no labels, e.g. d" in caplog.text


@pytest.mark.real
def test_real_label_files(real_data: Path) -> None:
    labels_2018 = read_labels(real_data / "labels" / "train_2018.csv")
    assert len(labels_2018) == 31072
    counts = to_multi_hot(labels_2018.values()).sum(axis=0)
    assert counts[0] == 12885 and counts[27] == 11 and counts[15] == 21
    labels_2021 = read_labels(real_data / "labels" / "train_2021.csv")
    assert len(labels_2021) == 21806
    assert read_labels(real_data / "hpa2018_sample" / "labels.csv") == {"837e738c-bba8-11e8-b2ba-ac1f6b6435d0": (5,)}
    subset = read_labels(real_data / "hpa2021_subset" / "labels.csv")
    assert subset["a34d8680-bb99-11e8-b2b9-ac1f6b6435d0"] == ()  # 2021 Negative
    assert subset["a7faf0b4-bb99-11e8-b2b9-ac1f6b6435d0"] == (8, 9, 10, 20, 26)  # 2021 Vesicles
