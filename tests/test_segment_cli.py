"""`hpa-cells segment` (`scripts/segment.py`, code in hpa_cells_cli/segment.py): instant --help, a watershed
run end to end, Cellpose with model files, and the one-line errors (missing or unreadable model, --out missing)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

import hpa_cells_cli.segment as segment_command
import segmentation.cellpose_models as cellpose_models
from hpa_cells.cache import CellCache
from hpa_cells.synthetic.dataset import SyntheticConfig, write_dataset

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "scripts" / "segment.py"
HEAVY = ("torch", "cellpose", "cv2", "h5py", "numpy", "hpa_cells", "segmentation", "mil")


@pytest.fixture(scope="module")
def synthetic_images(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("cli") / "images"
    write_dataset(folder, 3, SyntheticConfig(seed=8, size=256))
    return folder


def imported_modules(importtime_stderr: str) -> set[str]:
    """The top-level names of the modules a `python -X importtime` run imported, from its stderr."""
    names = set()
    for line in importtime_stderr.splitlines():
        if line.startswith("import time:") and "|" in line:
            names.add(line.rsplit("|", 1)[1].strip().split(".")[0])
    return names


def run_python(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    """`python -X importtime ARGS` with this checkout first on the path (so its hpa_cells_cli is the one run)."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    return subprocess.run([sys.executable, "-X", "importtime", *args], capture_output=True, text=True, timeout=60,
                          cwd=cwd, env=env)


def test_help_is_instant_and_imports_nothing_heavy(tmp_path: Path) -> None:
    done = run_python([str(SCRIPT), "--help"], tmp_path)  # exactly the documented `python scripts/segment.py --help`
    assert done.returncode == 0, done.stderr
    assert "hpa_cells_cli" in imported_modules(done.stderr)  # the importtime trace is read correctly
    assert sorted(set(HEAVY) & imported_modules(done.stderr)) == []
    assert done.stdout.startswith("usage: segment.py ")
    assert "--segmenter {cellpose,watershed,masks,whole-field}" in done.stdout
    assert "(default: cellpose)" in done.stdout and "--masks DIR" in done.stdout
    assert "--working-size auto|N" in done.stdout and "(default: auto)" in done.stdout


