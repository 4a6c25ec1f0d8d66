"""Training with torch DDP on the CPU (gloo): `torchrun scripts/train.py` with 2 processes finishes, its folder loads
and predicts, a run killed after a checkpoint resumes from it; 1-process torchrun equals plain train.py bit for bit;
the sharded sampler, the gathered validation, DDP with every head, and the loaders' worker processes."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from mil_fixtures import green_marker_bags, write_bag_cache, write_cell_labels
from safetensors.torch import load_file
from torch.utils.data import DataLoader, RandomSampler

from hpa_cells.checkpoints import read_checkpoint_state
from hpa_cells_cli import train as train_command
from mil.bags import BagDataset, collate_bags
from mil.config import DenseConfig, MILConfig
from mil.inference import predict_cache
from mil.model_folder import load_model
from mil.pooling import list_heads
from mil.training import TrainConfig, train_model
from mil.training.config import TrainingError
from mil.training.distributed import torchrun_ranks
from mil.training.loaders import EpochSampler, epoch_order, make_loader
from mil.training.validation import ValidationShare, combine_shares

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[1]
TINY_ARGS = ["--encoder", "test_resnet", "--input-size", "16", "--batch-size", "4", "--max-cells", "4", "--lr",
             "3e-3", "--seed", "3", "--device", "cpu", "--val-fraction", "0.25", "--patience", "20"]
TINY_MODEL = MILConfig(encoder="test_resnet", head="class_gated_attention", input_size=16, dropout=0.0)
FAST = TrainConfig(epochs=1, batch_size=4, max_cells=4, learning_rate=3e-3, seed=3, device="cpu", val_fraction=0.25)


@pytest.fixture(scope="module")
def square_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """24 images of 3-6 cells (32 px crops) with the green-marker classes 0 and 1."""
    return write_bag_cache(tmp_path_factory.mktemp("squares") / "cells.h5", green_marker_bags(24, seed=2))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _env() -> dict[str, str]:
    """One thread per process (as torchrun sets for several), the repository importable."""
    return {**os.environ, "OMP_NUM_THREADS": "1",
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}


def _torchrun(processes: int, args: list[str]) -> list[str]:
    return [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes), "--master-addr",
            "127.0.0.1", "--master-port", str(_free_port()), str(REPO / "scripts" / "train.py"), *args]


def _history(folder: Path) -> list[dict]:
    metrics = json.loads((folder / "metrics.json").read_text())
    return [{k: v for k, v in row.items() if k != "seconds"} for row in metrics["history"]]


def _weights_equal(a: Path, b: Path) -> bool:
    wa, wb = load_file(str(a / "weights.safetensors")), load_file(str(b / "weights.safetensors"))
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


# ----- the sampler, the gathered validation, the environment ---------------------------------------------------


def test_epoch_order_is_the_order_the_loop_always_drew() -> None:
    """The same permutation as a DataLoader over RandomSampler with a generator seeded seed + epoch (what the loop
    used before it sharded): a seed gives the same run, and older checkpoints resume to the same weights."""
    for seed, epoch, size in ((0, 0, 10), (3, 2, 17), (7, 5, 1)):
        generator = torch.Generator().manual_seed(seed + epoch)
        loader = DataLoader(list(range(size)), batch_size=1, sampler=RandomSampler(range(size), generator=generator),
                            generator=generator)
        assert [int(x) for x in loader] == epoch_order(size, seed, epoch)


def test_training_shards_cover_the_epoch_and_are_equal_in_length() -> None:
    size, seed = 11, 4
    for epoch in (0, 1):
        order = epoch_order(size, seed, epoch)
        shards = []
        for rank in range(3):
            sampler = EpochSampler(size, seed, shuffle=True, rank=rank, world_size=3)
            sampler.set_epoch(epoch)
            shards.append(sampler.positions())
            assert [key for key in sampler] == [(epoch, p) for p in shards[-1]] and len(sampler) == 4
        assert [shards[r][i] for i in range(4) for r in range(3)] == order + order[:1]  # padded by the start
    one = EpochSampler(size, seed, shuffle=True)
    one.set_epoch(1)
    assert one.positions() == epoch_order(size, seed, 1) != epoch_order(size, seed, 0)


def test_validation_shares_are_unpadded_and_gather_back_in_order() -> None:
    """Validation positions r, r + W, ...; the gathered predictions equal one process's exactly."""
    size, k = 7, 3
    probs = np.random.default_rng(0).random((size, k)).astype(np.float32)
    targets = (probs > 0.5).astype(np.float32)
    shares = []
    for rank in range(2):
        positions = EpochSampler(size, rank=rank, world_size=2).positions()
        assert positions == list(range(rank, size, 2))
        shares.append(ValidationShare(positions, probs[positions], targets[positions], [float(rank + 1)]))
    p, t, loss = combine_shares(shares)
    assert np.array_equal(p, probs) and np.array_equal(t, targets)
    assert loss == pytest.approx(3.0 / (size * k))
    empty = ValidationShare([], np.zeros((0, 0), np.float32), np.zeros((0, 0), np.float32), [])
    p1, t1, _ = combine_shares([ValidationShare(list(range(size)), probs, targets, [3.0]), empty])
    assert np.array_equal(p1, probs)  # a rank with no validation bag (fewer bags than ranks)


