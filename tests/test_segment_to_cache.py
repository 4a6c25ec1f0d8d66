"""The segment-folder-to-cache job with the watershed segmenter on small synthetic folders: cache contents,
resuming, skipped images, strict mode, mask export at the original resolution, labels, and a crash mid-run."""

from __future__ import annotations

import shutil
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pytest

from hpa_cells.cache import CellCache
from hpa_cells.images import read_label_mask, read_sample, resize_mask, write_sample
from hpa_cells.labels import read_labels, to_multi_hot
from hpa_cells.synthetic.dataset import SyntheticConfig, SyntheticGenerator, write_dataset
from segmentation.result import SegmentationResult
from segmentation.segment_to_cache import SegmentJob, StrictModeError, segment_folder
from segmentation.watershed import WatershedSegmenter

N_IMAGES = 5


@pytest.fixture(scope="module")
def source_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Five synthetic 256 px fields with train.csv, written once per module."""
    folder = tmp_path_factory.mktemp("synthetic") / "images"
    write_dataset(folder, N_IMAGES, SyntheticConfig(seed=21, size=256))
    return folder


@pytest.fixture()
def images(source_folder: Path, tmp_path: Path) -> Path:
    """A private copy of the synthetic folder that a test may damage."""
    return Path(shutil.copytree(source_folder, tmp_path / "images"))


def ids_in(folder: Path) -> list[str]:
    return sorted(p.name[: -len("_red.png")] for p in folder.glob("*_red.png"))


def test_folder_to_cache_then_rerun_skips_everything(images: Path, tmp_path: Path) -> None:
    out = tmp_path / "cells.h5"
    job = SegmentJob(images_dir=images, out_path=out, labels_path=images / "train.csv", working_size=256, batch_size=2)
    summary = segment_folder(job, WatershedSegmenter())
    ids = ids_in(images)
    assert (summary.images_found, summary.images_done, summary.images_already_done) == (N_IMAGES, N_IMAGES, 0)
    assert summary.skipped == {}
    with CellCache(out) as cache:
        cache.verify()
        assert cache.image_ids == ids
        assert len(cache) == summary.cells_kept == sum(summary.cells_per_image)
        assert cache.provenance["segmenter"] == "watershed"
        table = cache.image_table()
        assert (table[["original_h", "original_w", "working_h", "working_w"]].to_numpy() == 256).all()
        # The cache holds exactly what the segmenter finds on the image read from disk.
        expected = WatershedSegmenter().segment_batch([read_sample(images, ids[0])])[0]
        cells, nuclei = cache.full_masks(ids[0])
        np.testing.assert_array_equal(cells, expected.cells)
        np.testing.assert_array_equal(nuclei, expected.nuclei)
        np.testing.assert_array_equal(cache.full_image(ids[0]), read_sample(images, ids[0]))  # what was segmented
        assert cache.cell_table().query(f"image_id == '{ids[0]}'").cell_id.tolist() == expected.qc.cell_id.tolist()
        labels = read_labels(images / "train.csv")
        np.testing.assert_array_equal(cache.labels, to_multi_hot([labels[i] for i in ids]))
        assert cache.has_labels.all()
    lines = summary.lines()
    assert lines[0] == f"images found: {N_IMAGES}; already in the cache: 0; segmented now: {N_IMAGES}; skipped now: 0"
    assert lines[1].startswith(f"cells kept: {summary.cells_kept}; cells per image min/median/max: ")

    again = segment_folder(job, WatershedSegmenter())
    assert (again.images_found, again.images_already_done, again.images_done, again.cells_kept) == (N_IMAGES, N_IMAGES, 0, 0)
    assert again.lines()[0] == f"images found: {N_IMAGES}; already in the cache: {N_IMAGES}; segmented now: 0; skipped now: 0"
    with CellCache(out) as cache:
        assert cache.image_ids == ids and len(cache) == summary.cells_kept


def test_limit_then_resume(images: Path, tmp_path: Path) -> None:
    job = SegmentJob(images_dir=images, out_path=tmp_path / "cells.h5", working_size=256, limit=2)
    first = segment_folder(job, WatershedSegmenter())
    assert first.images_done == 2
    rest = segment_folder(SegmentJob(images_dir=images, out_path=tmp_path / "cells.h5", working_size=256),
                          WatershedSegmenter())
    assert (rest.images_already_done, rest.images_done) == (2, N_IMAGES - 2)
    with CellCache(tmp_path / "cells.h5") as cache:
        assert cache.image_ids == ids_in(images)


def test_missing_channel_unreadable_and_empty_images_are_skipped(images: Path, tmp_path: Path) -> None:
    ids = ids_in(images)
    (images / f"{ids[1]}_yellow.png").unlink()
    red = images / f"{ids[3]}_red.png"
    red.write_bytes(red.read_bytes()[:200])  # truncated PNG
    write_sample(images, "zz-blank", np.zeros((4, 256, 256), np.uint8))
    out = tmp_path / "cells.h5"
    summary = segment_folder(SegmentJob(images_dir=images, out_path=out, working_size=256, batch_size=2),
                             WatershedSegmenter())
    assert summary.images_found == N_IMAGES + 1
    assert summary.images_done == N_IMAGES - 2
    assert list(summary.skipped) == [ids[1], ids[3], "zz-blank"]
    assert summary.skipped[ids[1]] == "missing channel(s): yellow"
    assert summary.skipped[ids[3]].startswith(f"unreadable: {red}: cannot decode image")
    assert summary.skipped["zz-blank"] == "no cells found"
    with CellCache(out) as cache:
        assert cache.image_ids == [ids[0], ids[2], ids[4]]
        skipped = dict(zip(cache.skipped.image_id, cache.skipped.reason, strict=True))
    assert skipped == summary.skipped
    assert f"  skipped {ids[1]}: missing channel(s): yellow" in summary.lines()
    # A rerun does not retry skipped fields whose files are unchanged, and counts them apart from the cached ones
    # (issue 16: they were counted as "already in the cache").
    again = segment_folder(SegmentJob(images_dir=images, out_path=out, working_size=256), WatershedSegmenter())
    assert (again.images_already_done, again.images_done, again.skipped) == (N_IMAGES - 2, 0, {})
    assert (again.skipped_earlier, again.retried) == (3, 0)
    assert again.lines()[0] == (f"images found: {N_IMAGES + 1}; already in the cache: {N_IMAGES - 2}; segmented now: "
                                "0; skipped now: 0; skipped earlier, not retried: 3 (files unchanged; --retry-skipped "
                                "retries them)")


def test_strict_mode_stops_at_the_first_bad_image_and_keeps_the_finished_ones(images: Path, tmp_path: Path) -> None:
    ids = ids_in(images)
    red = images / f"{ids[3]}_red.png"
    red.write_bytes(red.read_bytes()[:200])
    out = tmp_path / "cells.h5"
    job = SegmentJob(images_dir=images, out_path=out, working_size=256, batch_size=2, strict=True)
    with pytest.raises(StrictModeError) as caught:
        segment_folder(job, WatershedSegmenter())
    message = str(caught.value)
    assert message.startswith(f"image '{ids[3]}' in {images}: unreadable: {red}: cannot decode image")
    assert message.endswith("(--strict stops here; 2 images already written are kept)")
    with CellCache(out) as cache:
        assert cache.image_ids == ids[:2]
        assert len(cache.skipped) == 0


def test_strict_mode_and_a_missing_channel(images: Path, tmp_path: Path) -> None:
    ids = ids_in(images)
    (images / f"{ids[2]}_green.png").unlink()
    (images / f"{ids[2]}_blue.png").unlink()
    job = SegmentJob(images_dir=images, out_path=tmp_path / "cells.h5", working_size=256, strict=True)
    with pytest.raises(StrictModeError, match=f"^image '{ids[2]}' in {images}: missing channel\\(s\\): green, blue "):
        segment_folder(job, WatershedSegmenter())


def test_exported_masks_are_16_bit_at_the_original_resolution(images: Path, tmp_path: Path) -> None:
    synthetic_ids = ids_in(images)
    big = SyntheticGenerator(SyntheticConfig(seed=4, size=300)).generate(0)
    write_sample(images, "big-300", big.image)
    out, masks_dir = tmp_path / "cells.h5", tmp_path / "masks"
    job = SegmentJob(images_dir=images, out_path=out, working_size=256, export_masks_dir=masks_dir)
    summary = segment_folder(job, WatershedSegmenter())
    assert summary.images_done == N_IMAGES + 1
    written = sorted(p.name for p in masks_dir.iterdir())
    assert written == sorted(f"{i}_{kind}.png" for i in ["big-300", *synthetic_ids] for kind in ("cells", "nuclei"))
    with CellCache(out) as cache:
        row = cache.image_table().set_index("image_id").loc["big-300"]
        assert (row.original_h, row.original_w, row.working_h, row.working_w) == (300, 300, 256, 256)
        full_cells, full_nuclei = cache.full_masks("big-300")
        small_cells, _ = cache.full_masks(synthetic_ids[0])
    exported = read_label_mask(masks_dir / "big-300_cells.png")
    assert exported.shape == (300, 300) and exported.dtype == np.uint16
    np.testing.assert_array_equal(exported, resize_mask(full_cells, (300, 300)))
    assert set(np.unique(exported)) == set(np.unique(full_cells))
    np.testing.assert_array_equal(read_label_mask(masks_dir / "big-300_nuclei.png"), resize_mask(full_nuclei, (300, 300)))
    small_exported = read_label_mask(masks_dir / f"{synthetic_ids[0]}_cells.png")
    assert small_exported.shape == (256, 256)
    np.testing.assert_array_equal(small_exported, small_cells)
    # The exported cells lie where the real cells are at the original resolution.
    truth = big.cell_mask > 0
    assert (truth & (exported > 0)).sum() / (truth | (exported > 0)).sum() > 0.7


def test_labels_for_some_images_only(images: Path, tmp_path: Path) -> None:
    ids = ids_in(images)
    labels_file = tmp_path / "labels.csv"
    labels_file.write_text(f"Id,Target\n{ids[0]},0 25\n{ids[2]},7\nnot-in-folder,3\n")
    out = tmp_path / "cells.h5"
    summary = segment_folder(SegmentJob(images_dir=images, out_path=out, labels_path=labels_file, working_size=256),
                             WatershedSegmenter())
    assert (summary.labels_without_images, summary.images_without_labels) == (1, N_IMAGES - 2)
    assert "labels without images: 1; images without labels: 3" in summary.lines()
    with CellCache(out) as cache:
        assert cache.has_labels.tolist() == [True, False, True, False, False]
        assert np.flatnonzero(cache.labels[0]).tolist() == [0, 25]
        assert np.flatnonzero(cache.labels[2]).tolist() == [7]
        assert not cache.labels[[1, 3, 4]].any()
        assert cache.image_table().label_ids.tolist() == [(0, 25), (), (7,), (), ()]


class FailingWrites:
    """Replaces the cache's shard writer: the `fail_on`-th shard write raises `error` (a crash, a full disk)."""

    def __init__(self, fail_on: int, error: BaseException) -> None:
        from hpa_cells.cache import writer as writer_module

        self.real = writer_module.write_shard
        self.fail_on, self.error, self.calls = fail_on, error, 0

    def __call__(self, *args, **kwargs):
        self.calls += 1
        if self.calls == self.fail_on:
            raise self.error
        return self.real(*args, **kwargs)