def test_watershed_end_to_end_prints_the_summary(
    synthetic_images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out, masks = tmp_path / "cells.h5", tmp_path / "masks"
    argv = ["--images", str(synthetic_images), "--labels", str(synthetic_images / "train.csv"), "--out", str(out),
            "--segmenter", "watershed", "--size", "256", "--crop-size", "64", "--export-masks", str(masks)]
    assert segment_command.main(argv) == 0
    printed = capsys.readouterr().out.splitlines()
    assert f"Segmented {synthetic_images} with watershed -> {out}" in printed
    assert "  images found: 3; already in the cache: 0; segmented now: 3; skipped now: 0" in printed
    assert any(line.startswith("  cells kept: ") for line in printed)
    assert any(line.startswith("  time: ") and "images/s" in line for line in printed)
    with CellCache(out) as cache:
        assert cache.num_images == 3 and cache.crop_size == 64 and cache.has_labels.all()
    assert len(list(masks.glob("*_cells.png"))) == 3

    assert segment_command.main(argv) == 0
    assert "  images found: 3; already in the cache: 3; segmented now: 0; skipped now: 0" in capsys.readouterr().out


def test_cellpose_with_model_files(synthetic_images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import torch
    from cellpose.resnet_torch import CPnet

    paths = {}
    for kind, diam_mean in (("cells", 30.0), ("nuclei", 17.0)):
        torch.manual_seed(len(kind))
        net = CPnet([2, 8, 16, 32, 32], 3, sz=3, mkldnn=False, max_pool=True, diam_mean=diam_mean)
        paths[kind] = cellpose_models.save_bundled_format(net, tmp_path / f"{kind}.safetensors", {"kind": kind})
    images = Path(shutil.copytree(synthetic_images, tmp_path / "two"))
    for channel_file in images.glob("synth-s8-000002_*.png"):
        channel_file.unlink()
    out = tmp_path / "cells.h5"
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        code = segment_command.main(["--images", str(images), "--out", str(out), "--size", "128",
                                     "--model", str(paths["cells"]), "--nucleus-model", str(paths["nuclei"]),
                                     "--diameter-tolerance", "0"])
    finally:
        torch.set_num_threads(threads)
    assert code == 0
    printed = capsys.readouterr().out
    assert f"Segmented {images} with cellpose -> {out}" in printed
    assert "  images found: 2; already in the cache: 0; " in printed
    with CellCache(out) as cache:
        provenance = cache.provenance
        assert cache.num_images + len(cache.skipped) == 2
    assert provenance["segmenter"] == "cellpose"
    assert provenance["model_sha256"] == cellpose_models.sha256_of_file(paths["cells"])
    assert provenance["parameters"]["nucleus_model"]["path"] == str(paths["nuclei"])
    assert provenance["parameters"]["working_size"] == 128
    assert provenance["parameters"]["settings"]["diameter_tolerance"] is None  # 0 on the command line = one pass
    json.dumps(provenance["parameters"])
    assert segment_command.main(["--images", str(images), "--out", str(out), "--diameter-tolerance", "0.9"]) == 2
    assert capsys.readouterr().err == "error: --diameter-tolerance must be 0 (off) or > 1, got 0.9\n"


def test_missing_bundled_model_is_one_line_and_exit_2(
    synthetic_images: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cellpose_models, "BUNDLED_MODEL_DIR", tmp_path / "no-models")
    out = tmp_path / "cells.h5"
    assert segment_command.main(["--images", str(synthetic_images), "--out", str(out)]) == 2
    captured = capsys.readouterr()
    expected = tmp_path / "no-models" / "hpa_cells_cells.safetensors"
    assert captured.err.startswith(f"error: the bundled cells model is missing: looked for {expected}. ")
    assert captured.err.count("\n") == 1 and "Traceback" not in captured.err
    assert not out.exists()


def test_unreadable_model_file_is_one_line_and_exit_2(
    synthetic_images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "model.pth"
    bad.write_bytes(b"\x00" * 64)
    assert segment_command.main(["--images", str(synthetic_images), "--out", str(tmp_path / "c.h5"), "--model", str(bad)]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"error: {bad} could not be read as a Cellpose model file: ")
    assert err.count("\n") == 1


def test_out_is_required_with_images(synthetic_images: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert segment_command.main(["--images", str(synthetic_images), "--segmenter", "watershed"]) == 2
    assert capsys.readouterr().err == "error: --out is required with --images\n"


def test_bad_paths_and_a_mismatched_cache_are_one_line_errors(
    synthetic_images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    script = segment_command
    out = tmp_path / "cells.h5"
    missing = tmp_path / "nowhere"
    assert script.main(["--images", str(missing), "--out", str(out), "--segmenter", "watershed"]) == 2
    assert capsys.readouterr().err == f"error: image folder {missing} does not exist or is not a directory\n"
    assert script.main(["--images", str(synthetic_images), "--labels", str(missing / "l.csv"), "--out", str(out),
                        "--segmenter", "watershed"]) == 2
    assert capsys.readouterr().err == f"error: {missing / 'l.csv'}: label file not found\n"
    assert not out.exists()
    # A cache made with other settings (here the working size) is refused, not silently mixed.
    assert script.main(["--images", str(synthetic_images), "--out", str(out), "--segmenter", "watershed",
                        "--size", "256"]) == 0
    capsys.readouterr()
    assert script.main(["--images", str(synthetic_images), "--out", str(out), "--segmenter", "watershed",
                        "--size", "200"]) == 2
    assert capsys.readouterr().err == (f"error: {out} was written with other parameters: working_size: 256 in the "
                                       "file, 200 now; use another cache file or the same segmentation settings\n")


def test_bad_choice_exits_2_via_argparse(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        segment_command.main(["--segmenter", "stardist"])
    assert stop.value.code == 2
    assert "invalid choice: 'stardist'" in capsys.readouterr().err


@pytest.mark.slow
def test_no_arguments_runs_the_embedded_synthetic_default(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    script = segment_command
    monkeypatch.setattr(script, "DEFAULT_DIR", tmp_path / "demo_output")
    assert script.main(["--segmenter", "watershed"]) == 0
    printed = capsys.readouterr().out
    assert f"using the embedded default, a synthetic set in {tmp_path / 'demo_output' / 'synthetic'}" in printed
    assert "  images found: 24; already in the cache: 0; segmented now: 24; skipped now: 0" in printed
    with CellCache(tmp_path / "demo_output" / "cells.h5") as cache:
        assert cache.num_images == 24 and cache.has_labels.all()


def test_masks_segmenter_caches_the_given_cells_and_skips_an_image_without_masks(
    synthetic_images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import numpy as np

    from hpa_cells.images import read_label_mask

    images = tmp_path / "images"
    shutil.copytree(synthetic_images, images)
    ids = sorted(p.name[: -len("_cells.png")] for p in images.glob("*_cells.png"))
    (images / f"{ids[-1]}_nuclei.png").unlink()
    out = tmp_path / "cells.h5"
    argv = ["--images", str(images), "--labels", str(images / "train.csv"), "--out", str(out),
            "--segmenter", "masks", "--size", "256", "--crop-size", "64"]
    assert segment_command.main(argv) == 0
    printed = capsys.readouterr().out
    assert f"with mask_folder -> {out}" in printed
    assert "segmented now: 2; skipped now: 1" in printed
    with CellCache(out) as cache:
        assert cache.image_ids == ids[:2]
        for image_id in ids[:2]:
            cells, _ = cache.full_masks(image_id)
            true = read_label_mask(images / f"{image_id}_cells.png")
            np.testing.assert_array_equal(cells, true)  # the given ids, unchanged
            table = cache.cell_table()
            assert sorted(table.loc[table.image_id == image_id, "cell_id"]) == sorted(np.unique(true[true > 0]))
        skipped = cache.skipped
    assert skipped["image_id"].tolist() == [ids[-1]]
    assert skipped["reason"].iloc[0] == (f"no nuclei mask for image {ids[-1]!r}: looked for {ids[-1]}_nuclei.png, "
                                         f"{ids[-1]}_nuclei.tif, {ids[-1]}_nuclei.tiff in {images}")


def test_masks_segmenter_needs_an_existing_folder(synthetic_images: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["--images", str(synthetic_images), "--out", str(tmp_path / "c.h5"), "--segmenter", "masks",
            "--masks", str(tmp_path / "nowhere")]
    assert segment_command.main(argv) == 2
    assert capsys.readouterr().err == f"error: mask folder {tmp_path / 'nowhere'} does not exist\n"


def test_whole_field_segmenter_caches_one_instance_per_image(
    synthetic_images: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:

    out = tmp_path / "fields.h5"
    argv = ["--images", str(synthetic_images), "--labels", str(synthetic_images / "train.csv"), "--out", str(out),
            "--segmenter", "whole-field", "--size", "256", "--crop-size", "64"]
    assert segment_command.main(argv) == 0
    assert f"with whole_field -> {out}" in capsys.readouterr().out
    with CellCache(out) as cache:
        assert cache.num_images == 3 and cache.has_labels.all()
        table = cache.cell_table()
        assert table["cell_id"].tolist() == [1, 1, 1]
        assert (table["area"] == 256 * 256).all()
        assert (table["qc_flags"] == 1).all()  # touches the border, nothing else
        for image_id in cache.image_ids:
            cells, nuclei = cache.full_masks(image_id)
            assert (cells == 1).all() and (nuclei == 1).all()
            crops, masks = cache.cells_of(image_id)
            assert crops.shape == (1, 4, 64, 64) and masks.mean() > 0.95  # the field fills the crop (1 px margin)


def write_plain_field(folder: Path, sample_id: str, side: int) -> None:
    """A `side` px field whose channels are smooth ramps (quick to write and read at any size)."""
    import numpy as np

    from hpa_cells.images import write_sample

    ramp = np.linspace(0, 255, side).astype(np.uint8)
    write_sample(folder, sample_id, np.stack([np.add.outer(ramp, ramp // (i + 2)) for i in range(4)]))


def test_auto_working_size_per_field_is_printed_and_recorded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from hpa_cells.images import AUTO_WORKING_SIZE_RULE

    images = tmp_path / "images"
    for sample_id, side in (("kaggle2018", 512), ("hpa2021_a", 2048), ("hpa2021_b", 3072)):
        write_plain_field(images, sample_id, side)
    out = tmp_path / "fields.h5"
    argv = ["--images", str(images), "--out", str(out), "--segmenter", "whole-field", "--crop-size", "32"]
    assert segment_command.main(argv) == 0  # --working-size auto is the default
    printed = capsys.readouterr().out.splitlines()
    assert printed[0] == f"Working size: auto ({AUTO_WORKING_SIZE_RULE})"
    assert ("  working size: 512x512 -> 512x512 (1 image), 2048x2048 -> 512x512 (1 image), "
            "3072x3072 -> 768x768 (1 image)") in printed
    with CellCache(out) as cache:
        table = cache.image_table().set_index("image_id")
        parameters = cache.provenance["parameters"]
    assert table.loc[["hpa2021_a", "hpa2021_b", "kaggle2018"], "working_h"].tolist() == [512, 768, 512]
    assert table.loc[["hpa2021_a", "hpa2021_b", "kaggle2018"], "original_h"].tolist() == [2048, 3072, 512]
    assert parameters["working_size"] == "auto" and parameters["working_size_rule"] == AUTO_WORKING_SIZE_RULE
    # a fixed size is recorded as the number, with no rule, and every field gets it
    fixed = tmp_path / "fixed.h5"
    assert segment_command.main([*argv[:3], str(fixed), *argv[4:], "--working-size", "256"]) == 0
    assert "  working size: 512x512 -> 256x256 (1 image), 2048x2048 -> 256x256 (1 image), " \
           "3072x3072 -> 256x256 (1 image)" in capsys.readouterr().out.splitlines()
    with CellCache(fixed) as cache:
        assert cache.provenance["parameters"]["working_size"] == 256
        assert "working_size_rule" not in cache.provenance["parameters"]


def test_auto_working_size_fixes_the_cellpose_object_sizes(tmp_path: Path) -> None:
    from segmentation.cellpose_segmenter import CELL_DIAMETER_AT_512, NUCLEUS_DIAMETER_AT_512

    parser = segment_command.build_parser()
    auto = segment_command.build_segmenter(parser.parse_args(["--images", str(tmp_path), "--out", "c.h5"]))
    assert (auto.settings.cell_diameter, auto.settings.nucleus_diameter) == (CELL_DIAMETER_AT_512,
                                                                             NUCLEUS_DIAMETER_AT_512)
    fixed = segment_command.build_segmenter(parser.parse_args(["--images", str(tmp_path), "--out", "c.h5",
                                                               "--size", "1024"]))
    assert (fixed.settings.cell_diameter, fixed.settings.nucleus_diameter) == (None, None)  # scaled with 1024


@pytest.mark.parametrize("value", ["0", "big", "-5"])
def test_bad_working_size_exits_2_via_argparse(value: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        segment_command.main(["--images", "x", "--out", "y.h5", "--working-size", value])
    assert stop.value.code == 2
    assert (f"argument --working-size/--size: expected 'auto' or a positive number of px, got {value!r}"
            in capsys.readouterr().err)


@pytest.mark.real
def test_real_2021_fields_segment_at_their_auto_working_size(real_data: Path, tmp_path: Path,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    folder = real_data / "hpa2021_subset" / "images"
    images = tmp_path / "two"
    images.mkdir()
    for sample_id in ("a7faf0b4-bb99-11e8-b2b9-ac1f6b6435d0", "b6a469d8-bbad-11e8-b2ba-ac1f6b6435d0"):
        for channel_file in folder.glob(f"{sample_id}_*.png"):  # links, not copies: nothing enters the repository
            (images / channel_file.name).symlink_to(channel_file)
    out = tmp_path / "fields.h5"
    assert segment_command.main(["--images", str(images), "--out", str(out), "--segmenter", "whole-field",
                                 "--crop-size", "32"]) == 0
    assert ("  working size: 2048x2048 -> 512x512 (1 image), 3072x3072 -> 768x768 (1 image)"
            in capsys.readouterr().out.splitlines())
    with CellCache(out) as cache:
        assert sorted(cache.image_table()["working_h"].tolist()) == [512, 768]
