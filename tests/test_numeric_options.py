"""Every numeric option of predict.py, make_maps.py, make_synthetic.py and train_segmenter.py is checked by
argparse before the command starts: one line naming the option, what it must be and the value, exit code 2
(segment.py's and train.py's are in test_segment_reliability.py and test_training_reliability.py; evaluate.py
has no numeric option)."""

from __future__ import annotations

import importlib
from pathlib import Path

import pytest

WHOLE = "must be a whole number >= {}, got '{}'"
CASES = [
    ("predict", ["--batch-size", "0"], WHOLE.format(1, 0)),
    ("predict", ["--batch-size", "-3"], WHOLE.format(1, -3)),
    ("predict", ["--batch-size", "two"], WHOLE.format(1, "two")),
    ("maps", ["--limit", "0"], WHOLE.format(1, 0)),
    ("maps", ["--limit", "-1"], WHOLE.format(1, -1)),
    ("make_synthetic", ["--n", "0"], WHOLE.format(1, 0)),
    ("make_synthetic", ["--seed", "-1"], WHOLE.format(0, -1)),
    ("make_synthetic", ["--size", "63"], WHOLE.format(64, 63)),
    ("make_synthetic", ["--workers", "0"], WHOLE.format(1, 0)),
    ("make_synthetic", ["--min-prevalence", "2"], "must be a number > 0 and <= 0.0357143, got '2'"),
    ("make_synthetic", ["--min-prevalence", "0"], "must be a number > 0 and <= 0.0357143, got '0'"),
    ("make_synthetic", ["--min-prevalence", "nan"], "must be a number > 0 and <= 0.0357143, got 'nan'"),
    ("train_segmenter", ["--size", "0"], WHOLE.format(64, 0)),
    ("train_segmenter", ["--synthetic", "0"], WHOLE.format(1, 0)),
    ("train_segmenter", ["--synthetic-seed", "-1"], WHOLE.format(0, -1)),
    ("train_segmenter", ["--pretrain-steps", "0"], WHOLE.format(1, 0)),
    ("train_segmenter", ["--finetune-steps", "-1"], WHOLE.format(1, -1)),
    ("train_segmenter", ["--real-weight", "0"], "must be a finite number > 0, got '0'"),
    ("train_segmenter", ["--real-weight", "inf"], "must be a finite number > 0, got 'inf'"),
    ("train_segmenter", ["--crop-size", "2"], WHOLE.format(16, 2)),
    ("train_segmenter", ["--crop-size", "100"], "must be a multiple of 16 px, got '100'"),
    ("train_segmenter", ["--nbase", "2", "0"], WHOLE.format(1, 0)),
    ("train_segmenter", ["--seed", "-1"], WHOLE.format(0, -1)),
    ("train_segmenter", ["--threads", "-1"], WHOLE.format(0, -1)),
]


@pytest.mark.parametrize(("command", "argv", "message"), CASES, ids=[f"{c}{a[0]}={a[-1]}" for c, a, _ in CASES])
def test_every_numeric_option_is_checked(command: str, argv: list[str], message: str,
                                         capsys: pytest.CaptureFixture[str]) -> None:
    module = importlib.import_module(f"hpa_cells_cli.{command}")
    with pytest.raises(SystemExit) as stop:
        module.main(argv, prog=command)
    assert stop.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"{command}: error: argument {argv[0]}: {message}"


def test_train_segmenter_refuses_an_nbase_without_the_input_channels(capsys: pytest.CaptureFixture[str]) -> None:
    from hpa_cells_cli import train_segmenter

    assert train_segmenter.main(["--nbase", "3", "16"], prog="train_segmenter") == 2
    assert capsys.readouterr().err == ("error: --nbase must start with 2 (the two input channels) and name at least "
                                       "one layer, got [3, 16]\n")


def test_train_segmenter_without_the_real_fields_is_one_line(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    from hpa_cells_cli import train_segmenter

    data = tmp_path / "data"
    assert train_segmenter.main(["--data", str(data), "--work-dir", str(tmp_path / "work")],
                                prog="train_segmenter") == 2
    subset = data / "hpa2021_subset"
    assert capsys.readouterr().err == (f"error: real reference fields not found: expected {subset / 'images'} and "
                                       f"{subset / 'masks'} (pass the folder holding it with --data)\n")
