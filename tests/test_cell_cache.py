"""The HDF5 cell cache: schema, reading, writing, locking, resuming, and surviving SIGKILL at any moment."""

from __future__ import annotations

import logging
import multiprocessing
import os
import pickle
import queue
import runpy
import shutil
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import h5py
import numpy as np
import pandas as pd
import pytest

from hpa_cells.cache import (
    CacheProvenance,
    CellCache,
    CellCacheError,
    CellCacheInputError,
    CellCacheLockedError,
    CellCacheMismatchError,
    CellCacheSchemaError,
    CellCacheWriter,
    DuplicateImageError,
)
from hpa_cells.cache.appending import CacheAppender
from hpa_cells.cache.schema import MASK_CHUNK_PIXELS
from hpa_cells.classes import NUM_CLASSES
from hpa_cells.crops import CropConfig, extract_cell_crops

CROP = 16
PROVENANCE = CacheProvenance(
    segmenter="watershed", model_sha256="", parameters={"min_area": 20, "sigma": 1.5}
)
QC_NAMES = ["border", "no_nucleus"]


def _field(index: int, size: int = 48) -> dict[str, Any]:
    """add_image arguments for a deterministic synthetic field (seeded by its index)."""
    rng = np.random.default_rng(1000 + index)
    image_chw = rng.integers(0, 256, (4, size, size), dtype=np.uint8)
    cells_hw = np.zeros((size, size), dtype=np.int32)
    for cell_id in range(1, int(rng.integers(1, 5)) + 1):
        y, x = rng.integers(0, size - 8, 2)
        h, w = rng.integers(4, 20, 2)
        cells_hw[y : y + h, x : x + w] = cell_id * 2  # non-contiguous ids
    nuclei_hw = np.where(rng.random((size, size)) < 0.3, cells_hw, 0)
    qc = rng.integers(0, 4, int(cells_hw.max()) + 1).astype(np.uint16)
    crops = extract_cell_crops(image_chw, cells_hw, nuclei_hw, config=CropConfig(crop_size=CROP), qc_flags=qc)
    labels = (rng.random(NUM_CLASSES) < 0.1).astype(np.uint8) if index % 3 else None
    return {
        "crops": crops.crops,
        "masks": crops.masks,
        "cell_records": crops.table,
        "cells_hw": cells_hw,
        "nuclei_hw": nuclei_hw,
        "original_hw": (4 * size, 4 * size),
        "labels": labels,
        "image_chw": image_chw,
    }


def _writer(path: Path, **kwargs: Any) -> CellCacheWriter:
    return CellCacheWriter(path, CROP, PROVENANCE, QC_NAMES, **kwargs)


def _write(path: Path, indices: range | list[int], skipped: tuple[str, ...] = ()) -> None:
    with _writer(path) as writer:
        for index in indices:
            writer.add_image(f"img{index:03d}", **_field(index))
        for image_id in skipped:
            writer.add_skipped(image_id, "no cells")


def test_schema_attributes_and_dataset_layout(tmp_path: Path) -> None:
    path = tmp_path / "cells.h5"
    _write(path, range(3), skipped=("empty1",))
    with h5py.File(path, "r") as f:
        assert int(f.attrs["schema_version"]) == 2
        assert int(f.attrs["crop_size"]) == CROP
        assert f.attrs["channel_order"] == "red,green,blue,yellow"
        assert f.attrs["segmenter"] == "watershed" and f.attrs["model_sha256"] == ""
        assert f.attrs["parameters_json"] == '{"min_area": 20, "sigma": 1.5}'
        assert f.attrs["qc_flag_names"] == '{"border": 1, "no_nucleus": 2}'
        assert f.attrs["package_version"] == "0.1.0"
        assert f.attrs["created"].endswith("+00:00") and "modified" in f.attrs
        assert f["crops"].chunks == (1, 4, CROP, CROP) and f["crops"].compression == "gzip"
        assert f["masks"].chunks == (1, CROP, CROP) and f["masks"].dtype == np.uint8
        assert f["images/labels"].shape == (3, NUM_CLASSES) and f["images/labels"].dtype == np.uint8
        assert f["cells/bbox"].dtype == np.int32 and f["cells/centroid"].dtype == np.float32
        assert f["cells/qc_flags"].dtype == np.uint16
        assert f["image_masks/cells"].shape[0] == 3 * MASK_CHUNK_PIXELS  # one padded chunk per 48x48 image
        assert [s.decode() for s in f["skipped/image_id"][:]] == ["empty1"]


