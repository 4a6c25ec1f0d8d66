"""Issue 14: `segment --postprocess-workers N` feeds the Cellpose segmenter batch after batch (`segment_stream`: the
network passes, the workers' per-field CPU work and the cropping and writing in the main process overlap) and makes
a cache identical, dataset for dataset, to a run without workers: the same cells, the same skipped fields with the
same reasons (a missing channel, a field too thin to segment, a blank field without cells), also when whole network
passes fail and the fields in flight are segmented one by one. The bundled models on small synthetic fields."""

from __future__ import annotations

import logging
import os
import signal
import time
from pathlib import Path

import numpy as np
import pytest
from distributed_fixtures import assert_same_cache

import hpa_cells_cli.segment as segment_command
import segmentation.cellpose_segmenter as cellpose_segmenter
from hpa_cells.cache import CellCache
from hpa_cells.images import write_sample
from hpa_cells.synthetic.dataset import SyntheticConfig, write_dataset
from segmentation.cellpose_segmenter import CellposeSegmenter, CellposeSettings
from segmentation.segment_to_cache import segment_folder

pytestmark = pytest.mark.usefixtures("one_torch_thread")

THIN = "synth-s41-000000-thin"
"""A 4000x20 px field (256x1 at the working size: too small to segment); sorted second, so it is image 1 of its
batch in the stream and image 0 when segmented on its own."""
OPTIONS = ["--size", "256", "--crop-size", "32", "--batch-size", "3"]
REASONS = {
    "synth-s41-000002": "missing channel(s): yellow",
    THIN: (f"segmentation failed for {THIN}_{{red,green,blue,yellow}}.png: FieldImageError: image 0 of the batch: "
           "image of shape (4, 256, 1) is too small to segment"),
    "zz-blank": "no cells found",
}


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """5 synthetic 256 px fields (one without its yellow channel), a thin field and a blank one: read in batches
    [000000, THIN, 000001], [000003, 000004, zz-blank]."""
    folder = tmp_path_factory.mktemp("stream") / "images"
    write_dataset(folder, 5, SyntheticConfig(seed=41, size=256))
    (folder / "synth-s41-000002_yellow.png").unlink()
    write_sample(folder, THIN, np.random.default_rng(0).integers(0, 255, (4, 4000, 20), dtype=np.uint8))
    write_sample(folder, "zz-blank", np.zeros((4, 256, 256), np.uint8))
    return folder


def argv(images: Path, out: Path, *more: str) -> list[str]:
    return ["--images", str(images), "--labels", str(images / "train.csv"), "--out", str(out), *OPTIONS, *more]


