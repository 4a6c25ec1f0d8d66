"""The Cellpose segmenter's CPU stages in worker processes (`segmentation.cellpose_pipeline`): the same masks as in
one process, network batches of `network_batch_size` fields, the overlapped `segment_stream`, failures per field.

The bundled models on synthetic 256 px fields, so the masks hold real cells (a comparison of empty masks would
prove nothing).
"""

from __future__ import annotations

import os
import pickle
from collections.abc import Iterator

import numpy as np
import pytest

import segmentation.cellpose_segmenter as cellpose_segmenter
from hpa_cells.synthetic.dataset import SyntheticConfig, SyntheticGenerator
from segmentation.cellpose_pipeline import finish_field, prepare_field
from segmentation.cellpose_segmenter import CellposeSegmenter, CellposeSettings
from segmentation.preprocessing import FieldImageError
from segmentation.result import SegmentationResult

pytestmark = pytest.mark.usefixtures("one_torch_thread")


@pytest.fixture(scope="module")
def fields() -> list[np.ndarray]:
    """Five `4,H,W` synthetic fields: four 256x256 and one 256x200 (a second shape group)."""
    generator = SyntheticGenerator(SyntheticConfig(seed=31, size=256))
    images = [generator.generate(i).image for i in range(5)]
    images[3] = np.ascontiguousarray(images[3][:, :, :200])
    return images


@pytest.fixture(scope="module")
def with_workers() -> Iterator[CellposeSegmenter]:
    """Two worker processes and network passes of two fields (started once for the module)."""
    with CellposeSegmenter(postprocess_workers=2, network_batch_size=2) as segmenter:
        yield segmenter


def assert_same(a: list[SegmentationResult], b: list[SegmentationResult]) -> None:
    assert len(a) == len(b)
    for x, y in zip(a, b, strict=True):
        np.testing.assert_array_equal(x.cells, y.cells)
        np.testing.assert_array_equal(x.nuclei, y.nuclei)
        np.testing.assert_array_equal(x.qc.flags, y.qc.flags)
        np.testing.assert_array_equal(x.qc.n_nuclei, y.qc.n_nuclei)


def test_workers_give_the_same_masks_as_one_process(fields: list[np.ndarray], with_workers: CellposeSegmenter) -> None:
    alone = CellposeSegmenter().segment_batch(fields)
    pooled = with_workers.segment_batch(fields)
    assert [r.cells.shape for r in pooled] == [im.shape[1:] for im in fields]
    assert all(r.n_cells >= 3 for r in alone)  # real cells, not empty masks
    assert_same(alone, pooled)
    assert with_workers._pool is not None  # the work really went to the worker processes


def test_a_worker_gives_the_same_masks_with_flows_and_diameter_refinement(fields: list[np.ndarray]) -> None:
    """The other paths: Cellpose's flow following for the cells, and nuclei (and cells) segmented in this process
    at their measured diameters before the rest goes to the worker."""
    settings = CellposeSettings(cell_assembly="flows", diameter_tolerance=1.1)
    alone = CellposeSegmenter(settings).segment_batch(fields[2:4])
    with CellposeSegmenter(settings, postprocess_workers=1) as segmenter:
        assert_same(alone, segmenter.segment_batch(fields[2:4]))
    assert segmenter._pool is None  # closed on leaving the block


def test_network_batches_hold_at_most_network_batch_size_fields(
        fields: list[np.ndarray], monkeypatch: pytest.MonkeyPatch) -> None:
    passes: list[tuple[str, int]] = []
    real = cellpose_segmenter.CellposeNetRunner.run_scaled

    def recording(runner, scaled):
        passes.append((runner.spec.name.split("_")[-1], len(scaled)))
        return real(runner, scaled)

    monkeypatch.setattr(cellpose_segmenter.CellposeNetRunner, "run_scaled", recording)
    segmenter = CellposeSegmenter(network_batch_size=2)
    chunked = segmenter.segment_batch(fields)
    # the 256x256 group (4 fields): 2 + 2; the 256x200 group: 1; nuclei then cells each time
    assert passes == [("nuclei", 2), ("cells", 2), ("nuclei", 2), ("cells", 2), ("nuclei", 1), ("cells", 1)]
    passes.clear()
    assert_same(CellposeSegmenter().segment_batch(fields), chunked)  # one pass per group: the same masks
    assert passes == [("nuclei", 4), ("cells", 4), ("nuclei", 1), ("cells", 1)]


