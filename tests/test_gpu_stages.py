"""Each stage on a CUDA GPU against the same stage on the CPU: segmentation (masks), prediction (probabilities, in
bf16 where the GPU has it and in float32), evaluation (the true-mask pass). Marked `gpu`: skipped unless pytest runs
with --rungpu (benchmarks/gpu/run_gpu_check.sh does, on the GPU machine).

HPA_GPU_TEST_DEVICE names the device compared with the CPU (default: cuda); set to cpu, the tests check themselves
on a machine without a GPU (the GPU check's --quick mode does this).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from hpa_cells.classes import CLASS_NAMES
from hpa_cells.crops import CropConfig
from hpa_cells.instance_metrics import match_instances
from hpa_cells.synthetic.dataset import SyntheticConfig, SyntheticGenerator, SyntheticSample, write_dataset

pytestmark = pytest.mark.gpu
DEVICE = os.environ.get("HPA_GPU_TEST_DEVICE", "cuda")
BF16_TOLERANCE = 1e-2
"""Largest difference of a probability in bf16 on the GPU from float32 on the CPU."""
FP32_TOLERANCE = 5e-3
"""The same in float32 on the GPU: cuDNN's convolutions use TF32 by default, whose rounding is about 1e-3."""


@pytest.fixture(scope="module")
def samples() -> list[SyntheticSample]:
    """Four synthetic 512 px fields with their true masks (the bundled models' working size)."""
    generator = SyntheticGenerator(SyntheticConfig(seed=4242, size=512))
    return [generator.generate(i) for i in range(4)]


def assert_instances_agree(cpu: np.ndarray, gpu: np.ndarray, what: str) -> None:
    """The same objects: counts within 3% (at least 1), 95% of the CPU's objects matched at IoU >= 0.5, median
    IoU of the matches >= 0.95."""
    matches = match_instances(cpu, gpu, 0.5)
    assert abs(matches.n_true - matches.n_pred) <= max(1, round(0.03 * matches.n_true)), what
    assert len(matches) >= 0.95 * matches.n_true, f"{what}: {len(matches)} of {matches.n_true} matched"
    assert float(np.median(matches.iou)) >= 0.95, f"{what}: median IoU {np.median(matches.iou):.3f}"


def test_segmentation_on_the_gpu_matches_the_cpu(samples: list[SyntheticSample]) -> None:
    from segmentation.cellpose_segmenter import CellposeSegmenter, CellposeSettings

    images = [s.image for s in samples]
    on_cpu = CellposeSegmenter(CellposeSettings(device="cpu")).segment_batch(images)
    with CellposeSegmenter(CellposeSettings(device=DEVICE), postprocess_workers=2, network_batch_size=2) as gpu:
        on_gpu = gpu.segment_batch(images)
        streamed = [r for batch in gpu.segment_stream([images[:2], images[2:]]) for r in batch]
        assert next(gpu._runner("cells", 512).net.parameters()).device.type == torch.device(DEVICE).type
    for index, (c, g, s) in enumerate(zip(on_cpu, on_gpu, streamed, strict=True)):
        assert c.n_cells >= 10, f"field {index}: the CPU found only {c.n_cells} cells"
        assert_instances_agree(c.cells, g.cells, f"field {index} cells")
        assert_instances_agree(c.nuclei, g.nuclei, f"field {index} nuclei")
        assert_instances_agree(g.cells, s.cells, f"field {index} cells, streamed")


def _bags(samples: list[SyntheticSample]):
    from mil.inference import bags_from_masks

    fields = [(s.image_id, s.image, s.cell_mask.astype(np.int32), s.nucleus_mask.astype(np.int32)) for s in samples]
    return bags_from_masks(fields, CropConfig())


def test_prediction_on_the_gpu_matches_the_cpu(samples: list[SyntheticSample]) -> None:
    from hpa_cells_cli.predict import BUNDLED_MODEL_DIR
    from mil.inference import predict_bags
    from mil.model_folder import load_model

    on_cpu = predict_bags(load_model(BUNDLED_MODEL_DIR), _bags(samples), device="cpu")
    loaded = load_model(BUNDLED_MODEL_DIR, device=DEVICE)
    default = predict_bags(loaded, _bags(samples), device=DEVICE)  # bf16 where the GPU has it
    fp32 = predict_bags(loaded, _bags(samples), device=DEVICE, bf16=False)
    classes = list(CLASS_NAMES)
    assert len(on_cpu.cells) >= 40
    for name, run, tolerance in (("default", default, BF16_TOLERANCE), ("float32", fp32, FP32_TOLERANCE)):
        assert run.image_ids == on_cpu.image_ids
        np.testing.assert_allclose(run.image_probs, on_cpu.image_probs, atol=tolerance, err_msg=name)
        np.testing.assert_allclose(run.cells[classes].to_numpy(), on_cpu.cells[classes].to_numpy(),
                                   atol=tolerance, err_msg=name)
        np.testing.assert_allclose(run.cells["attention"].to_numpy(), on_cpu.cells["attention"].to_numpy(),
                                   atol=tolerance, err_msg=name)


def test_evaluation_on_the_gpu_matches_the_cpu(tmp_path: Path) -> None:
    import hpa_cells_cli.evaluate as evaluate_command
    import hpa_cells_cli.predict as predict_command
    from segmentation.mask_folder import MaskFolderSegmenter
    from segmentation.segment_to_cache import SegmentJob, segment_folder

    folder = tmp_path / "synthetic"
    write_dataset(folder, 4, SyntheticConfig(seed=77, size=512))
    cache = tmp_path / "cells.h5"
    segment_folder(SegmentJob(folder, cache, labels_path=folder / "train.csv", working_size=512),
                   MaskFolderSegmenter(folder))
    assert predict_command.main(["--cache", str(cache), "--out", str(tmp_path / "pred"), "--device", "cpu"]) == 0
    scores = {}
    for device in ("cpu", DEVICE):
        out = tmp_path / f"scores_{device}.json"
        assert evaluate_command.main(["--pred", str(tmp_path / "pred"), "--labels", str(folder / "train.csv"),
                                      "--truth", str(folder), "--device", device, "--json-out", str(out)]) == 0
        scores[device] = json.loads(out.read_text())
    assert scores[DEVICE]["device"]["device"].startswith(torch.device(DEVICE).type)
    cpu, gpu = scores["cpu"]["cell_map_true_masks"], scores[DEVICE]["cell_map_true_masks"]
    assert cpu is not None and abs(cpu - gpu) <= 0.02, (cpu, gpu)
    assert scores["cpu"]["image_macro_f1"] == scores[DEVICE]["image_macro_f1"]  # model-free: the same folder
