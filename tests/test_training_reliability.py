"""Issue 16, training: no silent overwrite, settings compared before any weights load, checkpoints that survive a
kill between any two file writes, one-line errors for every bad input, and `--labels` overriding the cache's."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from mil_fixtures import green_marker_bags, random_bags, write_bag_cache
from safetensors.torch import load_file

from hpa_cells_cli import train as train_command
from mil.config import MILConfig
from mil.model_folder import ModelFolderError, load_model
from mil.training import TrainConfig, train_mil
from mil.training.config import TrainingError

pytestmark = pytest.mark.usefixtures("one_torch_thread")

REPO = Path(__file__).resolve().parents[1]
TINY_MODEL = MILConfig(encoder="test_resnet", head="class_gated_attention", input_size=16, dropout=0.0)
FAST = TrainConfig(epochs=2, batch_size=4, max_cells=4, learning_rate=3e-3, seed=3, device="cpu", val_fraction=0.25)
TINY_ARGS = ["--encoder", "test_resnet", "--input-size", "16", "--epochs", "2", "--batch-size", "4", "--max-cells",
             "4", "--lr", "3e-3", "--seed", "3", "--device", "cpu", "--val-fraction", "0.25"]
WRITES_PER_SAVE = 5  # tensors and state staged, the manifest (the commit), the two renames


@pytest.fixture(scope="module")
def square_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_bag_cache(tmp_path_factory.mktemp("squares") / "cells.h5", green_marker_bags(16, seed=0))


@pytest.fixture(scope="module")
def reference(tmp_path_factory: pytest.TempPathFactory, square_cache: Path) -> Path:
    out = tmp_path_factory.mktemp("runs") / "reference"
    train_mil(square_cache, out, TINY_MODEL, FAST)
    return out


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "weights.safetensors"))


def _bit_equal(a: Path, b: Path) -> bool:
    wa, wb = _weights(a), _weights(b)
    return wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)


def _error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The one line a refused command printed (no traceback)."""
    err = capsys.readouterr().err.strip().splitlines()
    assert err and not any("Traceback" in line for line in err)
    return err[-1]


# ----- fault injection: a kill between any two file writes of a checkpoint --------------------------------------


class Killed(BaseException):
    """Stands in for the process being killed (not an Exception: nothing may catch it)."""