@pytest.fixture(scope="module")
def reference(images: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The cache of a run without workers (every stage in the main process, batch by batch)."""
    out = tmp_path_factory.mktemp("reference") / "cells.h5"
    assert segment_command.main(argv(images, out)) == 0
    with CellCache(out) as cache:
        assert cache.num_images == 4 and len(cache) >= 30  # real cells, not empty masks
        assert dict(zip(cache.skipped.image_id, cache.skipped.reason, strict=True)) == REASONS
    return out


def test_workers_make_the_same_cache_and_the_summary_says_so(images: Path, reference: Path, tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    capsys.readouterr()
    out = tmp_path / "cells.h5"
    assert segment_command.main(argv(images, out, "--postprocess-workers", "2", "--network-batch-size", "2")) == 0
    assert_same_cache(out, reference)
    printed = capsys.readouterr().out
    assert "  post-processing: 2 worker processes\n  network passes: at most 2 fields each\n" in printed
    assert "segmented now: 4; skipped now: 3" in printed


def test_failing_network_passes_are_redone_one_by_one_with_the_same_cache(
        images: Path, reference: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        caplog: pytest.LogCaptureFixture) -> None:
    """Every pass of more than one field fails: each stream ends at its first pass, the batches it held are
    segmented field by field, and a new stream takes the rest."""
    real = cellpose_segmenter.CellposeNetRunner.run_scaled
    passes: list[int] = []

    def failing(runner, scaled):
        passes.append(len(scaled))
        if len(scaled) > 1:
            raise RuntimeError("simulated out of memory")
        return real(runner, scaled)

    monkeypatch.setattr(cellpose_segmenter.CellposeNetRunner, "run_scaled", failing)
    args = segment_command.build_parser().parse_args(argv(images, tmp_path / "cells.h5"))
    with CellposeSegmenter(CellposeSettings(), postprocess_workers=1) as segmenter, \
            caplog.at_level(logging.INFO, logger="segmentation.segment_to_cache"):
        summary = segment_folder(segment_command.segment_job(args), segmenter)
    assert summary.skipped == REASONS and summary.images_done == 4
    assert_same_cache(tmp_path / "cells.h5", reference)
    assert [r.message for r in caplog.records if "stream failed" in r.message] == [
        "the segmentation stream failed (RuntimeError: simulated out of memory); segmenting the 2 batch(es) in flight "
        "one by one"]
    assert passes == [2] + [1] * 10  # the first pass, then the nuclei and cells of each of 5 fields on its own


@pytest.mark.slow
def test_a_worker_process_killed_mid_run_loses_nothing(images: Path, reference: Path, tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch,
                                                      caplog: pytest.LogCaptureFixture) -> None:
    """A worker killed (as by the OS when memory runs out) after the first field is written: the batches in flight
    are segmented one by one on new workers, and the cache is the same."""
    import segmentation.segment_to_cache as module

    real = module._store_image
    killed: list[int] = []

    def store_then_kill(*args, **kwargs):
        stored = real(*args, **kwargs)
        if not killed:
            killed.append(segmenter.start_workers()[0])
            os.kill(killed[0], signal.SIGKILL)
            time.sleep(1)  # the pool notices before the next submit or result
        return stored

    monkeypatch.setattr(module, "_store_image", store_then_kill)
    args = segment_command.build_parser().parse_args(argv(images, tmp_path / "cells.h5", "--batch-size", "1"))
    with CellposeSegmenter(CellposeSettings(), postprocess_workers=2) as segmenter, \
            caplog.at_level(logging.INFO, logger="segmentation.segment_to_cache"):
        summary = segment_folder(segment_command.segment_job(args), segmenter)
        assert killed and killed[0] not in segmenter.start_workers()  # new workers took over
    assert summary.skipped == REASONS and summary.images_done == 4
    failures = [r.message for r in caplog.records if "stream failed" in r.message]
    assert len(failures) == 1 and failures[0].startswith("the segmentation stream failed (BrokenProcessPool: ")
    assert_same_cache(tmp_path / "cells.h5", reference)


@pytest.mark.parametrize(("more", "message"), [
    (["--segmenter", "watershed", "--postprocess-workers", "2"],
     "--postprocess-workers is for --segmenter cellpose (its network passes and their post-processing); "
     "--segmenter watershed has neither"),
    (["--segmenter", "masks", "--postprocess-workers", "1", "--network-batch-size", "4"],
     "--postprocess-workers and --network-batch-size are for --segmenter cellpose (its network passes and their "
     "post-processing); --segmenter masks has neither"),
    (["--postprocess-workers", "2", "--scheduler", "local:2"],
     "--postprocess-workers does not go with --scheduler: Dask's worker processes cannot start processes of their "
     "own; spread the CPU work over more Dask workers instead (--network-batch-size is fine)"),
])
def test_options_that_do_not_fit_are_one_line_errors(more: list[str], message: str, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    assert segment_command.main(["--images", str(tmp_path), "--out", str(tmp_path / "c.h5"), *more]) == 2
    assert capsys.readouterr().err == f"error: {message}\n"
    assert not (tmp_path / "c.h5").exists()