def test_stream_gives_each_batch_its_segment_batch_results(fields: list[np.ndarray],
                                                           with_workers: CellposeSegmenter) -> None:
    batches = [fields[:2], fields[2:3], fields[3:]]
    streamed = list(with_workers.segment_stream(iter(batches)))
    assert [len(b) for b in streamed] == [2, 1, 2]
    for batch, results in zip(batches, streamed, strict=True):
        assert_same(with_workers.segment_batch(batch), results)
    assert list(with_workers.segment_stream([])) == []


def test_a_bad_field_fails_alone_in_the_stream_and_the_whole_batch_otherwise(
        fields: list[np.ndarray], with_workers: CellposeSegmenter) -> None:
    bad = fields[0][:3]
    (first, second), = with_workers.segment_stream([[bad, fields[1]]], return_exceptions=True)
    assert isinstance(first, FieldImageError)
    assert str(first).startswith("image 0 of the batch: expected shape 4,H,W")
    assert isinstance(second, SegmentationResult) and second.n_cells >= 3
    with pytest.raises(FieldImageError, match="^image 0 of the batch"):
        list(with_workers.segment_stream([[bad, fields[1]]]))
    with pytest.raises(FieldImageError, match="^image 1 of the batch: expected dtype uint8 or uint16"):
        with_workers.segment_batch([fields[0], fields[1].astype(np.float32)])


def test_the_stages_run_on_their_own_and_a_failing_one_raises_its_error_from_the_worker(
        fields: list[np.ndarray], with_workers: CellposeSegmenter) -> None:
    stages = with_workers._stages(256)
    nuclei, cells = prepare_field(fields[0], stages)
    # nuclei: 40 px objects at 256 px are 20 px -> rescale 17/20 = 0.85 -> 218 px; cells: 30/40 -> 192 px
    assert nuclei.shape == (2, 218, 218) and cells.shape == (2, 192, 192) and nuclei.dtype == np.float32
    future = with_workers._call(finish_field, fields[0], np.zeros((7, 7), np.int32), np.zeros((7, 7), np.int32),
                                stages)
    with pytest.raises(ValueError, match=r"^the nucleus mask \(7, 7\) must match the field's \(256, 256\)$"):
        future.result()


def test_settings_are_checked_and_the_segmenter_pickles_without_its_workers(
        fields: list[np.ndarray], with_workers: CellposeSegmenter) -> None:
    with pytest.raises(ValueError, match=r"^postprocess_workers must be a whole number >= 0, got -1$"):
        CellposeSegmenter(postprocess_workers=-1)
    with pytest.raises(ValueError, match=r"^network_batch_size must be None or a whole number >= 1, got 0$"):
        CellposeSegmenter(network_batch_size=0)
    pids = with_workers.start_workers()  # the pool is running, every worker has loaded the flow dynamics
    assert 1 <= len(pids) <= 2 and os.getpid() not in pids
    assert CellposeSegmenter().start_workers() == []
    copy = pickle.loads(pickle.dumps(with_workers))
    assert copy._pool is None and copy._runners == {} and copy.postprocess_workers == 2
    assert copy.provenance() == with_workers.provenance()  # the workers are no setting: caches stay resumable
    assert "postprocess_workers" not in str(copy.provenance())
    copy.close()


def test_a_worker_that_died_while_idle_is_replaced_at_the_next_field(fields: list[np.ndarray]) -> None:
    """A pool whose worker was killed between batches is broken at the next submit: new workers take the field."""
    import signal
    import time

    with CellposeSegmenter(postprocess_workers=1) as segmenter:
        (dead,) = segmenter.start_workers()
        os.kill(dead, signal.SIGKILL)
        for _ in range(100):  # the pool notices the death in its management thread
            if segmenter._pool._broken:
                break
            time.sleep(0.05)
        assert segmenter._pool._broken
        assert_same(segmenter.segment_batch(fields[:2]), CellposeSegmenter().segment_batch(fields[:2]))
        assert segmenter.start_workers() != [dead]

