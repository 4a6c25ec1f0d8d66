"""Fine-tuning (`train.py --init MODEL_FOLDER`): the run starts from every weight of the folder, keeps or re-measures
its input standardisation, holds the encoder fixed for the first epochs, resumes exactly, records where it came from,
and refuses every start it cannot honour with a message naming the folders and settings."""

from __future__ import annotations

import json
import re
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from mil_fixtures import PROVENANCE, QC_FLAG_NAMES, _cell_records, green_marker_bags, write_bag_cache
from safetensors.torch import load_file, save_file

from hpa_cells.cache import CellCacheWriter
from hpa_cells.file_hashes import sha256_of_file
from hpa_cells_cli import train as train_command
from mil.config import DenseConfig, MILConfig
from mil.training import InitFolderError, TrainConfig, train_model
from mil.training import loop as training_loop

pytestmark = pytest.mark.usefixtures("one_torch_thread")

TINY_MODEL = MILConfig(encoder="test_resnet", head="class_gated_attention", input_size=16, dropout=0.0)
FAST = TrainConfig(epochs=1, batch_size=4, max_cells=4, learning_rate=3e-3, seed=3, device="cpu", val_fraction=0.25)
TINY_DENSE = DenseConfig(encoder="tu-test_resnet", input_size=64)


@pytest.fixture(scope="module")
def source_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return write_bag_cache(tmp_path_factory.mktemp("source") / "cells.h5", green_marker_bags(12, seed=0))


@pytest.fixture(scope="module")
def target_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Another 'world' to fine-tune on: other cells, and brighter (so its channel statistics differ)."""
    bags = [replace(bag, crops=np.clip(bag.crops.astype(np.int64) * 3 // 2, 0, 255).astype(np.uint8))
            for bag in green_marker_bags(12, seed=1)]
    return write_bag_cache(tmp_path_factory.mktemp("target") / "cells.h5", bags)


@pytest.fixture(scope="module")
def source(tmp_path_factory: pytest.TempPathFactory, source_cache: Path) -> Path:
    """A trained crop model folder (1 epoch) to fine-tune from."""
    out = tmp_path_factory.mktemp("runs") / "source"
    train_model(source_cache, out, TINY_MODEL, FAST)
    return out


def _fine_tune(**changes: object) -> TrainConfig:
    return replace(FAST, **changes)


class Snapshots:
    """Records the model (and which parameters hold AdamW state) before and after every training epoch."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.before: dict[int, dict[str, torch.Tensor]] = {}
        self.after: dict[int, dict[str, torch.Tensor]] = {}
        self.with_moments: dict[int, set[str]] = {}
        self.family = None
        original = training_loop._train_epoch

        def recording(run: training_loop._Run, epoch: int) -> list[float]:
            self.family = run.family
            self.before[epoch] = _state(run.model)
            losses = original(run, epoch)
            self.after[epoch] = _state(run.model)
            names = {id(p): n for n, p in run.model.named_parameters()}
            self.with_moments[epoch] = {names[id(p)] for p in run.optimizer.state if run.optimizer.state[p]}
            return losses

        monkeypatch.setattr(training_loop, "_train_epoch", recording)


def _state(model: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone() for k, v in model.state_dict().items()}


def _weights(folder: Path) -> dict[str, torch.Tensor]:
    return load_file(str(folder / "weights.safetensors"))


def _split(state: dict[str, torch.Tensor], prefix: str) -> tuple[dict, dict]:
    inside = {k: v for k, v in state.items() if k.startswith(prefix)}
    return inside, {k: v for k, v in state.items() if not k.startswith(prefix)}