def test_reader_returns_what_was_written(tmp_path: Path) -> None:
    path = tmp_path / "cells.h5"
    fields = {index: _field(index) for index in range(4)}
    _write(path, range(4), skipped=("bad_file",))
    with CellCache(path) as cache:
        cache.verify()
        assert cache.image_ids == ["img000", "img001", "img002", "img003"]
        assert len(cache) == sum(len(f["crops"]) for f in fields.values())
        assert cache.num_images == 4
        for index, field in fields.items():
            crops, masks = cache.cells_of(f"img{index:03d}")
            np.testing.assert_array_equal(crops, field["crops"])
            np.testing.assert_array_equal(masks, field["masks"])
            by_index = cache.cells_of(index)[0]
            np.testing.assert_array_equal(by_index, field["crops"])
            cells_hw, nuclei_hw = cache.full_masks(f"img{index:03d}")
            assert cells_hw.dtype == np.uint16 and cells_hw.shape == (48, 48)
            np.testing.assert_array_equal(cells_hw, field["cells_hw"])
            np.testing.assert_array_equal(nuclei_hw, field["nuclei_hw"])
            image = cache.full_image(f"img{index:03d}")
            assert image.dtype == np.uint8 and image.flags.c_contiguous
            np.testing.assert_array_equal(image, field["image_chw"])
        table = cache.cell_table()
        expected = pd.concat(
            [f["cell_records"].assign(image_index=i, image_id=f"img{i:03d}") for i, f in fields.items()],
            ignore_index=True,
        )
        assert list(table.columns[:3]) == ["image_index", "image_id", "cell_id"]
        for column in (
            "image_index",
            "image_id",
            "cell_id",
            "bbox_y0",
            "bbox_x1",
            "area",
            "nucleus_area",
            "qc_flags",
        ):
            assert table[column].tolist() == expected[column].tolist(), column
        np.testing.assert_allclose(table["centroid_y"], expected["centroid_y"], rtol=1e-6)
        images = cache.image_table()
        counts = [len(f["crops"]) for f in fields.values()]
        assert images["count"].tolist() == counts
        assert images["offset"].tolist() == np.concatenate([[0], np.cumsum(counts)[:-1]]).tolist()
        assert images[["original_h", "working_w"]].to_numpy().tolist() == [[192, 48]] * 4
        assert images["has_labels"].tolist() == [False, True, True, False]
        assert cache.labels.shape == (4, NUM_CLASSES)
        np.testing.assert_array_equal(cache.labels[1], fields[1]["labels"])
        assert not cache.labels[0].any()
        assert images["label_ids"].iloc[1] == tuple(np.flatnonzero(fields[1]["labels"]).tolist())
        assert cache.skipped.to_dict("list") == {"image_id": ["bad_file"], "reason": ["no cells"]}
        provenance = cache.provenance
        assert provenance["parameters"] == {"min_area": 20, "sigma": 1.5}
        assert provenance["qc_flag_names"] == {"border": 1, "no_nucleus": 2}
        assert provenance["segmenter"] == "watershed" and provenance["schema_version"] == 2


def test_reading_a_subset_of_an_images_cells(tmp_path: Path) -> None:
    path = tmp_path / "cells.h5"
    fields = {index: _field(index) for index in range(3)}
    _write(path, range(3))
    big = max(fields, key=lambda i: len(fields[i]["crops"]))
    count = len(fields[big]["crops"])
    with CellCache(path) as cache:
        crops, masks = cache.cells_of(f"img{big:03d}", positions=np.array([0, count - 1]))
        np.testing.assert_array_equal(crops, fields[big]["crops"][[0, count - 1]])
        np.testing.assert_array_equal(masks, fields[big]["masks"][[0, count - 1]])
        assert cache.cells_of(big, positions=np.array([], dtype=np.int64))[0].shape == (0, 4, CROP, CROP)
        with pytest.raises(
            IndexError, match=f"cell positions \\[{count}\\] out of range for image {big} with {count} cells"
        ):
            cache.cells_of(big, positions=np.array([count]))
        with pytest.raises(ValueError, match="positions must be strictly increasing"):
            cache.cells_of(big, positions=np.array([1, 0]))


