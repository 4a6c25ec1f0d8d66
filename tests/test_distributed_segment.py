"""Issue 14: segmentation spread over processes and machines. `segment --shard I/N` + `merge-caches`, and
`segment --scheduler` on Dask workers (a LocalCluster of 2 processes), each give a cache identical, dataset for
dataset, to a single-process run; a worker killed mid-run loses nothing (its chunk is redone elsewhere from where
it stopped, or a rerun segments only the missing fields); clear errors for bad options, mismatched shards and an
unreachable scheduler. The watershed segmenter on 256 px synthetic fields keeps it fast."""

from __future__ import annotations

import functools
import shutil
import socket
from collections.abc import Iterator
from pathlib import Path

import dask
import distributed  # noqa: F401 - loads its config defaults before a test sets (and restores) one of them
import numpy as np
import pytest
from distributed_fixtures import DyingWatershed, assert_same_cache

import hpa_cells_cli.main as cli
import hpa_cells_cli.segment as segment_command
from hpa_cells.cache import CellCache, CellCacheMismatchError
from hpa_cells.cache.merging import merge_caches
from hpa_cells.cache.shards import cache_contents, shard_caches_in, shards_dir_of
from hpa_cells.crops import CropConfig
from hpa_cells.images import write_sample
from hpa_cells.synthetic.dataset import SyntheticConfig, write_dataset
from segmentation.distributed import (
    DistributedOptions,
    DistributedRunError,
    SchedulerSpec,
    segment_distributed,
)
from segmentation.segment_to_cache import SegmentJob, segment_folder
from segmentation.sharding import ShardSpec
from segmentation.watershed import WatershedSegmenter

N_FIELDS = 7
"""6 synthetic fields, one of them without its yellow channel (skipped: missing channel), and a blank one (skipped:
no cells)."""
WITH_CELLS = 5
OPTIONS = ["--segmenter", "watershed", "--size", "256", "--crop-size", "32"]


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("distributed") / "images"
    write_dataset(folder, 6, SyntheticConfig(seed=21, size=256))
    write_sample(folder, "zz-blank", np.zeros((4, 256, 256), np.uint8))
    missing = sorted(folder.glob("*_yellow.png"))[2]
    missing.unlink()
    ids = sorted({p.name.rsplit("_", 1)[0] for p in folder.glob("*.png")})
    assert len(ids) == N_FIELDS and {ShardSpec(0, 2).holds(i) for i in ids} == {True, False}  # both shards used
    return folder


def argv(images: Path, out: Path, *more: str) -> list[str]:
    return ["--images", str(images), "--labels", str(images / "train.csv"), "--out", str(out), *OPTIONS, *more]


def job(images: Path, out: Path) -> SegmentJob:
    """The SegmentJob the command line `argv(images, out)` makes, one field per network pass (so a segmenter
    that dies at its n-th call dies at the n-th field; the cache does not depend on the batch size)."""
    return SegmentJob(images_dir=images, out_path=out, labels_path=images / "train.csv", working_size=256,
                      crop=CropConfig(crop_size=32), batch_size=1)


@pytest.fixture(scope="module")
def reference(images: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The single-process cache every spread run must equal."""
    out = tmp_path_factory.mktemp("reference") / "cells.h5"
    assert segment_command.main(argv(images, out)) == 0
    with CellCache(out) as cache:
        assert (cache.num_images, len(cache.skipped)) == (WITH_CELLS, 2)
        assert cache.skipped.image_id.tolist() == sorted(cache.skipped.image_id)  # the skipped table in id order
        assert "device" not in cache.provenance["parameters"]
    return out


@pytest.fixture(scope="module")
def cluster() -> Iterator[str]:
    """A LocalCluster of 2 single-thread worker processes for the tcp:// tests: its scheduler's address."""
    from dask.distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None) as local:
        yield local.scheduler_address


