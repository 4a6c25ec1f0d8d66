"""`hpa_cells.devices`: the one meaning of --device."""

import pytest
import torch

from hpa_cells.devices import DeviceError, describe_device, device_line, resolve_device, supports_bf16

needs_no_gpu = pytest.mark.skipif(torch.cuda.is_available(), reason="checks the behaviour without a visible GPU")


@needs_no_gpu
def test_auto_is_cpu_without_a_gpu():
    assert resolve_device("auto") == "cpu"
    assert resolve_device(None) == "cpu"
    assert supports_bf16("cpu") is False


@needs_no_gpu
def test_cuda_without_a_gpu_names_the_reason():
    with pytest.raises(DeviceError, match=r"--device cuda: torch sees no CUDA GPU on this machine .*use --device cpu"):
        resolve_device("cuda")


def test_an_unknown_device_is_refused_with_the_choices():
    with pytest.raises(DeviceError, match=r"--device 'gpu0' is not a torch device \(use auto"):
        resolve_device("gpu0")


def test_cpu_summary_records_threads():
    info = describe_device("cpu")
    assert info["device"] == "cpu" and info["cpu_threads"] == torch.get_num_threads()
    assert device_line("cpu") == f"device: cpu ({torch.get_num_threads()} threads)"


@pytest.mark.gpu
def test_auto_is_cuda_with_a_gpu():
    assert resolve_device("auto") == "cuda"
    assert describe_device("cuda")["gpu"]
