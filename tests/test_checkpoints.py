"""`hpa_cells.atomic_files` and `hpa_cells.checkpoints`: the one home for atomic writes and training checkpoints."""

import json

import pytest
import torch

from hpa_cells.atomic_files import atomic_output, partial_path_of, write_json_atomic, write_text_atomic
from hpa_cells.checkpoints import (
    CheckpointError,
    load_checkpoint,
    optimizer_tensors,
    restore_optimizer,
    save_checkpoint,
)


def test_atomic_output_keeps_the_old_file_when_the_writer_fails(tmp_path):
    target = tmp_path / "table.csv"
    write_text_atomic(target, "old\n")
    with pytest.raises(RuntimeError, match="disk full"):
        with atomic_output(target) as partial:
            partial.write_text("half of the new")
            raise RuntimeError("disk full")
    assert target.read_text() == "old\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["table.csv"]


def test_atomic_output_keeps_the_suffix_and_replaces_on_success(tmp_path):
    target = tmp_path / "sub" / "map.png"
    assert partial_path_of(target).suffix == ".png"
    with atomic_output(target) as partial:
        assert partial.parent == target.parent and partial.name.startswith(".")
        partial.write_bytes(b"\x89PNG")
    assert target.read_bytes() == b"\x89PNG"
    assert [p.name for p in target.parent.iterdir()] == ["map.png"]


def test_atomic_output_refuses_a_writer_that_wrote_nothing(tmp_path):
    with pytest.raises(FileNotFoundError, match="nothing was written"):
        with atomic_output(tmp_path / "x.json"):
            pass
    assert list(tmp_path.iterdir()) == []


def test_write_json_atomic_ends_in_a_newline(tmp_path):
    path = write_json_atomic(tmp_path / "a.json", {"b": 1, "a": [1, 2]}, sort_keys=True)
    assert path.read_text().endswith("}\n")
    assert json.loads(path.read_text()) == {"a": [1, 2], "b": 1}


def _trained_pair():
    net = torch.nn.Linear(3, 2)
    optimizer = torch.optim.AdamW(net.parameters(), lr=0.1)
    net(torch.ones(4, 3)).sum().backward()
    optimizer.step()
    return net, optimizer


def test_checkpoint_round_trip_restores_weights_optimizer_and_state(tmp_path):
    net, optimizer = _trained_pair()
    tensors = {f"model.{k}": v for k, v in net.state_dict().items()} | optimizer_tensors(optimizer)
    save_checkpoint(tmp_path, tensors, {"epoch": 3, "history": [{"loss": 0.5}]})
    loaded, state = load_checkpoint(tmp_path)
    assert state == {"epoch": 3, "history": [{"loss": 0.5}]}
    assert torch.equal(loaded["model.weight"], net.weight.detach())
    fresh_net = torch.nn.Linear(3, 2)
    fresh = torch.optim.AdamW(fresh_net.parameters(), lr=0.1)
    restore_optimizer(fresh, loaded)
    first = fresh.state[fresh_net.weight]
    assert first["step"].shape == () and float(first["step"]) == 1.0
    assert torch.equal(first["exp_avg"], optimizer.state[net.weight]["exp_avg"])


def test_a_torn_checkpoint_is_refused_with_the_folder_named(tmp_path):
    net, _ = _trained_pair()
    save_checkpoint(tmp_path / "a", {"w": net.weight}, {"epoch": 4})
    save_checkpoint(tmp_path / "b", {"w": net.weight}, {"epoch": 3})
    (tmp_path / "a" / "checkpoint.json").write_text((tmp_path / "b" / "checkpoint.json").read_text())
    with pytest.raises(CheckpointError, match=r"checkpoint .*a is torn: checkpoint.safetensors and "
                                              r"checkpoint.json come from different saves"):
        load_checkpoint(tmp_path / "a")


def test_a_checkpoint_from_before_the_token_still_loads(tmp_path):
    from safetensors.torch import save_file

    save_file({"w": torch.zeros(2)}, str(tmp_path / "checkpoint.safetensors"))
    (tmp_path / "checkpoint.json").write_text(json.dumps({"step": 7}))
    tensors, state = load_checkpoint(tmp_path)
    assert state == {"step": 7} and tensors["w"].shape == (2,)


def test_a_half_checkpoint_is_refused(tmp_path):
    save_checkpoint(tmp_path, {"w": torch.zeros(2)}, {"step": 1})
    (tmp_path / "checkpoint.json").unlink()
    with pytest.raises(CheckpointError, match="is incomplete: checkpoint.json missing"):
        load_checkpoint(tmp_path)


