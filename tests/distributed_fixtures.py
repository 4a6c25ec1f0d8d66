"""Helpers for tests/test_distributed_segment.py that Dask workers import by name (the workers start with the
test process's sys.path, so this module, beside the tests, is importable there): a segmenter whose worker process
dies mid-run, and the cell-for-cell comparison of two caches."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

import h5py
import numpy as np

from hpa_cells.cache import CellCache
from segmentation.watershed import WatershedSegmenter

TIMESTAMPS = ("created", "modified")
"""The root attributes a merged cache may legitimately differ in from a single-process one."""


class DyingWatershed(WatershedSegmenter):
    """The watershed segmenter (same name and provenance) whose process exits at once, like a killed worker, on
    its `(fields_before + 1)`-th call, unless `marker` exists (it creates `marker` first: one death per test)."""

    def __init__(self, fields_before: int, marker: Path) -> None:
        super().__init__()
        self.fields_before, self.marker, self.calls = fields_before, Path(marker), 0

    def segment_batch(self, images: Sequence[np.ndarray]) -> list:
        self.calls += 1
        if self.calls > self.fields_before and not self.marker.exists():
            self.marker.write_text(str(os.getpid()))
            os._exit(17)
        return super().segment_batch(images)


def datasets_of(f: h5py.File) -> list[str]:
    names: list[str] = []
    f.visititems(lambda name, item: names.append(name) if isinstance(item, h5py.Dataset) else None)
    return sorted(names)


def assert_same_cache(got: Path, want: Path) -> None:
    """Every dataset of the two caches has the same dtype, shape and values (cells, crops, masks, full masks and
    images, per-cell and per-image tables, labels, skipped table), and every root attribute but the time stamps is
    the same (provenance, crop size, schema, QC flags, package version)."""
    with h5py.File(got, "r") as g, h5py.File(want, "r") as w:
        assert datasets_of(g) == datasets_of(w)
        for name in datasets_of(w):
            a, b = g[name], w[name]
            assert (a.dtype, a.shape) == (b.dtype, b.shape), name
            if a.dtype.kind == "O":
                assert list(a.asstr()[()]) == list(b.asstr()[()]), name
            else:
                assert np.array_equal(a[()], b[()]), name
        assert {k: v for k, v in g.attrs.items() if k not in TIMESTAMPS} == {
            k: v for k, v in w.attrs.items() if k not in TIMESTAMPS}
    with CellCache(got) as cache:
        cache.verify()