@pytest.mark.parametrize("kill_after", range(2 * WRITES_PER_SAVE + 1))
def test_a_kill_at_any_checkpoint_write_resumes_to_the_same_weights(kill_after: int, square_cache: Path,
                                                                    reference: Path, tmp_path: Path,
                                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    """Every os.replace into the checkpoint folder of a 2-epoch run (10), killed after the k-th (k = 0: before
    the first); the same call then finishes with weights bit-equal to an uninterrupted run's."""
    out = tmp_path / "run"
    real_replace = os.replace
    done = []

    def replace_then_die(source: object, target: object) -> None:
        inside = Path(target).parent == out / "checkpoint"
        if inside and kill_after == 0:
            raise Killed
        real_replace(source, target)
        if inside:
            done.append(Path(target).name)
            if len(done) == kill_after:
                raise Killed

    monkeypatch.setattr(os, "replace", replace_then_die)
    with pytest.raises(Killed):
        train_mil(square_cache, out, TINY_MODEL, FAST)
    monkeypatch.setattr(os, "replace", real_replace)
    assert len(done) == kill_after and not (out / "weights.safetensors").exists()
    train_mil(square_cache, out, TINY_MODEL, FAST)
    assert _bit_equal(reference, out)


KILL_SCRIPT = """
import os, sys
import torch
torch.set_num_threads(1)
from pathlib import Path
from hpa_cells_cli import train
kill_after, out = int(sys.argv[1]), Path(sys.argv[2])
real_replace, done = os.replace, []
def replace_then_exit(source, target):
    real_replace(source, target)
    if Path(target).parent == out / "checkpoint":
        done.append(target)
        if len(done) == kill_after:
            os._exit(9)
os.replace = replace_then_exit
sys.exit(train.main(sys.argv[3:]))
"""


@pytest.mark.parametrize("kill_after", [2, 8])
def test_train_py_killed_mid_checkpoint_resumes_to_the_same_weights(kill_after: int, square_cache: Path,
                                                                    tmp_path: Path) -> None:
    """A real kill (os._exit, partial files left behind) of train.py after the k-th checkpoint write: epoch 1
    before its commit (2) and epoch 2 between its two renames (8); rerunning the same command equals an
    uninterrupted run."""
    args = ["--cache", str(square_cache), *TINY_ARGS]
    assert train_command.main([*args, "--out", str(tmp_path / "uninterrupted")]) == 0
    out = tmp_path / "killed"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    killed = subprocess.run([sys.executable, "-c", KILL_SCRIPT, str(kill_after), str(out), *args, "--out", str(out)],
                            env=env, capture_output=True, text=True, timeout=300)
    assert killed.returncode == 9, killed.stderr[-2000:]
    assert not (out / "weights.safetensors").exists()
    assert train_command.main([*args, "--out", str(out)]) == 0
    assert _bit_equal(tmp_path / "uninterrupted", out)


# ----- no silent overwrite; settings compared before any weights load --------------------------------------------


def test_a_finished_model_is_refused_unless_overwrite(square_cache: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "done"
    args = ["--cache", str(square_cache), "--out", str(out), *TINY_ARGS]
    assert train_command.main(args) == 0
    before = (out / "weights.safetensors").read_bytes()
    assert train_command.main(args) == 2
    assert _error_line(capsys) == (f"error: {out} holds a finished model (trained for 2 epochs); rerun with more "
                                   "--epochs to continue it, pass --overwrite to train it again from scratch, or "
                                   "choose another --out")
    shutil.rmtree(out / "checkpoint")  # the README calls this safe: it must not make the folder writable
    assert train_command.main(args) == 2
    assert _error_line(capsys) == (f"error: {out} holds a finished model (weights.safetensors) and no checkpoint "
                                   "to continue it from; pass --overwrite to train it again from scratch, or "
                                   "choose another --out")
    assert (out / "weights.safetensors").read_bytes() == before
    assert train_command.main([*args, "--overwrite", "--epochs", "1"]) == 0
    assert json.loads((out / "metrics.json").read_text())["epochs_run"] == 1


def test_another_head_is_named_before_any_weights_load(square_cache: Path, tmp_path: Path,
                                                       monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "run"
    train_mil(square_cache, out, TINY_MODEL, replace(FAST, epochs=1))
    from mil.training import loop

    def no_building(*args: object) -> None:
        raise AssertionError("the model was built before the settings were compared")

    monkeypatch.setattr(loop, "_prepare", no_building)
    with pytest.raises(TrainingError) as info:
        train_mil(square_cache, out, replace(TINY_MODEL, head="instance"), FAST)
    assert str(info.value) == (
        f"{out / 'checkpoint'} was written by a run with other settings; resume with the same settings (only "
        "--epochs may change) or choose a new --out folder. Differences: head: 'class_gated_attention' in the "
        "folder, 'instance' now")


def test_only_the_cache_changed_says_so(square_cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train_mil(square_cache, out, TINY_MODEL, replace(FAST, epochs=1))
    other = write_bag_cache(tmp_path / "other.h5", green_marker_bags(16, seed=1))
    with pytest.raises(TrainingError, match=f"^{re.escape(f'{out}: the cache changed from {square_cache} to {other} since the run started (content sha256 ')}"
                                            r"[0-9a-f]{12}\.\.\. then, [0-9a-f]{12}\.\.\. now\); rerun on the same "
                                            "data to resume, or choose a new --out folder$"):
        train_mil(other, out, TINY_MODEL, FAST)
    moved = tmp_path / "moved.h5"
    shutil.copy(square_cache, moved)  # the same content elsewhere resumes
    assert train_mil(moved, out, TINY_MODEL, FAST)["epochs_run"] == 2


# ----- one-line errors -----------------------------------------------------------------------------------------


@pytest.mark.parametrize(("option", "value", "message"), [
    ("--batch-size", "0", "must be a positive integer, got 0"),
    ("--epochs", "-1", "must be a positive integer, got -1"),
    ("--max-cells", "x", "'x' is not an integer"),
    ("--input-size", "0", "must be a positive integer, got 0"),
    ("--dense-input-size", "0", "must be a positive integer, got 0"),
    ("--dense-window", "0", "must be a positive integer, got 0"),
    ("--dense-decoder-channels", "-64", "must be 0 or more, got -64"),
    ("--freeze-encoder-epochs", "-1", "must be 0 or more, got -1"),
    ("--lr", "0", "must be a positive number, got 0"),
    ("--lr", "nan", "must be a positive number, got nan"),
    ("--val-fraction", "1", "must be between 0 and 1 (exclusive), got 1"),
    ("--folds", "1", "must be 0 (one shuffled split) or at least 2 folds, got 1"),
    ("--fold", "-1", "must be 0 or more, got -1"),
    ("--patience", "0", "must be a positive integer, got 0"),
    ("--mosaic-bags", "-2", "must be 0 or more, got -2"),
    ("--seed", "-5", "must be 0 or more, got -5"),
    ("--workers", "-1", "must be 0 or more, got -1"),
])
def test_every_numeric_option_is_validated(option: str, value: str, message: str, tmp_path: Path,
                                           capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as info:
        train_command.main(["--cache", "c.h5", "--out", str(tmp_path / "o"), option, value], prog="train.py")
    assert info.value.code == 2
    assert capsys.readouterr().err.splitlines()[-1] == f"train.py: error: argument {option}: {message}"


def test_too_few_images_leave_no_folder_and_name_both_numbers(tmp_path: Path,
                                                             capsys: pytest.CaptureFixture[str]) -> None:
    one = write_bag_cache(tmp_path / "one.h5", random_bags(1, seed=1))
    six = write_bag_cache(tmp_path / "six.h5", random_bags(6, seed=1))
    out = tmp_path / "out"
    assert train_command.main(["--cache", str(one), "--out", str(out), *TINY_ARGS]) == 2
    assert _error_line(capsys) == (f"error: {one}: 1 labelled images; training needs labelled images (at least 2: "
                                   "one to train on, one to validate)")
    assert train_command.main(["--cache", str(six), "--out", str(out), *TINY_ARGS, "--folds", "10"]) == 2
    assert _error_line(capsys) == (f"error: {six}: 6 labelled images, fewer than the 10 folds asked for; 10 folds "
                                   "need at least 10 labelled images (lower --folds)")
    assert not out.exists()


def test_bad_encoder_names_and_a_cut_cache_are_one_line_errors(square_cache: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "out"
    assert train_command.main(["--cache", str(square_cache), "--out", str(out), "--encoder", "bogus"]) == 2
    line = _error_line(capsys)
    assert line.startswith("error: --encoder bogus: not a timm model name (e.g. resnet10t, resnet18")
    assert 'python -c "import timm; print(timm.list_models())" lists them all' in line
    assert train_command.main(["--cache", str(square_cache), "--out", str(out), "--encoder", "resnet81"]) == 2
    assert "close names: resnet18" in _error_line(capsys)
    assert train_command.main(["--cache", str(square_cache), "--out", str(out), "--family", "dense",
                               "--dense-encoder", "tu-bogus"]) == 2
    assert _error_line(capsys).startswith("error: --dense-encoder tu-bogus: 'bogus' is not a timm model name")
    cut = tmp_path / "cut.h5"
    cut.write_bytes(square_cache.read_bytes()[: square_cache.stat().st_size // 2])
    assert train_command.main(["--cache", str(cut), "--out", str(out), *TINY_ARGS]) == 2
    assert _error_line(capsys).startswith(f"error: cell cache {cut} cannot be opened as HDF5: ")
    assert not out.exists()


def _damaged_copies(reference: Path, tmp_path: Path) -> dict[str, tuple[Path, str]]:
    """Copies of a model folder, each with one damaged file, and the message loading it must give."""
    cases = {}
    for name in ("weights", "thresholds", "metrics", "config", "encoder"):
        folder = tmp_path / name
        shutil.copytree(reference, folder, ignore=shutil.ignore_patterns("checkpoint"))
        cases[name] = folder
    weights = cases["weights"] / "weights.safetensors"
    weights.write_bytes(weights.read_bytes()[:-100])
    thresholds = cases["thresholds"] / "thresholds.json"
    record = json.loads(thresholds.read_text())
    thresholds.write_text(json.dumps({**record, "thresholds": record["thresholds"][:27]}))
    (cases["metrics"] / "metrics.json").write_text("{\"best_epoch\": 2,")
    config = cases["config"] / "config.json"
    config.write_text(json.dumps({k: v for k, v in json.loads(config.read_text()).items() if k != "model"}))
    encoder = cases["encoder"] / "config.json"
    settings = json.loads(encoder.read_text())
    encoder.write_text(json.dumps({**settings, "model": {**settings["model"], "encoder": "resnet10x"}}))
    return {
        "weights": (cases["weights"], f"{weights}: not a readable safetensors file ("),
        "thresholds": (cases["thresholds"], f"{thresholds}: expected 28 thresholds, found 27"),
        "metrics": (cases["metrics"], f"{cases['metrics'] / 'metrics.json'}: invalid JSON ("),
        "config": (cases["config"], f"{config}: no 'model' section (the architecture: family, encoder, head, ...); "
                                    "the file is not one train.py wrote, or it was edited"),
        "encoder": (cases["encoder"], f"{encoder}: unknown timm encoder 'resnet10x'; see timm.list_models() for the "
                                      "available names (close names: resnet10t"),
    }


def test_a_damaged_model_folder_is_one_line_error(square_cache: Path, reference: Path, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    for name, (folder, message) in _damaged_copies(reference, tmp_path).items():
        with pytest.raises(ModelFolderError) as info:
            load_model(folder)
        assert str(info.value).startswith(message), name
        out = tmp_path / f"tuned_{name}"
        assert train_command.main(["--cache", str(square_cache), "--init", str(folder), "--out", str(out),
                                   "--epochs", "1", "--device", "cpu"]) == 2
        assert _error_line(capsys).startswith(f"error: --init {folder}: not a usable model folder: {message}"), name
        assert not out.exists()


# ----- --labels: the cache's labels overridden, the cache unchanged -----------------------------------------------


def test_labels_override_the_cache_without_rewriting_it(square_cache: Path, tmp_path: Path,
                                                        capsys: pytest.CaptureFixture[str]) -> None:
    from hpa_cells.cache import CellCache

    with CellCache(square_cache) as cache:
        ids = cache.image_ids
    labels = tmp_path / "fixed.csv"
    labels.write_text("Id,Target\n" + "".join(f"{i},{5 if n % 2 else 7}\n" for n, i in enumerate(ids[:10]))
                      + "not_in_cache,3\n")
    before = square_cache.read_bytes()
    out = tmp_path / "relabelled"
    assert train_command.main(["--cache", str(square_cache), "--out", str(out), *TINY_ARGS, "--epochs", "1",
                               "--labels", str(labels)]) == 0
    assert square_cache.read_bytes() == before
    training = json.loads((out / "config.json").read_text())["training"]
    import hashlib

    assert training["labels"] == str(labels)
    assert training["labels_sha256"] == hashlib.sha256(labels.read_bytes()).hexdigest()
    metrics = json.loads((out / "metrics.json").read_text())
    assert sorted(metrics["train_image_ids"] + metrics["val_image_ids"]) == sorted(ids[:10])  # the rest unlabelled
    per_class = metrics["val_per_class_f1"]
    assert [name for name, f1 in per_class.items() if f1 is not None] == [list(per_class)[5], list(per_class)[7]]
    labels.write_text(labels.read_text().replace(f"{ids[0]},7", f"{ids[0]},9"))  # corrected since: refused
    assert train_command.main(["--cache", str(square_cache), "--out", str(out), *TINY_ARGS,
                               "--labels", str(labels)]) == 2
    assert _error_line(capsys) == (f"error: {out}: the labels changed since the run started ({labels} then, "
                                   f"{labels} now, or the file's content); rerun on the same data to resume, or "
                                   "choose a new --out folder")
    nowhere = tmp_path / "none.csv"
    nowhere.write_text("Id,Target\nx1,0\nx2,1\n")
    assert train_command.main(["--cache", str(square_cache), "--out", str(tmp_path / "o2"), *TINY_ARGS,
                               "--labels", str(nowhere)]) == 2
    assert _error_line(capsys) == (f"error: --labels {nowhere}: none of its 2 image ids is in {square_cache} (e.g. "
                                   f"x1, x2; the cache has e.g. {', '.join(ids[:3])})")


def test_labels_with_mosaic_bags_is_refused_saying_what_to_do(square_cache: Path, tmp_path: Path,
                                                              capsys: pytest.CaptureFixture[str]) -> None:
    labels = tmp_path / "fixed.csv"
    labels.write_text("Id,Target\nx,1\n")
    out = tmp_path / "out"
    assert train_command.main(["--cache", str(square_cache), "--out", str(out), *TINY_ARGS, "--labels", str(labels),
                               "--mosaic-bags", "2"]) == 2
    message = ("error: --mosaic-bags and --mosaic-fraction cannot be combined with --labels yet (mosaic bags take "
               "their labels from the cache): relabel the cache instead (hpa-cells relabel --cache CACHE --labels "
               "CSV), or drop them")
    assert _error_line(capsys) == message
    assert train_command.main(["--cache", str(square_cache), "--out", str(out), *TINY_ARGS, "--labels", str(labels),
                               "--mosaic-fraction", "0.5"]) == 2
    assert _error_line(capsys) == message
    assert not out.exists()