# ----- the manifest (written last), staged files, refusals ---------------------------------------------------


def _sha(path):
    import hashlib

    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_the_manifest_names_both_files_with_their_sha256(tmp_path):
    save_checkpoint(tmp_path, {"w": torch.arange(3.0)}, {"epoch": 1})
    manifest = json.loads((tmp_path / "checkpoint.manifest.json").read_text())
    assert manifest["files"] == {"checkpoint.safetensors": _sha(tmp_path / "checkpoint.safetensors"),
                                 "checkpoint.json": _sha(tmp_path / "checkpoint.json")}
    assert sorted(p.name for p in tmp_path.iterdir()) == ["checkpoint.json", "checkpoint.manifest.json",
                                                          "checkpoint.safetensors"]


def test_a_save_stopped_after_its_commit_loads_the_new_checkpoint(tmp_path, monkeypatch):
    """Killed between the manifest and the renames: the staged files are the checkpoint."""
    import os

    save_checkpoint(tmp_path, {"w": torch.zeros(2)}, {"epoch": 1})
    real_replace = os.replace

    def stop_at_the_renames(source, target):
        if str(source).endswith((".next.safetensors", ".next.json")) and not str(source).split("/")[-1].startswith("."):
            raise KeyboardInterrupt
        real_replace(source, target)

    monkeypatch.setattr(os, "replace", stop_at_the_renames)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, {"w": torch.ones(2)}, {"epoch": 2})
    monkeypatch.setattr(os, "replace", real_replace)
    assert json.loads((tmp_path / "checkpoint.json").read_text())["epoch"] == 1  # not renamed yet
    tensors, state = load_checkpoint(tmp_path)
    assert state == {"epoch": 2} and torch.equal(tensors["w"], torch.ones(2))


def test_a_save_stopped_before_its_commit_loads_the_previous_checkpoint(tmp_path, monkeypatch):
    import hpa_cells.checkpoints as checkpoints

    save_checkpoint(tmp_path, {"w": torch.zeros(2)}, {"epoch": 1})

    def no_commit(*args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(checkpoints, "write_json_atomic", no_commit)
    with pytest.raises(KeyboardInterrupt):
        save_checkpoint(tmp_path, {"w": torch.ones(2)}, {"epoch": 2})
    tensors, state = load_checkpoint(tmp_path)
    assert state == {"epoch": 1} and torch.equal(tensors["w"], torch.zeros(2))


def test_a_cut_or_replaced_tensor_file_is_refused_with_the_folder_named(tmp_path):
    save_checkpoint(tmp_path / "a", {"w": torch.zeros(100)}, {"epoch": 1})
    tensors = tmp_path / "a" / "checkpoint.safetensors"
    tensors.write_bytes(tensors.read_bytes()[:-40])
    expected = (f"checkpoint {tmp_path / 'a'} is torn: checkpoint.safetensors does not match the sha256 in "
                "checkpoint.manifest.json (changed or cut after it was saved); delete the folder to start over")
    with pytest.raises(CheckpointError) as info:
        load_checkpoint(tmp_path / "a")
    assert str(info.value) == expected


def test_a_manifest_naming_a_missing_file_or_unreadable_is_refused(tmp_path):
    save_checkpoint(tmp_path, {"w": torch.zeros(2)}, {"epoch": 1})
    (tmp_path / "checkpoint.safetensors").unlink()
    with pytest.raises(CheckpointError, match=f"^checkpoint {tmp_path} is incomplete: checkpoint.safetensors "
                                              "missing$"):
        load_checkpoint(tmp_path)
    (tmp_path / "checkpoint.manifest.json").write_text("{not json")
    with pytest.raises(CheckpointError, match=f"^checkpoint {tmp_path}: checkpoint.manifest.json is unreadable"):
        load_checkpoint(tmp_path)


def test_a_checkpoint_with_token_but_no_manifest_still_loads(tmp_path):
    """What main wrote before the manifest: token in both files, no manifest."""
    save_checkpoint(tmp_path, {"w": torch.ones(2)}, {"step": 3})
    (tmp_path / "checkpoint.manifest.json").unlink()
    tensors, state = load_checkpoint(tmp_path)
    assert state == {"step": 3} and torch.equal(tensors["w"], torch.ones(2))
