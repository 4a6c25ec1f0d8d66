"""The training loop's GPU path against its CPU path (the `gpu` tests: run with --rungpu on a machine with CUDA):
bf16 autocast, channels_last, pinned memory with persistent workers and asynchronous copies give the losses and the
model of an fp32 CPU run from the same weights within a tolerance; torchrun on the GPU(s) trains with NCCL. Here
too (no GPU needed): what --precision means on each device, and the refusals."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from mil_fixtures import green_marker_bags, write_bag_cache

from mil.bags import BagDataset, collate_bags
from mil.config import MILConfig
from mil.model import MILModel
from mil.model_folder import load_model
from mil.training import TrainConfig, train_mil
from mil.training.config import TrainingError
from mil.training.precision import autocast, grad_scaler, resolve_precision, to_device, use_channels_last

needs_gpu = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU visible to torch")

REPO = Path(__file__).resolve().parents[1]
MODEL = MILConfig(encoder="resnet10t", head="class_gated_attention", input_size=32, dropout=0.0)
CONFIG = TrainConfig(epochs=2, batch_size=4, max_cells=6, learning_rate=1e-3, seed=3, val_fraction=0.25, patience=10)
TOLERANCE = {"bf16": (0.05, 0.1), "fp32": (0.01, 0.03)}
"""precision -> (relative difference of each epoch's losses, absolute difference of image probabilities) allowed
against the CPU: bf16 keeps 8 bits of mantissa; "fp32" convolutions on the GPU use TF32 (cuDNN's default)."""


@pytest.fixture(scope="module")
def cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_bag_cache(tmp_path_factory.mktemp("gpu") / "cells.h5", green_marker_bags(24, seed=2))


@pytest.fixture(scope="module")
def cpu_run(cache: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("cpu") / "model"
    return out, train_mil(cache, out, MODEL, replace(CONFIG, device="cpu"))


def _image_probs(folder: Path, cache: Path) -> np.ndarray:
    """The model's image probabilities `N,K` over every image of the cache, on the CPU in fp32."""
    dataset = BagDataset(cache)
    collated = collate_bags([dataset[i] for i in range(len(dataset))])
    with torch.no_grad():
        return torch.sigmoid(load_model(folder).model(collated.batch).image_logits).numpy()


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("precision", ["bf16", "fp32"])
def test_cuda_training_follows_the_cpu_from_the_same_weights(precision: str, cache: Path, cpu_run: tuple[Path, dict],
                                                             tmp_path: Path) -> None:
    cpu_folder, cpu = cpu_run
    out = tmp_path / "cuda"
    gpu = train_mil(cache, out, MODEL, replace(CONFIG, device="cuda", precision=precision, num_workers=2))
    on = gpu["trained_on"]
    assert on["precision"] == precision and on["device"]["device"].startswith("cuda") and "gpu" in on["device"]
    loss_tolerance, prob_tolerance = TOLERANCE[precision]
    for a, b in zip(cpu["history"], gpu["history"], strict=True):
        for key in ("train_loss", "val_loss"):
            assert abs(a[key] - b[key]) <= loss_tolerance * abs(a[key]), (key, a[key], b[key])
    difference = np.abs(_image_probs(cpu_folder, cache) - _image_probs(out, cache))
    assert difference.max() <= prob_tolerance, difference.max()


@pytest.mark.gpu
@needs_gpu
def test_channels_last_on_cuda_keeps_the_outputs_and_is_left_off_on_the_cpu() -> None:
    torch.manual_seed(0)
    model = MILModel(MODEL).eval()
    assert not use_channels_last(model, model.encoder, torch.device("cpu"))
    crops, masks = torch.rand(5, 4, 24, 24), (torch.rand(5, 24, 24) > 0.5).float()
    with torch.no_grad():
        reference = model.embed_cells(crops, masks)
        model.cuda()
        assert use_channels_last(model, model.encoder, torch.device("cuda"))
        weight = next(p for p in model.encoder.parameters() if p.ndim == 4)
        assert weight.is_contiguous(memory_format=torch.channels_last)
        embedded = model.embed_cells(crops.cuda(), masks.cuda()).cpu()
    assert torch.allclose(embedded, reference, atol=2e-2, rtol=2e-2)


@pytest.mark.gpu
@needs_gpu
def test_torchrun_on_gpus_trains_with_nccl(cache: Path, tmp_path: Path) -> None:
    processes = min(2, torch.cuda.device_count())
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    out = tmp_path / "ddp"
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", str(processes), "--master-addr",
               "127.0.0.1", "--master-port", str(port), str(REPO / "scripts" / "train.py"), "--cache", str(cache),
               "--out", str(out), "--encoder", "resnet10t", "--input-size", "32", "--epochs", "2", "--batch-size", "4",
               "--workers", "2", "--device", "cuda", "--val-fraction", "0.25"]
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    on = json.loads((out / "metrics.json").read_text())["trained_on"]
    assert on["distributed_backend"] == "nccl" and on["world_size"] == processes
    assert on["device"]["device"] == "cuda:0"
    assert load_model(out).thresholds.shape == (MODEL.num_classes,)


# ----- no GPU needed --------------------------------------------------------------------------------------------


def test_precision_on_the_cpu_is_fp32_and_gpu_precisions_are_refused_there() -> None:
    cpu = torch.device("cpu")
    assert resolve_precision("auto", cpu) == resolve_precision("fp32", cpu) == "fp32"
    for option in ("bf16", "fp16"):
        with pytest.raises(TrainingError, match=f"--precision {option} needs a CUDA GPU, and this run is on cpu; use "
                                                "--precision fp32 or auto"):
            resolve_precision(option, cpu)
    with pytest.raises(TrainingError, match="--precision 'fp8': use one of auto, fp32, bf16, fp16"):
        resolve_precision("fp8", cpu)
    assert not grad_scaler("fp32").is_enabled() and not grad_scaler("bf16").is_enabled()
    with autocast(cpu, "fp32"):
        assert not torch.is_autocast_enabled("cpu")


def test_a_collated_batch_moves_as_a_whole(cache: Path) -> None:
    dataset = BagDataset(cache)
    collated = collate_bags([dataset[i] for i in range(3)])
    moved = to_device(collated, torch.device("cpu"))
    assert type(moved) is type(collated) and type(moved.batch) is type(collated.batch)
    assert torch.equal(moved.batch.crops, collated.batch.crops) and moved.cell_labels is None


def test_train_py_refuses_bf16_on_the_cpu_in_one_line(cache: Path, tmp_path: Path,
                                                     capsys: pytest.CaptureFixture[str]) -> None:
    from hpa_cells_cli import train as train_command

    argv = ["--cache", str(cache), "--out", str(tmp_path / "out"), "--encoder", "test_resnet", "--input-size", "16",
            "--epochs", "1", "--device", "cpu", "--precision", "bf16"]
    assert train_command.main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == "error: --precision bf16 needs a CUDA GPU, and this run is on cpu; use --precision fp32 or auto"
    assert not any("Traceback" in line for line in err)