def test_two_shards_then_merge_caches_equal_one_process(images: Path, reference: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cells.h5"
    for index in (0, 1):
        assert segment_command.main(argv(images, out, "--shard", f"{index}/2")) == 0
    printed = capsys.readouterr().out
    assert f"Segmented shard 1/2 of {images} with watershed -> {out}.shards/shard-1-of-2.h5" in printed
    assert f"when every shard is done: hpa-cells merge-caches --out {out} {out}.shards" in printed
    shards = shard_caches_in(shards_dir_of(out))
    assert [p.name for p in shards] == ["shard-0-of-2.h5", "shard-1-of-2.h5"]
    for index, shard in enumerate(shards):  # each shard holds exactly the fields its id hash gives it
        contents = cache_contents(shard)
        held = contents.image_ids + list(contents.skipped)
        assert held and all(ShardSpec(index, 2).holds(image_id) for image_id in held)
    assert not out.exists()

    assert cli.main(["merge-caches", "--out", str(out), str(shards_dir_of(out))]) == 0
    assert f"{WITH_CELLS} images added, 0 already there" in capsys.readouterr().out
    assert_same_cache(out, reference)

    # Rerunning the merge adds nothing; rerunning a shard finds its fields done (in the shard and in the final cache).
    assert cli.main(["merge-caches", "--out", str(out), str(shards[0]), str(shards[1]), "--remove-shards"]) == 0
    assert "nothing new to merge from 2 shard cache(s)" in capsys.readouterr().out
    assert not shards_dir_of(out).exists()
    assert segment_command.main(argv(images, out, "--shard", "0/2")) == 0
    assert "segmented now: 0; skipped now: 0" in capsys.readouterr().out
    assert_same_cache(out, reference)


def test_dask_workers_over_tcp_equal_one_process(images: Path, reference: Path, cluster: str, tmp_path: Path,
                                                 capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cells.h5"
    assert segment_command.main(argv(images, out, "--scheduler", cluster, "--chunk-size", "3")) == 0
    printed = capsys.readouterr().out
    assert f"Segmented {images} with watershed on 2 Dask worker(s) -> {out}" in printed
    assert f"  workers: 2 ({cluster}); 3 chunk(s); " in printed
    assert "  device: cpu on 2 workers" in printed
    assert f"  shard caches removed from {out}.shards" in printed
    assert f"segmented now: {WITH_CELLS}; skipped now: 2" in printed
    assert_same_cache(out, reference)
    assert not shards_dir_of(out).exists()

    # Other settings than the existing cache are refused before any work, naming the cache and the setting.
    assert segment_command.main([*argv(images, out, "--scheduler", cluster), "--crop-size", "16"]) == 2
    assert capsys.readouterr().err == (f"error: {out} was made with other settings than this command: crop size: 32 "
                                       f"in {out}, 16 in this command; rerun with the same options, or use another "
                                       "--out\n")


def test_a_worker_dying_mid_chunk_loses_nothing_and_its_chunk_resumes_elsewhere(
        images: Path, reference: Path, cluster: str, tmp_path: Path) -> None:
    out = tmp_path / "cells.h5"
    dying = functools.partial(DyingWatershed, 2, tmp_path / "died")
    report = segment_distributed(job(images, out), dying,
                                 DistributedOptions(SchedulerSpec.parse(cluster), chunk_size=4))
    assert (tmp_path / "died").exists()  # one worker process did exit mid-chunk
    # Both chunks (4 and 3 fields) need at least 3 segmentations: the dead worker had stored 2 segmented fields of its
    # chunk (and the field without its yellow channel, if that chunk held it), which the chunk's next attempt took
    # over from the dead attempt's journal instead of segmenting them again: every field was done exactly once.
    assert report.finished_earlier in (2, 3)
    assert report.run.images_done + len(report.run.skipped) + report.finished_earlier == N_FIELDS
    assert_same_cache(out, reference)


def test_a_run_stopped_by_a_dead_worker_then_rerun_segments_only_the_missing_fields(
        images: Path, reference: Path, cluster: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cells.h5"
    dying = functools.partial(DyingWatershed, 2, tmp_path / "died")
    with dask.config.set({"distributed.scheduler.allowed-failures": 0}):  # the first death stops the run
        with pytest.raises(DistributedRunError, match=r"failed: KilledWorker: .*; the fields finished so far are kept "
                                                      rf"in {out}\.shards: rerun the same command to continue$"):
            segment_distributed(job(images, out), dying,
                                DistributedOptions(SchedulerSpec.parse("local:2"), chunk_size=3))
    finished = set()
    for shard in shard_caches_in(shards_dir_of(out)):
        contents = cache_contents(shard)
        finished |= set(contents.image_ids) | set(contents.skipped)
    assert 2 <= len(finished) < N_FIELDS and not out.exists()

    assert segment_command.main(argv(images, out, "--scheduler", cluster)) == 0  # the rerun, on other workers
    printed = capsys.readouterr().out
    with_cells = sum(1 for i in finished if i in CellCache(reference).image_ids)
    assert (f"images found: {N_FIELDS}; already in the cache: {with_cells}; segmented now: "
            f"{WITH_CELLS - with_cells}; skipped now: {2 - (len(finished) - with_cells)}") in printed
    assert_same_cache(out, reference)
    assert not shards_dir_of(out).exists()


def test_merge_refuses_shards_made_with_other_settings_naming_shard_and_setting(
        images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "cells.h5"
    assert segment_command.main(argv(images, out, "--shard", "0/2")) == 0
    assert segment_command.main(argv(images, out, "--shard", "1/2", "--keep-neighbours")) == 0
    capsys.readouterr()
    shards = shards_dir_of(out)
    assert cli.main(["merge-caches", "--out", str(out), str(shards)]) == 2
    assert capsys.readouterr().err == (
        f"error: cannot merge {shards}/shard-1-of-2.h5 into {out}: it was made with other settings than "
        f"{shards}/shard-0-of-2.h5: parameters: crop.zero_other_cells: true in {shards}/shard-0-of-2.h5, false in "
        f"{shards}/shard-1-of-2.h5; merge only shards of one command (same segmenter, model and options)\n")
    assert not out.exists()


def test_merge_keeps_an_image_found_twice_alike_and_refuses_it_found_twice_different(
        images: Path, reference: Path, tmp_path: Path) -> None:
    shard = ShardSpec(0, 2)
    labelled, unlabelled = tmp_path / "labelled.h5", tmp_path / "unlabelled.h5"
    segment_folder(job(images, labelled), WatershedSegmenter(), select=shard.holds)
    segment_folder(SegmentJob(images_dir=images, out_path=unlabelled, working_size=256, crop=CropConfig(crop_size=32)),
                   WatershedSegmenter(), select=shard.holds)
    copy = Path(shutil.copyfile(labelled, tmp_path / "copy.h5"))
    summary = merge_caches(tmp_path / "twice.h5", [labelled, copy])
    assert summary.duplicates == summary.images_added > 0
    assert_same_cache(tmp_path / "twice.h5", labelled)

    first = CellCache(labelled).image_ids[0]
    with pytest.raises(CellCacheMismatchError) as caught:
        merge_caches(tmp_path / "mixed.h5", [labelled, unlabelled])
    assert str(caught.value) == (f"image {first!r} is in {labelled} and in {unlabelled} with different images/labels, "
                                 "images/has_labels; keep one of the two shards (or re-segment the field into one)")
    assert not (tmp_path / "mixed.h5").exists()


def test_merge_caches_labels_update_the_images_already_there(reference: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    out = Path(shutil.copyfile(reference, tmp_path / "cells.h5"))
    first = CellCache(out).image_ids[0]
    summary = merge_caches(out, [], labels={first: [7, 25]})
    assert (summary.written, summary.labels_changed, summary.images_added) == (True, 1, 0)
    with CellCache(out) as cache:
        assert cache.image_table().label_ids.iloc[0] == (7, 25)
    assert cli.main(["merge-caches", "--out", str(out), str(tmp_path / "missing.h5")]) == 2
    assert capsys.readouterr().err == f"error: shard cache {tmp_path / 'missing.h5'} does not exist\n"


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--shard", "2/2", "expected I/N with N >= 1 and 0 <= I < N (e.g. 0/4), got '2/2'"),
    ("--shard", "a/b", "expected I/N with N >= 1 and 0 <= I < N (e.g. 0/4), got 'a/b'"),
    ("--shard", "0/0", "expected I/N with N >= 1 and 0 <= I < N (e.g. 0/4), got '0/0'"),
    ("--scheduler", "local:0", "expected local:N (N worker processes on this machine) or a scheduler address such "
                               "as tcp://HOST:8786, got 'local:0'"),
    ("--scheduler", "localhost:8786", "expected local:N (N worker processes on this machine) or a scheduler "
                                      "address such as tcp://HOST:8786, got 'localhost:8786'"),
])
def test_bad_shard_and_scheduler_text_exit_2_via_argparse(option: str, value: str, message: str, tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stopped:
        segment_command.main(["--images", str(tmp_path), "--out", str(tmp_path / "c.h5"), option, value])
    assert stopped.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1].endswith(f"error: argument {option}: {message}")


def test_options_that_do_not_go_together(images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "c.h5"
    assert segment_command.main(argv(images, out, "--shard", "0/2", "--scheduler", "local:2")) == 2
    assert capsys.readouterr().err.startswith("error: --shard and --scheduler do not go together")
    assert segment_command.main(argv(images, out, "--keep-shards")) == 2
    assert capsys.readouterr().err == "error: --keep-shards needs --scheduler\n"


def test_an_unreachable_scheduler_is_one_line_and_exit_2(images: Path, tmp_path: Path,
                                                         capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as probe:  # a port nobody listens on
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    address = f"tcp://127.0.0.1:{port}"
    out = tmp_path / "c.h5"
    assert segment_command.main(argv(images, out, "--scheduler", address, "--connect-timeout", "1")) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: cannot reach the Dask scheduler at {address} within 1 s (") and err.count("\n") == 1
    assert not out.exists() and not shards_dir_of(out).exists()