def test_unknown_keys_and_files_give_clear_errors(tmp_path: Path) -> None:
    path = tmp_path / "cells.h5"
    _write(path, range(1))
    with CellCache(path) as cache:
        with pytest.raises(KeyError, match=f"image 'nope' is not in cell cache {path}"):
            cache.cells_of("nope")
        with pytest.raises(IndexError, match=f"image index 5 is out of range for {path} with 1 images"):
            cache.full_masks(5)
    with pytest.raises(FileNotFoundError, match=f"cell cache {tmp_path / 'missing.h5'} does not exist"):
        CellCache(tmp_path / "missing.h5")
    not_hdf5 = tmp_path / "notes.h5"
    not_hdf5.write_text("not an HDF5 file")
    with pytest.raises(CellCacheError, match=f"cell cache {not_hdf5} cannot be opened as HDF5"):
        CellCache(not_hdf5)


@pytest.mark.parametrize(
    ("version", "message"),
    [
        (3, "has cell cache schema_version 3 but this hpa-cells reads schema_versions 1 to 2 (a newer file format"),
        (
            0,
            "has cell cache schema_version 0 but this hpa-cells reads schema_versions 1 to 2 (an older file format",
        ),
    ],
)
def test_other_schema_version_is_refused(tmp_path: Path, version: int, message: str) -> None:
    path = tmp_path / "cells.h5"
    _write(path, range(1))
    with h5py.File(path, "r+") as f:
        f.attrs["schema_version"] = version
    with pytest.raises(CellCacheSchemaError) as error:
        CellCache(path)
    assert str(error.value).startswith(f"{path} {message}")
    with pytest.raises(CellCacheSchemaError, match="schema_version"):
        _writer(path)


def _downgrade_to_version_1(path: Path) -> None:
    """Turn a cache into what a schema-version-1 writer made: the same file without the full images."""
    with h5py.File(path, "r+") as f:
        del f["image_pixels"]
        f.attrs["schema_version"] = 1


def test_version_1_cache_reads_crops_but_not_full_images(tmp_path: Path) -> None:
    path = tmp_path / "old.h5"
    _write(path, range(2))
    _downgrade_to_version_1(path)
    with CellCache(path) as cache:
        cache.verify()
        assert cache.schema_version == 1 and not cache.has_full_images
        np.testing.assert_array_equal(cache.cells_of("img001")[0], _field(1)["crops"])
        np.testing.assert_array_equal(cache.full_masks("img001")[0], _field(1)["cells_hw"])
        with pytest.raises(CellCacheSchemaError) as error:
            cache.full_image("img000")
    assert str(error.value).startswith(f"{path} is a schema_version 1 cell cache without the full images")
    assert "re-run scripts/segment.py" in str(error.value)
    with pytest.raises(CellCacheSchemaError, match="cannot be appended to: re-run scripts/segment.py"):
        _writer(path)


def test_full_images_must_match_the_masks(tmp_path: Path) -> None:
    field = _field(0)
    with _writer(tmp_path / "cells.h5") as writer, pytest.raises(CellCacheInputError, match="image_chw must be 4,H,W uint8"):
        writer.add_image("a", **{**field, "image_chw": field["image_chw"][:, :-1]})


def test_file_without_schema_version_is_not_a_cache(tmp_path: Path) -> None:
    path = tmp_path / "other.h5"
    with h5py.File(path, "w") as f:
        f.create_dataset("x", data=[1])
    with pytest.raises(
        CellCacheSchemaError, match=f"{path} has no 'schema_version' attribute: not an hpa-cells cell cache"
    ):
        CellCache(path)