def test_torchrun_environment_is_read_and_a_partial_one_refused() -> None:
    assert torchrun_ranks({}) is None
    assert torchrun_ranks({"RANK": "1", "WORLD_SIZE": "2", "LOCAL_RANK": "1"}) == (1, 2, 1)
    with pytest.raises(TrainingError, match="RANK set but not WORLD_SIZE, LOCAL_RANK: start several training "
                                            "processes with torchrun"):
        torchrun_ranks({"RANK": "0"})
    with pytest.raises(TrainingError, match="need 0 <= RANK < WORLD_SIZE"):
        torchrun_ranks({"RANK": "2", "WORLD_SIZE": "2", "LOCAL_RANK": "0"})


def test_ranks_that_read_other_caches_or_see_other_checkpoints_are_stopped(monkeypatch: pytest.MonkeyPatch) -> None:
    """What every rank found, gathered (here faked for a second rank): a mismatch stops all of them, saying why."""
    from mil.training import distributed

    ranks = distributed.Ranks(0, 2, 0, "gloo")
    monkeypatch.setattr(distributed, "gather_objects", lambda value, _: [value, (None, value[1])])
    with pytest.raises(TrainingError, match=r"the ranks see different checkpoints in runs/x \(rank 0: epoch 3, rank 1: "
                                            r"no checkpoint\): every process must see the same --out folder"):
        distributed.check_same_start(3, "a" * 64, ranks, "runs/x")
    monkeypatch.setattr(distributed, "gather_objects", lambda value, _: [value, (value[0], "b" * 64)])
    with pytest.raises(TrainingError, match=r"the ranks read different cell caches \(rank 0: aaaaaaaaaaaa\.\.\., rank 1: "
                                            r"bbbbbbbbbbbb\.\.\.\)"):
        distributed.check_same_start(None, "a" * 64, ranks, "runs/x")
    monkeypatch.setattr(distributed, "gather_objects", lambda value, _: [value, value])
    distributed.check_same_start(2, "a" * 64, ranks, "runs/x")  # the same: no error


class _HandleRecordingBags(BagDataset):
    """Bags that append (pid, the pid the cache's HDF5 handle was opened in) per item to $DDP_TEST_HANDLES."""

    def __getitem__(self, item: int):
        bag = super().__getitem__(item)
        with open(os.environ["DDP_TEST_HANDLES"], "a") as handle:
            handle.write(f"{os.getpid()} {self.cache._file_pid} {self.epoch}\n")
        return bag


