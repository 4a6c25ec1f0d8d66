"""Shared pytest set-up: --runslow / --rungpu switches and the real-data location."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO_ROOT = Path(__file__).resolve().parents[1]


def real_data_dir() -> Path:
    """Where the real HPA fixtures live: $HPA_REAL_DATA, else ../shared/data beside the project."""
    env = os.environ.get("HPA_REAL_DATA")
    return Path(env) if env else REPO_ROOT.parent / "shared" / "data"


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption("--runslow", action="store_true", default=False, help="also run tests marked slow")
    parser.addoption("--rungpu", action="store_true", default=False, help="also run tests marked gpu")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    skip_slow = pytest.mark.skip(reason="slow test: run with --runslow")
    skip_gpu = pytest.mark.skip(reason="GPU test: run with --rungpu on a machine with CUDA")
    data = real_data_dir()
    skip_real = pytest.mark.skip(reason=f"real HPA data not found at {data} (set HPA_REAL_DATA to point elsewhere)")
    for item in items:  # markers, not keywords: keywords also hold the path's folder names (a checkout in .../gpu/)
        if item.get_closest_marker("slow") is not None and not config.getoption("--runslow"):
            item.add_marker(skip_slow)
        if item.get_closest_marker("gpu") is not None and not config.getoption("--rungpu"):
            item.add_marker(skip_gpu)
        if item.get_closest_marker("real") is not None and not data.is_dir():
            item.add_marker(skip_real)


@pytest.fixture(scope="session")
def real_data() -> Path:
    """The real HPA data folder (tests using it must be marked `real`)."""
    return real_data_dir()


@pytest.fixture(scope="module")
def one_torch_thread() -> Iterator[None]:
    """Run a module's tests on one torch thread: on two busy cores one thread is several times faster than two
    fighting for them, and results are bitwise reproducible only at a fixed thread count."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture()
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any attempt to download a model or open a connection fails the test loudly."""
    import socket

    import cellpose.utils

    def refuse(*args: object, **kwargs: object) -> None:
        raise AssertionError(f"network access attempted: {args!r}")

    monkeypatch.setattr(cellpose.utils, "download_url_to_file", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
