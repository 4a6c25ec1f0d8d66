"""Issue 16, segmentation: one bad field never stops a run (skip records with id, files, reason; --strict stops),
skipped fields retried when their files changed (or --retry-skipped), labels as data (segment --labels on an
existing cache, `relabel`), 12-bit data in 16-bit PNGs (warning, --scaling), disk full and read-only caches,
numeric option checks and --out naming a folder."""

from __future__ import annotations

import errno
import json
import logging
import shutil
from pathlib import Path

import h5py
import numpy as np
import pytest

import hpa_cells_cli.main as cli
import hpa_cells_cli.relabel as relabel_command
import hpa_cells_cli.segment as segment_command
from hpa_cells.cache import CellCache, CellCacheError, CellCacheSpaceError, CellCacheWriter
from hpa_cells.images import files_fingerprint, read_sample, write_sample
from hpa_cells.synthetic.dataset import SyntheticConfig, write_dataset
from segmentation.segment_to_cache import SegmentJob, StrictModeError, segment_folder
from segmentation.watershed import WatershedSegmenter

N_IMAGES = 4


@pytest.fixture(scope="module")
def source_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("reliability") / "images"
    write_dataset(folder, N_IMAGES, SyntheticConfig(seed=33, size=256))
    return folder


@pytest.fixture()
def images(source_folder: Path, tmp_path: Path) -> Path:
    return Path(shutil.copytree(source_folder, tmp_path / "images"))


def ids_in(folder: Path) -> list[str]:
    return sorted(p.name[: -len("_red.png")] for p in folder.glob("*_red.png") if not p.name.startswith("aa-"))


def skipped_table(out: Path) -> dict[str, tuple[str, tuple[str, ...]]]:
    with CellCache(out) as cache:
        table = cache.skipped_files
    return {row.image_id: (row.reason, row.files) for row in table.itertuples()}


def add_thin_field(folder: Path) -> None:
    """The issue's 4000x20 px field: 'aa-thin' sorts first, so it is in the first batch."""
    rng = np.random.default_rng(0)
    write_sample(folder, "aa-thin", rng.integers(0, 255, (4, 4000, 20), dtype=np.uint8))


def job(images: Path, out: Path, **kwargs) -> SegmentJob:
    return SegmentJob(images_dir=images, out_path=out, working_size=256, batch_size=2, **kwargs)


def test_a_4000x20_field_is_skipped_with_its_id_and_files_and_the_run_goes_on(images: Path, tmp_path: Path) -> None:
    add_thin_field(images)
    out = tmp_path / "cells.h5"
    summary = segment_folder(job(images, out), WatershedSegmenter())
    assert (summary.images_found, summary.images_done) == (N_IMAGES + 1, N_IMAGES)
    reason = summary.skipped["aa-thin"]
    assert reason == ("segmentation failed for aa-thin_{red,green,blue,yellow}.png: FieldImageError: image 0 of the "
                      "batch: image of shape (4, 256, 1) is too small to segment")
    assert skipped_table(out) == {"aa-thin": (reason, tuple(f"aa-thin_{c}.png" for c in
                                                            ("blue", "green", "red", "yellow")))}
    with CellCache(out) as cache:
        assert cache.image_ids == ids_in(images)
    # The symptom: every rerun died at the same batch. Now a rerun does nothing and says why.
    again = segment_folder(job(images, out), WatershedSegmenter())
    assert (again.images_already_done, again.images_done, again.skipped_earlier, again.skipped) == (N_IMAGES, 0, 1, {})