def test_loader_workers_persist_read_through_their_own_handles_and_follow_the_epoch(
        square_cache: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    log = tmp_path / "handles.txt"
    monkeypatch.setenv("DDP_TEST_HANDLES", str(log))
    dataset = _HandleRecordingBags(square_cache, range(12), max_cells=2, train=True, seed=1)
    dataset.cache.cells_of(0)  # the main process opens its own handle ...
    sampler = EpochSampler(len(dataset), seed=1, shuffle=True)
    loader = make_loader(dataset, collate_bags, 4, sampler, 2, torch.device("cpu"))
    assert dataset.cache._file is None  # ... and closes it before any worker is forked
    for epoch in (0, 1):
        sampler.set_epoch(epoch)
        assert sum(batch.batch.valid.shape[0] for batch in loader) == 12
    rows = [line.split() for line in log.read_text().splitlines()]
    workers = {pid for pid, _, _ in rows}
    assert len(workers) == 2 and str(os.getpid()) not in workers and loader._iterator is not None  # persistent
    assert all(pid == opened for pid, opened, _ in rows)
    assert sorted(epoch for _, _, epoch in rows) == ["0"] * 12 + ["1"] * 12  # each epoch's draws, not a stale copy


# ----- DDP in this process (a group of one): every head, per-cell labels, a frozen encoder, the dense family ------


@pytest.fixture()
def group_of_one(monkeypatch: pytest.MonkeyPatch):
    """This process as the only rank of a gloo process group (the DDP code paths, no second process)."""
    import torch.distributed as dist

    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(_free_port()))
    monkeypatch.setenv("LOCAL_RANK", "0")
    dist.init_process_group("gloo", rank=0, world_size=1)
    yield
    dist.destroy_process_group()



def test_every_head_trains_under_ddp_with_cell_labels_and_a_frozen_encoder(group_of_one: None,
                                                                         tmp_path: Path) -> None:
    """DDP's reducer needs a gradient for every parameter it was made with: per-cell losses never reach the
    attention heads' image pooling, and a frozen encoder starts to train after its epochs; both must run (image
    losses reach every parameter of every head)."""
    bags = green_marker_bags(12, seed=2)
    cache = write_bag_cache(tmp_path / "cells.h5", bags)
    config = replace(FAST, cell_labels=str(write_cell_labels(bags, tmp_path / "cells.csv")))
    for head in list_heads():
        metrics = train_model(cache, tmp_path / head, replace(TINY_MODEL, head=head), config)
        assert metrics["trained_on"]["distributed_backend"] == "gloo" and metrics["epochs_run"] == 1
    frozen = train_model(cache, tmp_path / "frozen", TINY_MODEL, replace(FAST, epochs=2, freeze_encoder_epochs=1))
    assert frozen["epochs_run"] == 2
    dense = train_model(cache, tmp_path / "dense", DenseConfig(encoder="tu-test_resnet", input_size=64),
                        replace(FAST, epochs=2, freeze_encoder_epochs=1))
    assert dense["epochs_run"] == 2 and np.isfinite(dense["val_loss"])


def test_a_run_resumes_on_another_number_of_processes_saying_so(square_cache: Path, tmp_path: Path,
                                                                 monkeypatch: pytest.MonkeyPatch,
                                                                 caplog: pytest.LogCaptureFixture) -> None:
    """The checkpoint records the number of processes; resuming with another is allowed (a job restarted on fewer
    GPUs) and logged, since the global batch changes with it."""
    from mil.training import distributed, loop

    out = tmp_path / "run"
    with monkeypatch.context() as patch:  # rank 0 of 2 without a second process: shards, no collectives
        patch.setattr(loop, "current_ranks", lambda: distributed.Ranks(0, 2, 0, None))
        train_model(square_cache, out, TINY_MODEL, FAST)
    assert read_checkpoint_state(out / "checkpoint")["world_size"] == 2
    with caplog.at_level("WARNING", logger="mil.training.loop"):
        metrics = train_model(square_cache, out, TINY_MODEL, replace(FAST, epochs=2))
    assert [row["epoch"] for row in metrics["history"]] == [1, 2] and metrics["trained_on"]["world_size"] == 1
    assert (f"{out / 'checkpoint'} was trained by 2 process(es) and resumes with 1: --batch-size 4 is per process, "
            "so the global batch changes from 8 to 4 bags per step") in caplog.text
    assert read_checkpoint_state(out / "checkpoint")["world_size"] == 1