class FailingSegmenter:
    """The watershed segmenter (same name and provenance) that raises on its `fail_on`-th batch."""

    name = "watershed"

    def __init__(self, fail_on: int) -> None:
        self.inner = WatershedSegmenter()
        self.fail_on = fail_on
        self.batches = 0

    def segment_batch(self, images: Sequence[np.ndarray]) -> list[SegmentationResult]:
        self.batches += 1
        if self.batches == self.fail_on:
            raise RuntimeError("simulated crash in the segmenter")
        return self.inner.segment_batch(images)

    def provenance(self) -> dict[str, object]:
        return self.inner.provenance()


def test_a_crash_mid_run_keeps_finished_images_and_a_rerun_completes(images: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    # A failing segmenter no longer stops the run (the field is skipped, see test_a_failing_batch_skips_only_the_bad
    # _field); the crash is now simulated where it still stops a run: in the cache's own writes.
    out = tmp_path / "cells.h5"
    job = SegmentJob(images_dir=images, out_path=out, working_size=256, batch_size=1)
    monkeypatch.setattr("hpa_cells.cache.writer.write_shard",
                        FailingWrites(3, RuntimeError("simulated crash in the segmenter")))
    with pytest.raises(RuntimeError, match="^simulated crash in the segmenter$"):
        segment_folder(job, FailingSegmenter(fail_on=0))
    monkeypatch.undo()
    ids = ids_in(images)
    with CellCache(out) as cache:
        assert cache.image_ids == ids[:2]
        cells_before = len(cache)
    assert not out.with_name("cells.h5.lock").exists()
    summary = segment_folder(job, FailingSegmenter(fail_on=0))
    assert (summary.images_already_done, summary.images_done) == (2, N_IMAGES - 2)
    with CellCache(out) as cache:
        cache.verify()
        assert cache.image_ids == ids
        assert len(cache) == cells_before + summary.cells_kept
        assert cache.cell_table().groupby("image_id").cell_id.apply(lambda c: c.is_unique).all()