def _equal(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


# ----- starting point, freezing, standardisation ----------------------------------------------------------------


def test_fine_tuning_starts_from_every_weight_of_the_folder(source: Path, target_cache: Path, tmp_path: Path,
                                                            monkeypatch: pytest.MonkeyPatch) -> None:
    snapshots = Snapshots(monkeypatch)
    train_model(target_cache, tmp_path / "tuned", TINY_MODEL, _fine_tune(init_from=str(source)))
    start = snapshots.before[0]
    assert _equal(start, _weights(source))  # encoder and head, class biases not re-initialised
    assert not _equal(snapshots.after[0], _weights(source))


def test_the_encoder_is_frozen_for_the_first_epochs_then_trains(source: Path, target_cache: Path, tmp_path: Path,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    snapshots = Snapshots(monkeypatch)
    train_model(target_cache, tmp_path / "tuned", TINY_MODEL,
                _fine_tune(init_from=str(source), epochs=2, freeze_encoder_epochs=1))
    source_encoder, source_rest = _split(_weights(source), "encoder.")
    encoder_1, rest_1 = _split(snapshots.after[0], "encoder.")
    assert _equal(encoder_1, source_encoder)  # parameters and batch-norm statistics
    classifier = [k for k in rest_1 if k.startswith("head.classifier.")]
    assert len(classifier) == 2 and not any(torch.equal(rest_1[k], source_rest[k]) for k in classifier)
    assert snapshots.with_moments[0] and not any(n.startswith("encoder.") for n in snapshots.with_moments[0])
    encoder_2, _ = _split(snapshots.after[1], "encoder.")
    changed = [k for k in encoder_2 if not torch.equal(encoder_2[k], encoder_1[k])]
    assert any(k.endswith(".weight") for k in changed) and any(k.endswith("running_mean") for k in changed)
    assert any(n.startswith("encoder.") for n in snapshots.with_moments[1])


def test_keep_takes_the_folders_standardisation_and_recompute_measures_the_new_cells(
        source: Path, target_cache: Path, tmp_path: Path) -> None:
    source_model = json.loads((source / "config.json").read_text())["model"]
    train_model(target_cache, tmp_path / "keep", TINY_MODEL, _fine_tune(init_from=str(source)))
    train_model(target_cache, tmp_path / "recompute", TINY_MODEL,
                _fine_tune(init_from=str(source), init_standardisation="recompute"))
    train_model(target_cache, tmp_path / "fresh", TINY_MODEL, FAST)
    models = {name: json.loads((tmp_path / name / "config.json").read_text())["model"]
              for name in ("keep", "recompute", "fresh")}
    assert models["keep"]["channel_mean"] == source_model["channel_mean"]
    assert models["keep"]["channel_std"] == source_model["channel_std"]
    assert models["recompute"]["channel_mean"] == models["fresh"]["channel_mean"]  # as a fresh run measures them
    assert models["recompute"]["channel_std"] == models["fresh"]["channel_std"]
    assert all(new > old for new, old in zip(models["recompute"]["channel_mean"], source_model["channel_mean"],
                                             strict=True))  # the target cells are brighter


def test_config_json_records_where_the_model_came_from(source: Path, target_cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "tuned"
    code = train_command.main(["--cache", str(target_cache), "--out", str(out), "--init", str(source),
                               "--init-standardisation", "recompute", "--freeze-encoder-epochs", "1", "--epochs", "1",
                               "--batch-size", "4", "--max-cells", "4", "--seed", "3", "--val-fraction", "0.25",
                               "--device", "cpu"])
    assert code == 0
    record = json.loads((out / "config.json").read_text())
    training = record["training"]
    assert training["init_from"] == str(source)
    assert training["init_weights_sha256"] == sha256_of_file(source / "weights.safetensors")
    assert training["init_standardisation"] == "recompute" and training["freeze_encoder_epochs"] == 1
    source_model = json.loads((source / "config.json").read_text())["model"]
    assert {k: v for k, v in record["model"].items() if not k.startswith("channel_")} == \
        {k: v for k, v in source_model.items() if not k.startswith("channel_")}  # the architecture from the folder
    scratch = tmp_path / "scratch"
    train_model(target_cache, scratch, TINY_MODEL, FAST)
    assert json.loads((scratch / "config.json").read_text())["training"]["init_weights_sha256"] is None


# ----- resuming ---------------------------------------------------------------------------------------------------


def test_resuming_in_the_frozen_phase_equals_an_uninterrupted_run(source: Path, target_cache: Path, tmp_path: Path,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    config = _fine_tune(init_from=str(source), epochs=3, freeze_encoder_epochs=2)
    train_model(target_cache, tmp_path / "uninterrupted", TINY_MODEL, config)
    save_checkpoint = training_loop.save_training_checkpoint

    def save_then_die(*args: object, **kwargs: object) -> None:
        save_checkpoint(*args, **kwargs)
        raise KeyboardInterrupt

    out = tmp_path / "interrupted"
    monkeypatch.setattr(training_loop, "save_training_checkpoint", save_then_die)
    with pytest.raises(KeyboardInterrupt):
        train_model(target_cache, out, TINY_MODEL, config)
    assert json.loads((out / "checkpoint" / "checkpoint.json").read_text())["epoch"] == 1
    monkeypatch.setattr(training_loop, "save_training_checkpoint", save_checkpoint)
    metrics = train_model(target_cache, out, TINY_MODEL, config)
    assert metrics["epochs_run"] == 3
    assert _equal(_weights(tmp_path / "uninterrupted"), _weights(out))


def test_a_checkpoint_written_before_fine_tuning_existed_still_resumes(source_cache: Path, tmp_path: Path) -> None:
    out = tmp_path / "run"
    train_model(source_cache, out, TINY_MODEL, FAST)
    state_path = out / "checkpoint" / "checkpoint.json"
    state = json.loads(state_path.read_text())
    for key in ("init_from", "init_standardisation", "freeze_encoder_epochs"):
        del state["settings"]["training"][key]
    del state["init_weights_sha256"]
    state_path.write_text(json.dumps(state))
    (state_path.parent / "checkpoint.manifest.json").unlink()  # such checkpoints had no manifest
    assert train_model(source_cache, out, TINY_MODEL, replace(FAST, epochs=2))["epochs_run"] == 2


# ----- refusals ---------------------------------------------------------------------------------------------------


def test_a_missing_or_incomplete_init_folder_is_refused(source: Path, target_cache: Path, tmp_path: Path) -> None:
    missing = tmp_path / "nowhere"
    with pytest.raises(InitFolderError, match=f"^{re.escape(f'--init {missing}: no such model folder')}$"):
        train_model(target_cache, tmp_path / "out", TINY_MODEL, _fine_tune(init_from=str(missing)))
    incomplete = tmp_path / "incomplete"
    shutil.copytree(source, incomplete)
    (incomplete / "weights.safetensors").unlink()
    with pytest.raises(InitFolderError, match=f"^{re.escape(f'--init {incomplete}: not a usable model folder: {incomplete} is not a complete model folder: missing weights.safetensors')}$"):
        train_model(target_cache, tmp_path / "out", TINY_MODEL, _fine_tune(init_from=str(incomplete)))
    assert not (tmp_path / "out").exists()


def test_another_family_or_architecture_is_refused_listing_every_difference(source: Path, target_cache: Path,
                                                                             tmp_path: Path) -> None:
    config = _fine_tune(init_from=str(source))
    with pytest.raises(InitFolderError, match=f"^{re.escape(f'--init {source} holds a crop model, and this run trains a dense model: fine-tuning keeps the family (--family crop)')}$"):
        train_model(target_cache, tmp_path / "out", TINY_DENSE, config)
    other = replace(TINY_MODEL, encoder="resnet10t", input_size=32, use_mask_channel=False, num_classes=5)
    expected = (f"--init {source}: this run's architecture differs from the folder's in 4 setting(s): "
                "encoder: 'test_resnet' in the folder, 'resnet10t' in this run; "
                "input_size: 16 in the folder, 32 in this run; num_classes: 28 in the folder, 5 in this run; "
                "use_mask_channel: True in the folder, False in this run. Fine-tuning keeps the folder's "
                "architecture: leave these options out (they are taken from the folder) or give the folder's values")
    with pytest.raises(InitFolderError, match=f"^{re.escape(expected)}$"):
        train_model(target_cache, tmp_path / "out", other, config)
    with pytest.raises(ValueError, match=re.escape("init_from (--init) and encoder_weights (--encoder-weights) "
                                                   "exclude each other")):
        replace(config, encoder_weights="x.safetensors")
    with pytest.raises(InitFolderError, match=f"^{re.escape(f'--out {source} is the --init folder: fine-tuning writes a new model folder, choose another --out')}$"):
        train_model(target_cache, source, TINY_MODEL, config)


def test_resuming_from_another_start_is_refused_naming_both(source: Path, source_cache: Path, target_cache: Path,
                                                            tmp_path: Path) -> None:
    other = tmp_path / "other_source"
    shutil.copytree(source, other)
    out = tmp_path / "tuned"
    train_model(target_cache, out, TINY_MODEL, _fine_tune(init_from=str(source)))
    with pytest.raises(InitFolderError, match=f"^{re.escape(f'{out} holds a run started from --init {source}, and this run starts from --init {other}: rerun with the same start to resume it, or choose a new --out folder')}$"):
        train_model(target_cache, out, TINY_MODEL, _fine_tune(init_from=str(other)))
    with pytest.raises(InitFolderError, match=f"^{re.escape(f'{out} holds a run started from --init {source}, and this run starts from scratch (no --init): ')}"):
        train_model(target_cache, out, TINY_MODEL, FAST)
    scratch = tmp_path / "scratch"
    train_model(target_cache, scratch, TINY_MODEL, FAST)
    with pytest.raises(InitFolderError, match=f"^{re.escape(f'{scratch} holds a run started from scratch (no --init), and this run starts from --init {source}')}"):
        train_model(target_cache, scratch, TINY_MODEL, _fine_tune(init_from=str(source)))
    # the same --init folder, whose weights were replaced since the run started from it
    started = tmp_path / "started"
    train_model(target_cache, started, TINY_MODEL, _fine_tune(init_from=str(other)))
    state = _weights(other)
    state["head.classifier.bias"] = state["head.classifier.bias"] + 1
    save_file(state, str(other / "weights.safetensors"), metadata={"format_version": "1"})
    with pytest.raises(InitFolderError, match=f"^{re.escape(f'--init {other}: its weights changed since the run in {started} started from them')}"):
        train_model(target_cache, started, TINY_MODEL, _fine_tune(init_from=str(other)))


def test_train_cli_takes_the_architecture_from_the_folder_and_refuses_contradictions(
        source: Path, target_cache: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = ["--cache", str(target_cache), "--init", str(source), "--epochs", "1", "--batch-size", "4",
            "--max-cells", "4", "--device", "cpu", "--val-fraction", "0.25"]
    assert train_command.main([*base, "--out", str(tmp_path / "a"), "--encoder", "resnet18", "--no-mask-channel"]) == 2
    assert capsys.readouterr().err == (
        f"error: --init {source}: this run's architecture differs from the folder's in 2 setting(s): encoder: "
        "'test_resnet' in the folder, 'resnet18' in this run; use_mask_channel: True in the folder, False in this "
        "run. Fine-tuning keeps the folder's architecture: leave these options out (they are taken from the folder) "
        "or give the folder's values\n")
    assert train_command.main([*base, "--out", str(tmp_path / "b"), "--dense-arch", "unet"]) == 2
    assert capsys.readouterr().err == (f"error: --dense-arch: not an option of the crop family, and --init {source} "
                                       "holds a crop model\n")
    assert train_command.main([*base, "--out", str(tmp_path / "c"), "--family", "dense"]) == 2
    assert capsys.readouterr().err.endswith("fine-tuning keeps the family (--family crop)\n")
    assert not any((tmp_path / name).exists() for name in "abc")
    assert train_command.main([*base, "--out", str(tmp_path / "d"), "--encoder", "test_resnet",
                               "--input-size", "16"]) == 0  # the folder's own values are fine
    assert f"fine-tuned from {source}" in capsys.readouterr().out
    assert train_command.main(["--cache", str(target_cache), "--out", str(tmp_path / "e"),
                               "--init-standardisation", "recompute"]) == 2
    assert capsys.readouterr().err == "error: --init-standardisation applies to fine-tuning (--init) only\n"


# ----- the dense family ---------------------------------------------------------------------------------------------


def _write_field_cache(path: Path, n_images: int, seed: int) -> Path:
    """A schema-2 cache of square cells with random full images (the dense family reads whole fields)."""
    rng = np.random.default_rng(seed)
    bags = green_marker_bags(n_images, seed=seed, crop_size=16)
    with CellCacheWriter(path, 16, PROVENANCE, QC_FLAG_NAMES) as writer:
        for bag in bags:
            n = bag.crops.shape[0]
            cells_hw = np.zeros((48, 48), np.int32)
            for k in range(n):
                y, x = divmod(k, 3)
                cells_hw[y * 16 + 2: y * 16 + 14, x * 16 + 2: x * 16 + 14] = k + 1
            image = rng.integers(0, 200, (4, 48, 48), dtype=np.uint8)
            writer.add_image(bag.image_id, bag.crops, bag.masks, _cell_records(n, bag.qc_flags), cells_hw,
                             (cells_hw > 0).astype(np.int32), cells_hw.shape, bag.labels, image_chw=image)
    return path


def test_a_dense_model_fine_tunes_with_a_frozen_encoder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    dense_source = tmp_path / "dense_source"
    train_model(_write_field_cache(tmp_path / "a.h5", 8, seed=0), dense_source, TINY_DENSE, FAST)
    snapshots = Snapshots(monkeypatch)
    out = tmp_path / "dense_tuned"
    code = train_command.main(["--cache", str(_write_field_cache(tmp_path / "b.h5", 8, seed=1)), "--out", str(out),
                               "--init", str(dense_source), "--freeze-encoder-epochs", "1", "--epochs", "2",
                               "--batch-size", "4", "--seed", "3", "--val-fraction", "0.25", "--device", "cpu"])
    assert code == 0
    assert _equal(snapshots.before[0], _weights(dense_source))
    source_encoder, source_rest = _split(_weights(dense_source), "network.encoder.")
    encoder_1, rest_1 = _split(snapshots.after[0], "network.encoder.")
    assert _equal(encoder_1, source_encoder)
    assert not _equal(rest_1, source_rest)  # decoder, segmentation head and pooling head train
    encoder_2, _ = _split(snapshots.after[1], "network.encoder.")
    assert not _equal(encoder_2, encoder_1)
    record = json.loads((out / "config.json").read_text())
    assert record["model"] == json.loads((dense_source / "config.json").read_text())["model"]  # kept standardisation
    assert record["training"]["init_from"] == str(dense_source)


def test_keep_with_a_folder_that_has_no_standardisation_stays_without_one() -> None:
    """A model folder written before input standardisation existed: "keep" keeps none (the model it was)."""
    from mil.training.finetune import InitSource, start_config

    old = InitSource("old_model", TINY_MODEL, "0" * 64)
    assert TINY_MODEL.channel_mean is None
    kept = start_config(replace(TINY_MODEL, channel_mean=(0.1,) * 4, channel_std=(1.0,) * 4), old, "keep")
    assert kept.channel_mean is None and kept.channel_std is None
    with_statistics = InitSource("new_model", replace(TINY_MODEL, channel_mean=(0.2,) * 4, channel_std=(0.5,) * 4),
                                 "0" * 64)
    assert start_config(TINY_MODEL, with_statistics, "recompute").channel_mean is None  # measured by the run
    assert start_config(TINY_MODEL, with_statistics, "keep").channel_std == (0.5,) * 4