# ----- torchrun ------------------------------------------------------------------------------------------------


def _kill_after_first_checkpoint(command: list[str], checkpoint: Path, timeout: float = 240.0) -> None:
    """Start `command` (torchrun), wait for the first checkpoint, then SIGKILL its worker processes (torchrun
    then stops: a crash, not a clean exit)."""
    process = subprocess.Popen(command, env=_env(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        deadline = time.time() + timeout
        while not (checkpoint / "checkpoint.manifest.json").is_file():
            assert process.poll() is None, process.stdout.read()[-3000:]
            assert time.time() < deadline, "no checkpoint appeared"
            time.sleep(0.02)
        children = Path(f"/proc/{process.pid}/task/{process.pid}/children").read_text().split()
        for pid in children:
            os.kill(int(pid), signal.SIGKILL)
        process.wait(timeout=60)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode != 0


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="finds torchrun's workers through /proc")
def test_torchrun_two_processes_train_resume_after_a_kill_and_predict(square_cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "ddp"
    args = ["--cache", str(square_cache), "--out", str(out), *TINY_ARGS, "--epochs", "6"]
    _kill_after_first_checkpoint(_torchrun(2, args), out / "checkpoint")
    state = read_checkpoint_state(out / "checkpoint")
    assert 1 <= state["epoch"] < 6 and state["world_size"] == 2
    assert not (out / "weights.safetensors").exists()
    done = subprocess.run(_torchrun(2, args), env=_env(), capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    log = done.stdout + done.stderr
    assert f"resuming from epoch {state['epoch']}" in log
    assert log.count("Model folder:") == 1  # rank 0 alone reports
    assert "2 processes (torch DDP), global batch 8 bags" in log
    metrics = json.loads((out / "metrics.json").read_text())
    assert [row["epoch"] for row in metrics["history"]] == [1, 2, 3, 4, 5, 6]
    assert metrics["history"][: state["epoch"]] == state["history"]  # the killed run's epochs, kept
    assert metrics["trained_on"]["world_size"] == 2 and metrics["n_val_images"] + metrics["n_train_images"] == 24
    assert sorted(metrics["val_image_ids"] + metrics["train_image_ids"]) == [f"sq{i:03d}" for i in range(24)]
    loaded = load_model(out)
    assert loaded.training["trained_on"]["distributed_backend"] == "gloo"
    predictions = predict_cache(loaded, square_cache, show_progress=False)
    assert predictions.image_probs.shape == (24, loaded.config.num_classes)
    assert np.isfinite(predictions.image_probs).all()
    assert ((predictions.image_probs >= 0) & (predictions.image_probs <= 1)).all()
    assert len(predictions.cells) == sum(len(bag.crops) for bag in green_marker_bags(24, seed=2))


@pytest.mark.slow  # 20-35 s on 2 shared cores; keeps this file within about 90 s of `make test`
def test_torchrun_with_one_process_equals_plain_train_py(square_cache: Path, tmp_path: Path) -> None:
    """One rank under torchrun runs the DDP paths (process group, DDP wrapper, sharded sampler, gathered
    validation) and gives bit-identical weights and the same history as the plain command."""
    args = ["--cache", str(square_cache), *TINY_ARGS, "--epochs", "2"]
    ddp = subprocess.run(_torchrun(1, [*args, "--out", str(tmp_path / "ddp")]), env=_env(), capture_output=True,
                         text=True, timeout=300)
    assert ddp.returncode == 0, ddp.stdout[-3000:] + ddp.stderr[-3000:]
    assert train_command.main([*args, "--out", str(tmp_path / "plain")]) == 0  # here, on one thread as well
    assert _weights_equal(tmp_path / "ddp", tmp_path / "plain")
    assert _history(tmp_path / "ddp") == _history(tmp_path / "plain")
    backends = [json.loads((tmp_path / name / "metrics.json").read_text())["trained_on"]["distributed_backend"]
                for name in ("ddp", "plain")]
    assert backends == ["gloo", None]