def test_second_writer_is_locked_out_and_stale_lock_is_taken_over(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = tmp_path / "cells.h5"
    lock = tmp_path / "cells.h5.lock"
    with _writer(path) as writer:
        writer.add_image("img000", **_field(0))
        assert lock.read_text().startswith(f"{os.getpid()}@")
        with pytest.raises(CellCacheLockedError, match=f"{lock} is held by running process {os.getpid()}"):
            _writer(path)
    assert not lock.exists()
    dead = subprocess.run(
        [sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True, check=True
    )
    lock.write_text(f"{dead.stdout.strip()}@{os.uname().nodename}")
    with caplog.at_level(logging.WARNING, logger="hpa_cells.cache.lock"):
        with _writer(path) as writer:
            assert writer.done_image_ids() == {"img000"}
    assert f"taking over stale lock {lock} left by dead process {dead.stdout.strip()}" in caplog.text
    lock.write_text("123@some-other-host")
    with pytest.raises(
        CellCacheLockedError,
        match="held by pid 123 on host 'some-other-host'; if no writer runs there, delete",
    ):
        _writer(path)


def test_interrupted_run_resumes_and_skips_finished_images(tmp_path: Path) -> None:
    path = tmp_path / "cells.h5"
    with pytest.raises(KeyboardInterrupt):
        with _writer(path) as writer:
            writer.add_image("img000", **_field(0))
            writer.add_skipped("img001", "no cells")
            writer.add_image("img002", **_field(2))
            raise KeyboardInterrupt
    assert not path.exists() and len(list((tmp_path / "cells.h5.journal").glob("*.h5"))) == 3
    with _writer(path) as writer:
        assert writer.done_image_ids() == {"img000", "img001", "img002"}
        with pytest.raises(DuplicateImageError, match=f"image 'img002' is already in {path} or its journal"):
            writer.add_image("img002", **_field(2))
        for index in range(3, 5):
            writer.add_image(f"img{index:03d}", **_field(index))
    with _writer(path) as writer:
        assert writer.done_image_ids() == {"img000", "img001", "img002", "img003", "img004"}
        writer.add_image("img005", **_field(5))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cells.h5"]
    reference = tmp_path / "reference.h5"
    _write(reference, [0, 2, 3, 4, 5], skipped=("img001",))
    _assert_same_cache(path, reference)


def test_error_in_callers_loop_merges_finished_images(tmp_path: Path) -> None:
    path = tmp_path / "cells.h5"
    with pytest.raises(RuntimeError, match="segmenter crashed"):
        with _writer(path) as writer:
            writer.add_image("img000", **_field(0))
            writer.add_image("img001", **_field(1))
            raise RuntimeError("segmenter crashed")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cells.h5"]
    with CellCache(path) as cache:
        assert cache.image_ids == ["img000", "img001"]


def test_merge_interrupted_after_rename_does_not_duplicate(tmp_path: Path) -> None:
    """A run killed after the new main file replaced the old one but before the journal was deleted
    leaves shards whose images are already in the main file; the next merge must skip them."""
    path = tmp_path / "cells.h5"
    journal = tmp_path / "cells.h5.journal"
    with pytest.raises(KeyboardInterrupt):
        with _writer(path) as writer:
            for index in range(3):
                writer.add_image(f"img{index:03d}", **_field(index))
            raise KeyboardInterrupt
    saved = tmp_path / "saved_journal"
    shutil.copytree(journal, saved)
    with _writer(path):
        pass
    shutil.copytree(saved, journal)
    (tmp_path / "cells.h5.tmp").write_bytes(b"half a merge")
    (journal / "00000099.h5.part").write_bytes(b"half a shard")
    with _writer(path) as writer:
        assert writer.done_image_ids() == {"img000", "img001", "img002"}
        writer.add_image("img003", **_field(3))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cells.h5", "saved_journal"]
    reference = tmp_path / "reference.h5"
    _write(reference, range(4))
    _assert_same_cache(path, reference)


def test_failed_merge_keeps_journal_and_old_file_and_the_next_writer_completes(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "cells.h5"
    _write(path, range(2))
    before = path.read_bytes()

    def failing_add_from(self: CacheAppender, src: h5py.File) -> None:
        raise OSError("No space left on device")

    with monkeypatch.context() as patch:
        patch.setattr(CacheAppender, "add_from", failing_add_from)
        with pytest.raises(OSError, match="No space left on device"):
            writer = _writer(path)
            writer.add_image("img002", **_field(2))
            writer.close()
        with pytest.raises(ValueError, match="caller's own error"):
            with _writer(path):
                raise ValueError("caller's own error")  # the failing merge is logged, this one propagates
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cells.h5", "cells.h5.journal"]
    with _writer(path):
        pass
    reference = tmp_path / "reference.h5"
    _write(reference, range(3))
    _assert_same_cache(path, reference)


def test_appending_to_existing_cache_keeps_its_compression_and_data(tmp_path: Path) -> None:
    path = tmp_path / "cells.h5"
    with _writer(path, compression="lzf") as writer:
        writer.add_image("img000", **_field(0))
    with _writer(path, compression="gzip4") as writer:
        writer.add_image("img001", **_field(1))
    with h5py.File(path, "r") as f:
        assert f["crops"].compression == "lzf" and f["masks"].compression == "lzf"
        assert (f["image_masks/cells"].compression, f["image_masks/cells"].compression_opts) == ("gzip", 4)
    reference = tmp_path / "reference.h5"
    _write(reference, range(2))
    _assert_same_cache(path, reference)


def test_writer_without_images_makes_an_empty_valid_cache(tmp_path: Path) -> None:
    path = tmp_path / "cells.h5"
    with _writer(path):
        pass
    with CellCache(path) as cache:
        cache.verify()
        assert len(cache) == 0 and cache.image_ids == [] and cache.cell_table().empty and cache.skipped.empty


def test_mismatched_settings_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "cells.h5"
    _write(path, range(1))
    other = CacheProvenance(segmenter="cellpose", model_sha256="ab" * 32, parameters={})
    with pytest.raises(
        CellCacheMismatchError,
        match=f"{path} was written with segmenter='watershed' but this writer has segmenter='cellpose'",
    ):
        CellCacheWriter(path, CROP, other, QC_NAMES)
    with pytest.raises(
        CellCacheMismatchError, match=f"{path} holds crops of size 16 but this writer makes size 32"
    ):
        CellCacheWriter(path, 32, PROVENANCE, QC_NAMES)
    with pytest.raises(CellCacheMismatchError, match="qc_flag_names="):
        CellCacheWriter(path, CROP, PROVENANCE, ["border"])
    assert not (tmp_path / "cells.h5.lock").exists()


def _model_provenance(path: str, sha256: str) -> CacheProvenance:
    return CacheProvenance(segmenter="cellpose", model_sha256="cd" * 32,
                           parameters={"cell_model": {"path": path, "sha256": sha256}, "flow_threshold": 0.4})


def test_a_moved_model_file_with_the_same_hash_still_appends(tmp_path: Path) -> None:
    path = tmp_path / "cells.h5"
    with CellCacheWriter(path, CROP, _model_provenance("/old/repo/models/cells.safetensors", "ab" * 32),
                         QC_NAMES) as writer:
        writer.add_image("img000", **_field(0))
    with CellCacheWriter(path, CROP, _model_provenance("/new/repo/models/cells.safetensors", "ab" * 32),
                         QC_NAMES) as writer:
        assert writer.done_image_ids() == {"img000"}
        writer.add_image("img001", **_field(1))
    with CellCache(path) as cache:
        assert cache.image_ids == ["img000", "img001"]
    with pytest.raises(CellCacheMismatchError, match=r"other parameters: cell_model.sha256: \"abab.*\" in the "
                                                     r"file, \"efef.*\" now; use another"):
        CellCacheWriter(path, CROP, _model_provenance("/new/repo/models/cells.safetensors", "ef" * 32), QC_NAMES)


def test_bad_image_inputs_are_rejected(tmp_path: Path) -> None:
    field = _field(0)
    with _writer(tmp_path / "cells.h5") as writer:
        with pytest.raises(
            CellCacheInputError, match=r"image 'a': crops must be N,4,16,16 uint8; got uint8 \(2, 4, 8, 8\)"
        ):
            writer.add_image("a", **{**field, "crops": np.zeros((2, 4, 8, 8), np.uint8)})
        with pytest.raises(CellCacheInputError, match=r"image 'a' has no cells; record it with add_skipped"):
            writer.add_image("a", **{**field, "crops": np.zeros((0, 4, CROP, CROP), np.uint8)})
        with pytest.raises(
            CellCacheInputError, match="image 'a': labels must be a 28-long 0/1 multi-hot vector"
        ):
            writer.add_image("a", **{**field, "labels": np.ones(19, np.uint8)})
        with pytest.raises(
            CellCacheInputError, match=r"image 'a': cell_records lacks columns \['qc_flags'\]"
        ):
            writer.add_image("a", **{**field, "cell_records": field["cell_records"].drop(columns="qc_flags")})
        with pytest.raises(CellCacheInputError, match="cell ids must be positive and strictly increasing"):
            writer.add_image(
                "a", **{**field, "cell_records": field["cell_records"].iloc[::-1].reset_index(drop=True)}
            )
        assert writer.done_image_ids() == frozenset()


def _read_crops_in_child(cache: CellCache, image_id: str) -> bytes:
    return cache.cells_of(image_id)[0].tobytes()


def test_reader_reopens_per_process_after_fork_and_pickle(tmp_path: Path) -> None:
    path = tmp_path / "cells.h5"
    _write(path, range(3))
    with CellCache(path) as cache:
        expected = [cache.cells_of(f"img{i:03d}")[0].tobytes() for i in range(3)]  # parent holds a handle now
        assert pickle.loads(pickle.dumps(cache)).cells_of("img001")[0].tobytes() == expected[1]
        with multiprocessing.get_context("fork").Pool(2) as pool:
            got = pool.starmap(_read_crops_in_child, [(cache, f"img{i:03d}") for i in range(3)])
        assert got == expected
        assert cache.cells_of("img002")[0].tobytes() == expected[2]  # parent's handle still fine


def test_reader_warns_about_unmerged_journal(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    path = tmp_path / "cells.h5"
    _write(path, range(1))
    with pytest.raises(KeyboardInterrupt):
        with _writer(path) as writer:
            writer.add_image("img001", **_field(1))
            raise KeyboardInterrupt
    with caplog.at_level(logging.WARNING, logger="hpa_cells.cache"):
        with CellCache(path) as cache:
            assert cache.image_ids == ["img000"]
    assert f"{path} has 1 unmerged journal shards" in caplog.text


# ----- SIGKILL at any moment -----------------------------------------------------------------

NUM_KILL_IMAGES = 30

# Writes a 30-image cache deterministically. argv: cache path, stage, pause point, sleep per image.
# With a stage other than "none" it monkeypatches the writer to stop at that point, prints PAUSED
# and sleeps, so the test can SIGKILL it there; with "none" it runs to the end.
WRITER_SCRIPT = r"""
import sys
import time

import numpy as np

import hpa_cells.cache.writer as writer_module
from hpa_cells.cache import CacheProvenance, CellCacheWriter
from hpa_cells.classes import NUM_CLASSES
from hpa_cells.crops import CropConfig, extract_cell_crops

cache_path, stage, pause_point, per_image_sleep = sys.argv[1], sys.argv[2], int(sys.argv[3]), float(sys.argv[4])


def pause_here() -> None:
    print("PAUSED", flush=True)
    time.sleep(600)


if stage == "mid_image":  # the pause_point-th shard gets only its crops, then the writer stops
    shards_started = [0]
    original_create_layout = writer_module.create_layout

    def partial_create_layout(f, crop_size, compression, root_attrs, *, image=None, skipped=None):
        shards_started[0] += 1
        if shards_started[0] == pause_point:
            f.create_dataset("crops", data=image.crops if image is not None else np.zeros((0, 4, 16, 16), np.uint8))
            f.flush()
            pause_here()
        original_create_layout(f, crop_size, compression, root_attrs, image=image, skipped=skipped)

    writer_module.create_layout = partial_create_layout
elif stage == "during_merge":  # stop after pause_point shards were appended to cells.h5.tmp
    original_add_from = writer_module.CacheAppender.add_from
    shards_merged = [0]

    def pausing_add_from(self, src):
        original_add_from(self, src)
        shards_merged[0] += 1
        if shards_merged[0] == pause_point:
            self.dst.flush()
            pause_here()

    writer_module.CacheAppender.add_from = pausing_add_from
elif stage == "journal_cleanup":  # new main file in place, half of the journal deleted
    def half_delete(self, shards):
        for shard in shards[: len(shards) // 2]:
            shard.unlink()
        pause_here()

    writer_module.CellCacheWriter._delete_journal = half_delete

provenance = CacheProvenance(segmenter="watershed", model_sha256="", parameters={"min_area": 20})
with CellCacheWriter(cache_path, 16, provenance, ["border", "no_nucleus"]) as writer:
    print("START", flush=True)
    done = writer.done_image_ids()
    for index in range(NUM_IMAGES):
        image_id = f"img{index:03d}"
        if image_id in done:
            continue
        rng = np.random.default_rng(index)
        if index % 11 == 5:
            writer.add_skipped(image_id, "unreadable")
            continue
        image_chw = rng.integers(0, 256, (4, 40, 40), dtype=np.uint8)
        cells_hw = np.zeros((40, 40), dtype=np.int32)
        for cell_id in range(1, int(rng.integers(0, 5)) + 1):
            y, x = rng.integers(0, 30, 2)
            cells_hw[y : y + int(rng.integers(3, 12)), x : x + int(rng.integers(3, 12))] = cell_id
        nuclei_hw = np.where(rng.random((40, 40)) < 0.4, cells_hw, 0)
        cut = extract_cell_crops(image_chw, cells_hw, nuclei_hw, config=CropConfig(crop_size=16),
                                 qc_flags=rng.integers(0, 4, cells_hw.max() + 1))
        if len(cut) == 0:
            writer.add_skipped(image_id, "no cells")
            continue
        labels = (rng.random(NUM_CLASSES) < 0.15).astype(np.uint8) if index % 4 else None
        writer.add_cell_crops(image_id, cut, cells_hw, nuclei_hw, (160, 160), labels, image_chw=image_chw)
        if stage == "between_images" and len(writer.done_image_ids()) == pause_point:
            pause_here()
        time.sleep(per_image_sleep)
print("DONE", flush=True)
""".replace("NUM_IMAGES", str(NUM_KILL_IMAGES))


class WriterProcess:
    """The writer script running as a real subprocess, its stdout lines collected by a thread."""

    def __init__(
        self, script: Path, cache: Path, stage: str, pause_point: int = 0, per_image_sleep: float = 0.0
    ) -> None:
        self.process = subprocess.Popen(
            [sys.executable, str(script), str(cache), stage, str(pause_point), str(per_image_sleep)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        self._reader = threading.Thread(target=self._read_stdout, daemon=True)
        self._reader.start()

    def _read_stdout(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.put(line.strip())
        self.lines.put("<EOF>")

    def wait_for(self, wanted: str, timeout_s: float = 60.0) -> None:
        """Block until the writer prints `wanted`; fail with its stderr if it ends or hangs first."""
        deadline = time.monotonic() + timeout_s
        while (remaining := deadline - time.monotonic()) > 0:
            try:
                line = self.lines.get(timeout=remaining)
            except queue.Empty:
                break
            if line == wanted:
                return
            if line == "<EOF>":
                rc = self.process.wait()
                pytest.fail(f"writer exited (rc {rc}) before printing {wanted}: {self.stderr()}")
        self.process.kill()
        pytest.fail(f"writer did not print {wanted} within {timeout_s} s")

    def stderr(self) -> str:
        return self.process.stderr.read() if self.process.stderr else ""

    def sigkill(self) -> str:
        """SIGKILL the writer, reap it (so its pid is dead, not a zombie) and return its stderr."""
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=30)
        assert self.process.returncode == -signal.SIGKILL
        return self.stderr()


def _run_to_end(script: Path, cache: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """Run the writer script to completion in this process (the rerun after a kill: same code, and
    the killed writer's pid is dead, so its lock is stale)."""
    saved_argv = sys.argv
    sys.argv = [str(script), str(cache), "none", "0", "0"]
    try:
        runpy.run_path(str(script), run_name="__main__")
    finally:
        sys.argv = saved_argv
    assert capsys.readouterr().out.split() == ["START", "DONE"]


def _assert_same_cache(path: Path, reference: Path) -> None:
    """Cell by cell equality of two caches (all but their timestamps), and no leftovers beside `path`."""
    with CellCache(path) as got, CellCache(reference) as want:
        got.verify()
        assert got.image_ids == want.image_ids
        assert len(set(got.image_ids)) == got.num_images
        pd.testing.assert_frame_equal(got.cell_table(), want.cell_table())
        assert not got.cell_table().duplicated(["image_id", "cell_id"]).any()
        pd.testing.assert_frame_equal(got.image_table(), want.image_table())
        pd.testing.assert_frame_equal(got.skipped, want.skipped)
        np.testing.assert_array_equal(got.labels, want.labels)
        for image_id in want.image_ids:
            got_crops, got_masks = got.cells_of(image_id)
            want_crops, want_masks = want.cells_of(image_id)
            assert got_crops.tobytes() == want_crops.tobytes(), image_id
            assert got_masks.tobytes() == want_masks.tobytes(), image_id
            for got_mask, want_mask in zip(got.full_masks(image_id), want.full_masks(image_id), strict=True):
                np.testing.assert_array_equal(got_mask, want_mask)
            assert got.full_image(image_id).tobytes() == want.full_image(image_id).tobytes(), image_id
        untimed = {"created", "modified"}
        assert {k: v for k, v in got.provenance.items() if k not in untimed} == {
            k: v for k, v in want.provenance.items() if k not in untimed
        }
    leftovers = [
        p.name for p in path.parent.iterdir() if p.name.startswith(path.name) and p.name != path.name
    ]
    assert leftovers == []


@pytest.fixture(scope="module")
def writer_script(tmp_path_factory: pytest.TempPathFactory) -> Path:
    script = tmp_path_factory.mktemp("script") / "write_cache.py"
    script.write_text(WRITER_SCRIPT)
    return script


@pytest.fixture(scope="module")
def uninterrupted_cache(writer_script: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    cache = tmp_path_factory.mktemp("reference") / "cells.h5"
    done = subprocess.run(
        [sys.executable, str(writer_script), str(cache), "none", "0", "0"],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0 and done.stdout.split() == ["START", "DONE"], done.stderr
    with CellCache(cache) as reference:
        assert reference.num_images + len(reference.skipped) == NUM_KILL_IMAGES
        assert reference.num_images >= 20 and len(reference.skipped) >= 3
    return cache


@pytest.mark.parametrize(
    ("stage", "pause_point", "evidence"),
    [
        ("mid_image", 12, "a half-written .part shard in the journal"),
        ("between_images", 9, "nine finished shards, no main file"),
        ("during_merge", 14, "a half-merged cells.h5.tmp beside the untouched journal"),
        ("journal_cleanup", 0, "the new main file and half of the journal"),
    ],
)
def test_sigkill_at_each_stage_then_rerun_matches_uninterrupted_run(
    stage: str,
    pause_point: int,
    evidence: str,
    writer_script: Path,
    uninterrupted_cache: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    caplog: pytest.LogCaptureFixture,
) -> None:
    cache = tmp_path / "cells.h5"
    journal = tmp_path / "cells.h5.journal"
    writer = WriterProcess(writer_script, cache, stage, pause_point)
    writer.wait_for("PAUSED")
    writer.sigkill()
    # The kill landed where intended: `evidence` says what the folder must show.
    shards = len(list(journal.glob("*.h5")))
    if stage == "mid_image":
        landed = (
            len(list(journal.glob("*.h5.part"))) == 1 and shards >= pause_point - 1 and not cache.exists()
        )
    elif stage == "between_images":
        landed = shards >= pause_point and not cache.exists()
    elif stage == "during_merge":
        landed = (tmp_path / "cells.h5.tmp").exists() and shards == NUM_KILL_IMAGES and not cache.exists()
    else:
        landed = cache.exists() and 0 < shards < NUM_KILL_IMAGES
    assert landed, f"expected {evidence}; found {sorted(p.name for p in tmp_path.rglob('*'))}"
    assert (tmp_path / "cells.h5.lock").exists()
    with caplog.at_level(logging.WARNING, logger="hpa_cells.cache.lock"):
        _run_to_end(writer_script, cache, capsys)
    assert (
        f"taking over stale lock {tmp_path / 'cells.h5.lock'} left by dead process {writer.process.pid}"
        in caplog.text
    )
    _assert_same_cache(cache, uninterrupted_cache)


def _kill_at_random_moments(writer_script: Path, cache: Path, seed: int, max_kills: int) -> int:
    """Start the writer repeatedly, SIGKILL it after a seeded random delay each time, until a run
    completes by itself or max_kills kills happened; returns the number of kills."""
    rng = np.random.default_rng(seed)
    kills = 0
    while kills < max_kills:
        writer = WriterProcess(writer_script, cache, "none", per_image_sleep=0.01)
        writer.wait_for("START")
        time.sleep(float(rng.uniform(0.0, 0.6)))
        if writer.process.poll() is not None:
            assert writer.process.returncode == 0, writer.stderr()
            break
        writer.sigkill()
        kills += 1
    return kills


def test_sigkill_at_random_moments_then_rerun_matches_uninterrupted_run(
    writer_script: Path, uninterrupted_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    cache = tmp_path / "cells.h5"
    assert _kill_at_random_moments(writer_script, cache, seed=7, max_kills=2) >= 1
    _run_to_end(writer_script, cache, capsys)
    _assert_same_cache(cache, uninterrupted_cache)


@pytest.mark.slow
@pytest.mark.parametrize("seed", range(5))
def test_many_random_sigkills_then_rerun_matches_uninterrupted_run(
    seed: int,
    writer_script: Path,
    uninterrupted_cache: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    cache = tmp_path / "cells.h5"
    _kill_at_random_moments(writer_script, cache, seed=100 + seed, max_kills=8)
    _run_to_end(writer_script, cache, capsys)
    _assert_same_cache(cache, uninterrupted_cache)


def test_a_settings_mismatch_names_the_settings_that_differ() -> None:
    """A cache written before a segmenter option existed: the message names the new keys, not two JSON blobs."""
    import json

    from hpa_cells.cache.settings import settings_differences as _json_differences

    old = json.dumps({"settings": {"diameter_tolerance": 1.25, "use_er": True}, "working_size": 512})
    new = json.dumps({"settings": {"diameter_tolerance": None, "use_er": True, "cell_assembly": "nuclei"},
                      "seeded": {"cellprob_threshold": 0.0}, "working_size": 512})
    assert _json_differences(old, new) == [
        'seeded: missing in the file, {"cellprob_threshold": 0.0} now',
        'settings.cell_assembly: missing in the file, "nuclei" now',
        "settings.diameter_tolerance: 1.25 in the file, null now",
    ]
    assert _json_differences("not json", "{}") == ["'not json' in the file, '{}' now"]