def test_strict_stops_at_the_thin_field_naming_id_and_files(images: Path, tmp_path: Path,
                                                           capsys: pytest.CaptureFixture[str]) -> None:
    add_thin_field(images)
    out = tmp_path / "cells.h5"
    with pytest.raises(StrictModeError) as caught:
        segment_folder(job(images, out, strict=True), WatershedSegmenter())
    assert str(caught.value) == (f"image 'aa-thin' in {images}: segmentation failed for "
                                 "aa-thin_{red,green,blue,yellow}.png: FieldImageError: image 0 of the batch: image of "
                                 "shape (4, 256, 1) is too small to segment (--strict stops here; 0 images already "
                                 "written are kept)")
    assert segment_command.main(["--images", str(images), "--out", str(tmp_path / "b.h5"), "--segmenter",
                                 "watershed", "--size", "256", "--strict"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1].startswith("error: image 'aa-thin' in ") and "aa-thin_{red,green,blue,yellow}.png" in err[-1]


def test_a_failing_batch_skips_only_the_bad_field(images: Path, tmp_path: Path) -> None:
    """A segmenter that fails on any batch holding one field: the batch is redone image by image."""
    bad = ids_in(images)[1]

    class Picky(WatershedSegmenter):
        def segment_batch(self, batch):
            if any(np.array_equal(image, read_sample(images, bad, size=256)) for image in batch):
                raise RuntimeError("simulated failure\non two lines")
            return super().segment_batch(batch)

    summary = segment_folder(job(images, tmp_path / "cells.h5"), Picky())
    assert summary.images_done == N_IMAGES - 1
    assert summary.skipped == {bad: f"segmentation failed for {bad}_{{red,green,blue,yellow}}.png: RuntimeError: "
                                    "simulated failure on two lines"}


def test_a_cropping_failure_skips_the_field(images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import segmentation.segment_to_cache as module

    bad = ids_in(images)[2]
    real = module.extract_cell_crops
    calls = []

    def crops(image, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise IndexError("simulated crop failure")
        return real(image, *args, **kwargs)

    monkeypatch.setattr(module, "extract_cell_crops", crops)
    summary = segment_folder(job(images, tmp_path / "cells.h5"), WatershedSegmenter())
    assert summary.skipped == {bad: f"cropping failed for {bad}_{{red,green,blue,yellow}}.png: IndexError: "
                                    "simulated crop failure"}
    assert summary.images_done == N_IMAGES - 1


def test_duplicate_channel_files_skip_that_field_and_a_fix_is_retried(images: Path, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    ids = ids_in(images)
    tif = images / f"{ids[0]}_red.tif"
    tif.write_bytes((images / f"{ids[0]}_red.png").read_bytes())
    out = tmp_path / "cells.h5"
    assert segment_command.main(["--images", str(images), "--out", str(out), "--segmenter", "watershed",
                                 "--size", "256"]) == 0
    printed = capsys.readouterr().out
    reason = (f"duplicate channel file: sample {ids[0]}: channel 'red' exists in two formats: "
              f"{images / f'{ids[0]}_red.png'} and {tif}; keep one")
    assert f"  skipped {ids[0]}: {reason}" in printed
    assert f"segmented now: {N_IMAGES - 1}; skipped now: 1" in printed
    table = skipped_table(out)
    assert table[ids[0]][0] == reason and f"{ids[0]}_red.tif" in table[ids[0]][1]
    tif.unlink()  # fixed: the field's files changed, so the next run retries it and it leaves the skipped table
    summary = segment_folder(job(images, out), WatershedSegmenter())
    assert (summary.retried, summary.images_done, summary.images_already_done, summary.skipped) == (1, 1, 3, {})
    assert "retried 1 field(s) skipped earlier" in summary.lines()
    assert skipped_table(out) == {}
    with CellCache(out) as cache:
        cache.verify()
        assert cache.image_ids == [*ids[1:], ids[0]]  # the retried field comes last


def test_a_fixed_unreadable_channel_is_retried_and_retry_skipped_forces_it(images: Path, tmp_path: Path) -> None:
    ids = ids_in(images)
    red = images / f"{ids[3]}_red.png"
    good = red.read_bytes()
    red.write_bytes(good[:200])
    write_sample(images, "zz-blank", np.zeros((4, 256, 256), np.uint8))
    out = tmp_path / "cells.h5"
    first = segment_folder(job(images, out), WatershedSegmenter())
    assert sorted(first.skipped) == [ids[3], "zz-blank"]
    with h5py.File(out, "r") as f:  # the fingerprint stored is the files' size and mtime
        stored = dict(zip(f["skipped/image_id"].asstr()[:], f["skipped/files"].asstr()[:], strict=True))
    assert json.loads(stored[ids[3]])[red.name][0] == 200
    assert stored["zz-blank"] == files_fingerprint((images / f"zz-blank_{c}.png") for c in
                                                   ("red", "green", "blue", "yellow"))
    red.write_bytes(good)
    second = segment_folder(job(images, out), WatershedSegmenter())
    assert (second.retried, second.images_done, second.skipped_earlier, second.skipped) == (1, 1, 1, {})
    assert list(skipped_table(out)) == ["zz-blank"]
    forced = segment_folder(job(images, out, retry_skipped=True), WatershedSegmenter())
    assert (forced.retried, forced.images_done, forced.skipped) == (1, 0, {"zz-blank": "no cells found"})
    assert skipped_table(out)["zz-blank"][0] == "no cells found"  # replaced, not duplicated
    with CellCache(out) as cache:
        assert cache.image_ids == ids and len(cache.skipped) == 1


def test_labels_on_an_existing_cache_update_it_and_relabel_does_the_same(images: Path, tmp_path: Path,
                                                                        capsys: pytest.CaptureFixture[str]) -> None:
    ids = ids_in(images)
    out = tmp_path / "cells.h5"
    first = tmp_path / "first.csv"
    first.write_text("Id,Target\n" + "".join(f"{i},1\n" for i in ids))
    args = ["--images", str(images), "--out", str(out), "--segmenter", "watershed", "--size", "256"]
    assert segment_command.main([*args, "--labels", str(first)]) == 0
    capsys.readouterr()
    fixed = tmp_path / "fixed.csv"
    fixed.write_text(f"Id,Target\n{ids[0]},1\n{ids[1]},2 3\n{ids[2]},0\n")  # two changed, ids[3] not named
    assert segment_command.main([*args, "--labels", str(fixed)]) == 0
    assert "  labels changed for 2 image(s) already in the cache" in capsys.readouterr().out
    with CellCache(out) as cache:
        assert cache.image_table().label_ids.tolist() == [(1,), (2, 3), (0,), (1,)]
    again = tmp_path / "again.csv"
    again.write_text(f"ID,Label\n{ids[3]},5|6\n{ids[0]},1\nnot-in-cache,4\n")
    before = out.read_bytes()
    assert relabel_command.main(["--cache", str(out), "--labels", str(again)]) == 0
    assert capsys.readouterr().out.splitlines() == [
        f"Relabelled {out} from {again}: labels changed for 1 of {N_IMAGES} images",
        "  label file rows not in the cache: 1; cache images not in the label file (labels kept): 2"]
    with CellCache(out) as cache:
        cache.verify()
        assert cache.image_table().label_ids.tolist() == [(1,), (2, 3), (0,), (5, 6)]
    assert out.read_bytes() != before
    assert cli.main(["relabel", "--cache", str(out), "--labels", str(again)]) == 0
    assert "labels changed for 0 of" in capsys.readouterr().out
    assert cli.COMMANDS["relabel"][0] == "relabel"
    assert relabel_command.main(["--cache", str(tmp_path / "none.h5"), "--labels", str(again)]) == 2
    assert capsys.readouterr().err == f"error: no cache at {tmp_path / 'none.h5'}\n"


def write_12_bit(folder: Path, sample_id: str, peak: int) -> None:
    """A field whose 16-bit PNGs hold 12-bit data (the issue's max 4080)."""
    image = read_sample(folder, ids_in(folder)[0]).astype(np.uint32)
    peaks = np.maximum(1, image.max(axis=(1, 2), keepdims=True))
    write_sample(folder, sample_id, (image * peak // peaks).astype(np.uint16))


def test_12_bit_data_in_16_bit_pngs_warns_once_and_scaling_per_image_max_stretches_it(
        images: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture, capsys: pytest.CaptureFixture[str]) -> None:
    write_12_bit(images, "dim-a", 4080)
    write_12_bit(images, "dim-b", 4000)
    out = tmp_path / "cells.h5"
    with caplog.at_level(logging.WARNING):
        summary = segment_folder(job(images, out), WatershedSegmenter())
    warned = [r.getMessage() for r in caplog.records if "12-bit data?" in r.getMessage()]
    assert len(warned) == 1 and warned[0].startswith(f"{images / 'dim-a_red.png'}: 16-bit channel peaks at 4080")
    assert sorted(summary.dim_16_bit) == ["dim-a", "dim-b"]
    assert any(line.startswith("12-bit data in 16-bit files: 2 field(s), e.g. dim-a (dim-a_red.png, max 4080)")
               for line in summary.lines())
    with CellCache(out) as cache:
        dim_peak = int(cache.full_image("dim-a").max()) if "dim-a" in cache.image_ids else 16
    assert dim_peak <= 16  # the symptom, now warned about
    stretched = tmp_path / "stretched.h5"
    assert segment_command.main(["--images", str(images), "--out", str(stretched), "--segmenter", "watershed",
                                 "--size", "256", "--scaling", "per_image_max"]) == 0
    assert "12-bit data" not in capsys.readouterr().out
    with CellCache(stretched) as cache:
        assert cache.full_image("dim-a").max() == 255
        assert cache.provenance["parameters"]["scaling"] == "per_image_max"


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--size", "0", "argument --working-size/--size: expected 'auto' or a positive number of px, got '0'"),
    ("--crop-size", "2", "argument --crop-size: must be a whole number >= 4, got '2'"),
    ("--limit", "-1", "argument --limit: must be a whole number >= 0, got '-1'"),
    ("--batch-size", "0", "argument --batch-size: must be a whole number >= 1, got '0'"),
    ("--crop-size", "big", "argument --crop-size: must be a whole number >= 4, got 'big'"),
    ("--postprocess-workers", "-1", "argument --postprocess-workers: must be a whole number >= 0, got '-1'"),
    ("--network-batch-size", "0", "argument --network-batch-size: must be a whole number >= 1, got '0'"),
])
def test_numeric_options_are_checked(option: str, value: str, message: str,
                                     capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        segment_command.main(["--images", "x", "--out", "y.h5", option, value])
    assert stop.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(f"error: {message}")


def test_diameter_tolerance_nan_is_refused(images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert segment_command.main(["--images", str(images), "--out", str(tmp_path / "c.h5"),
                                 "--diameter-tolerance", "nan"]) == 2
    assert capsys.readouterr().err == "error: --diameter-tolerance must be 0 (off) or > 1, got nan\n"


def test_out_naming_a_folder(images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "outdir"
    folder.mkdir()
    assert segment_command.main(["--images", str(images), "--out", str(folder), "--segmenter", "watershed"]) == 2
    assert capsys.readouterr().err == (f"error: --out {folder} is a folder, not a cache file (give a file such as "
                                       f"{folder / 'cells.h5'})\n")
    with pytest.raises(CellCacheError, match=f"^{folder} is a folder, not a cache file"):
        segment_folder(job(images, folder), WatershedSegmenter())


def test_a_read_only_cache_folder_is_a_one_line_error(images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cells.h5"
    args = ["--images", str(images), "--out", str(out), "--segmenter", "watershed", "--size", "256", "--limit", "1"]
    assert segment_command.main(args) == 0
    capsys.readouterr()
    import hpa_cells.cache.lock as lock_module

    real_open = lock_module.os.open

    def read_only(path, flags, *rest):
        if str(path).endswith(".lock") and flags & lock_module.os.O_CREAT:
            raise OSError(errno.EROFS, "Read-only file system", str(path))
        return real_open(path, flags, *rest)

    monkeypatch.setattr(lock_module.os, "open", read_only)
    assert segment_command.main(args) == 2
    assert capsys.readouterr().err == (f"error: cannot create the lock file {out}.lock (Read-only file system): adding "
                                       "to a cache needs a writable folder; the cache can still be read\n")
    with CellCache(out) as cache:
        assert cache.num_images == 1


def test_disk_full_at_a_shard_write_is_one_line_and_the_cache_resumes(images: Path, tmp_path: Path,
                                                                     monkeypatch: pytest.MonkeyPatch,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    import hpa_cells.cache.writer as writer_module

    out = tmp_path / "cells.h5"
    args = ["--images", str(images), "--out", str(out), "--segmenter", "watershed", "--size", "256"]
    assert segment_command.main([*args, "--limit", "1"]) == 0  # a main file exists
    capsys.readouterr()
    main_bytes = out.read_bytes()
    real, calls = writer_module.write_shard, []

    def full(journal_dir, sequence, fill):
        calls.append(sequence)
        if len(calls) == 2:
            part = journal_dir / f"{sequence:08d}.h5.part"
            part.write_bytes(b"half")  # what h5py leaves; write_shard removes it on any error
            part.unlink()
            raise OSError(errno.ENOSPC, "No space left on device", str(part))
        return real(journal_dir, sequence, fill)

    monkeypatch.setattr(writer_module, "write_shard", full)
    assert segment_command.main(args) == 2
    err = capsys.readouterr().err.splitlines()[-1] + "\n"  # after the progress bar
    assert err.startswith(
        f"error: cannot write {out}.journal/00000001.h5.part: No space left on device; the cache {out} and its "
        "journal are kept as they were for a resume: free space (the journal merge needs about ")
    assert err.endswith(f" free in {tmp_path}, plus room for the fields still to segment) and rerun the same command\n")
    # On disk: the main file untouched, one finished shard in the journal, nothing half-written, no lock, no .tmp.
    assert out.read_bytes() == main_bytes
    assert sorted(p.name for p in (tmp_path / "cells.h5.journal").iterdir()) == ["00000000.h5"]
    assert not (tmp_path / "cells.h5.lock").exists() and not (tmp_path / "cells.h5.tmp").exists()
    monkeypatch.undo()
    assert segment_command.main(args) == 0
    assert f"already in the cache: 2; segmented now: {N_IMAGES - 2}" in capsys.readouterr().out
    with CellCache(out) as cache:
        cache.verify()
        assert cache.image_ids == ids_in(images)
    assert not (tmp_path / "cells.h5.journal").exists()


def test_the_merge_checks_free_space_first_and_says_how_much(images: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    import hpa_cells.cache.writer as writer_module

    out = tmp_path / "cells.h5"
    segment_folder(job(images, out, limit=2), WatershedSegmenter())
    size = out.stat().st_size
    real_usage = shutil.disk_usage
    free_during_merge = {"bytes": 10**12}

    def usage(path):
        total, used, _ = real_usage(path)
        return type(real_usage(path))(total, used, free_during_merge["bytes"])

    monkeypatch.setattr(writer_module.shutil, "disk_usage", usage)
    with CellCacheWriter.for_existing(out) as writer:
        writer.add_skipped("extra", "no cells found")  # one shard to merge
        free_during_merge["bytes"] = size  # room for the shard, not for the merged copy
        with pytest.raises(CellCacheSpaceError) as caught:
            writer.close()
    needed = writer_module.merge_space_needed(out)
    assert needed > size
    assert str(caught.value) == (f"{out}: merging the journal needs about {writer_module.format_bytes(needed)} free "
                                 f"in {tmp_path} but only {writer_module.format_bytes(size)} is free; free some space "
                                 "and rerun (the cache and its journal are kept for the resume)")
    assert out.stat().st_size == size and not (tmp_path / "cells.h5.tmp").exists()
    assert len(list((tmp_path / "cells.h5.journal").glob("*.h5"))) == 1
    monkeypatch.undo()
    with CellCacheWriter.for_existing(out):
        pass
    with CellCache(out) as cache:
        assert cache.skipped.image_id.tolist() == ["extra"]
