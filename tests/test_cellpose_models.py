"""Resolving Cellpose CPnet models: bundled, built-in names, custom files; their errors; the bundled format.

No test downloads anything: `no_network` makes Cellpose's downloader and every socket connection raise.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path

import pytest
import torch
from cellpose.resnet_torch import CPnet

import segmentation.cellpose_models as cellpose_models
from segmentation.cellpose_models import (
    CellposeNetSpec,
    ModelFormatError,
    ModelNotFoundError,
    build_network,
    resolve_model,
    save_bundled_format,
    sha256_of_file,
)

pytestmark = pytest.mark.usefixtures("no_network", "one_torch_thread")

TINY_NBASE = (2, 8, 16, 32, 32)
FULL_NBASE = (2, 32, 64, 128, 256)


def tiny_cpnet(nbase: tuple[int, ...] = TINY_NBASE, diam_mean: float = 30.0, seed: int = 0) -> CPnet:
    """A randomly initialised CPnet (eval mode), deterministic given `seed`."""
    torch.manual_seed(seed)
    return CPnet(list(nbase), 3, sz=3, mkldnn=False, max_pool=True, diam_mean=diam_mean).eval()


# ----- the bundled model ------------------------------------------------------------------------


def test_missing_bundled_model_names_the_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    folder = tmp_path / "models"
    monkeypatch.setattr(cellpose_models, "BUNDLED_MODEL_DIR", folder)
    with pytest.raises(ModelNotFoundError) as caught:
        resolve_model("bundled", "cells")
    message = str(caught.value)
    expected = folder / "hpa_cells_cells.safetensors"
    assert message.startswith(f"the bundled cells model is missing: looked for {expected}. ")
    assert "python scripts/train_segmenter.py --kind cells" in message
    assert "git checkout -- " in message
    with pytest.raises(ModelNotFoundError, match="the bundled nuclei model is missing: looked for .*hpa_cells_nuclei"):
        resolve_model("bundled", "nuclei")


def test_bundled_model_resolves_from_its_folder(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(cellpose_models, "BUNDLED_MODEL_DIR", tmp_path)
    weights = save_bundled_format(tiny_cpnet(diam_mean=17.0), tmp_path / "hpa_cells_nuclei.safetensors", {"kind": "nuclei"})
    spec = resolve_model("bundled", "nuclei")
    assert spec.name == "bundled:hpa_cells_nuclei"
    assert spec.path == weights
    assert spec.file_format == "safetensors"
    assert spec.nbase == TINY_NBASE
    assert spec.diam_mean == 17.0
    assert spec.sha256 == sha256_of_file(weights)
    assert spec.settings["kind"] == "nuclei"
    with pytest.raises(ModelNotFoundError, match="the bundled cells model is missing"):
        resolve_model("bundled", "cells")


# ----- Cellpose's built-in names -----------------------------------------------------------------


def test_missing_builtin_says_where_it_looked_and_how_to_get_it(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELLPOSE_LOCAL_MODELS_PATH", str(tmp_path))
    with pytest.raises(ModelNotFoundError) as caught:
        resolve_model("cyto3", "cells")
    message = str(caught.value)
    assert message.startswith(f"Cellpose built-in model 'cyto3' not found: looked for {tmp_path / 'cyto3'} ")
    assert "models.CellposeModel(model_type='cyto3')" in message
    assert f"copy cyto3 from its ~/.cellpose/models into {tmp_path}" in message
    assert "--model bundled" in message
    with pytest.raises(ModelNotFoundError, match=f"looked for {tmp_path / 'nucleitorch_0'}"):
        resolve_model("nuclei", "nuclei")
    assert list(tmp_path.iterdir()) == []  # nothing was created, let alone downloaded


def test_builtin_folder_defaults_to_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("CELLPOSE_LOCAL_MODELS_PATH", raising=False)
    monkeypatch.setenv("HOME", str(tmp_path))
    assert cellpose_models.cellpose_model_dir() == tmp_path / ".cellpose" / "models"
    with pytest.raises(ModelNotFoundError, match="looked for .*/.cellpose/models/cyto2torch_0"):
        resolve_model("cyto2", "cells")


def test_builtin_cyto3_file_resolves_full_width(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELLPOSE_LOCAL_MODELS_PATH", str(tmp_path))
    net = tiny_cpnet(FULL_NBASE)
    torch.save(net.state_dict(), tmp_path / "cyto3")  # what CPnet.save_model writes
    spec = resolve_model("cyto3", "cells")
    assert (spec.name, spec.file_format, spec.nbase, spec.diam_mean) == ("cyto3", "cellpose-torch", FULL_NBASE, 30.0)
    rebuilt = build_network(spec)
    assert list(rebuilt.nbase) == list(FULL_NBASE)
    assert float(rebuilt.diam_mean) == 30.0


def test_builtin_nuclei_uses_diameter_17_whatever_the_file_says(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CELLPOSE_LOCAL_MODELS_PATH", str(tmp_path))
    torch.save(tiny_cpnet(diam_mean=30.0).state_dict(), tmp_path / "nucleitorch_0")
    spec = resolve_model("nuclei", "nuclei")
    assert spec.diam_mean == 17.0
    assert spec.nbase == TINY_NBASE
    assert float(build_network(spec).diam_mean) == 17.0


# ----- custom files -------------------------------------------------------------------------------


def test_custom_torch_file_infers_narrow_widths_and_diameter(tmp_path: Path) -> None:
    nbase = (2, 4, 8, 12, 24)
    net = tiny_cpnet(nbase, diam_mean=25.0, seed=3)
    path = tmp_path / "my_model"
    torch.save(net.state_dict(), path)
    spec = resolve_model(str(path), "cells")
    assert (spec.name, spec.nbase, spec.diam_mean, spec.file_format) == ("my_model", nbase, 25.0, "cellpose-torch")
    x = torch.rand(1, 2, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        assert torch.equal(build_network(spec)(x)[0], net(x)[0])


def test_unknown_name_is_not_found(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError) as caught:
        resolve_model(str(tmp_path / "nope.pth"), "cells")
    assert str(caught.value) == (
        f"model {str(tmp_path / 'nope.pth')!r} not found: it is not a file, not 'bundled', and not one of "
        "Cellpose's built-in names (cyto, cyto2, cyto3, nuclei)"
    )


def test_non_cpnet_state_dict_is_a_format_error(tmp_path: Path) -> None:
    path = tmp_path / "resnet.pth"
    torch.save({"conv1.weight": torch.zeros(4, 3, 3, 3)}, path)
    with pytest.raises(ModelFormatError) as caught:
        resolve_model(path, "cells")
    assert str(caught.value).startswith(f"{path} is not a Cellpose 3 CPnet state dict")
    assert "Cellpose 4 (Cellpose-SAM)" in str(caught.value)


def test_tensor_file_and_garbage_file_are_format_errors(tmp_path: Path) -> None:
    tensor_file = tmp_path / "tensor.pt"
    torch.save(torch.zeros(3), tensor_file)
    with pytest.raises(ModelFormatError, match=f"^{tensor_file} holds a Tensor, not a Cellpose state dict$"):
        resolve_model(tensor_file, "cells")
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a torch file at all")
    with pytest.raises(ModelFormatError, match=f"^{garbage} could not be read as a Cellpose model file: ") as caught:
        resolve_model(garbage, "cells")
    assert "\n" not in str(caught.value) and "weights_only` set to `False`" not in str(caught.value)
    truncated = tmp_path / "truncated.pt"
    torch.save({"a": torch.zeros(100)}, truncated)
    truncated.write_bytes(truncated.read_bytes()[:300])
    with pytest.raises(ModelFormatError, match=f"^{truncated} could not be read as a Cellpose model file: [A-Za-z]+Error: "):
        resolve_model(truncated, "cells")


class _Payload:
    """A pickle that would create a file when unpickled without weights_only."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (Path.touch, (self.marker,))


def test_pickled_code_is_never_run(tmp_path: Path) -> None:
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pth"
    with path.open("wb") as handle:
        pickle.dump({"x": _Payload(marker)}, handle, protocol=2)
    with pytest.raises(ModelFormatError, match="Unsupported global: .*; arbitrary pickles are never loaded$"):
        resolve_model(path, "cells")
    assert not marker.exists()


def test_safetensors_without_settings_file(tmp_path: Path) -> None:
    weights = save_bundled_format(tiny_cpnet(), tmp_path / "m.safetensors", {})
    weights.with_suffix(".json").unlink()
    with pytest.raises(ModelNotFoundError) as caught:
        resolve_model(weights, "cells")
    assert str(caught.value) == f"{weights} has no settings file beside it: looked for {tmp_path / 'm.json'}"


def test_safetensors_with_bad_settings(tmp_path: Path) -> None:
    weights = save_bundled_format(tiny_cpnet(), tmp_path / "m.safetensors", {})
    settings = weights.with_suffix(".json")
    settings.write_text(json.dumps({"nbase": [2, 8, 16, 32, 32]}))
    with pytest.raises(ModelFormatError, match=f"^{settings}: invalid model settings .*needs 'nbase' and 'diam_mean'$"):
        resolve_model(weights, "cells")
    settings.write_text("{not json")
    with pytest.raises(ModelFormatError, match="invalid model settings"):
        resolve_model(weights, "cells")


def test_settings_that_do_not_fit_the_weights(tmp_path: Path) -> None:
    weights = save_bundled_format(tiny_cpnet(), tmp_path / "m.safetensors", {})
    settings = weights.with_suffix(".json")
    record = json.loads(settings.read_text())
    record["nbase"] = [2, 8, 16, 32, 64]
    settings.write_text(json.dumps(record))
    spec = resolve_model(weights, "cells")
    with pytest.raises(ModelFormatError, match=f"^{weights}: weights do not fit a CPnet with widths \\[2, 8, 16, 32, 64\\]"):
        build_network(spec)


def test_corrupt_safetensors_is_a_format_error(tmp_path: Path) -> None:
    weights = save_bundled_format(tiny_cpnet(), tmp_path / "m.safetensors", {})
    weights.write_bytes(weights.read_bytes()[:100])
    spec = resolve_model(weights, "cells")
    with pytest.raises(ModelFormatError, match=f"^{weights} could not be read as safetensors weights"):
        build_network(spec)


# ----- the bundled format round trip ----------------------------------------------------------------


def test_bundled_format_round_trip_gives_identical_outputs(tmp_path: Path) -> None:
    net = tiny_cpnet(diam_mean=17.0, seed=7)
    # Give batch norm non-trivial running statistics, as a trained network has.
    net.train()
    with torch.no_grad():
        net(torch.rand(2, 2, 64, 64, generator=torch.Generator().manual_seed(1)))
    net.eval()
    weights = save_bundled_format(net, tmp_path / "sub" / "model.safetensors", {"kind": "nuclei", "note": "test"})
    record = json.loads(weights.with_suffix(".json").read_text())
    assert record == {"diam_mean": 17.0, "kind": "nuclei", "nbase": list(TINY_NBASE), "note": "test"}
    assert not list(weights.parent.glob("*.tmp"))
    spec = resolve_model(weights, "nuclei")
    assert (spec.name, spec.nbase, spec.diam_mean) == ("model", TINY_NBASE, 17.0)
    rebuilt = build_network(spec)
    assert not rebuilt.training
    x = torch.rand(3, 2, 80, 96, generator=torch.Generator().manual_seed(2))
    with torch.inference_mode():
        expected, got = net(x), rebuilt(x)
    assert torch.equal(expected[0], got[0])
    assert torch.equal(expected[1], got[1])


def test_float16_conversion_halves_the_file_and_keeps_outputs(tmp_path: Path) -> None:
    from segmentation.cellpose_models import convert_to_float16

    net = tiny_cpnet(diam_mean=30.0, seed=3).eval()
    weights = save_bundled_format(net, tmp_path / "model.safetensors", {"kind": "cells"})
    size32 = weights.stat().st_size
    convert_to_float16(weights)
    assert weights.stat().st_size < 0.6 * size32
    record = json.loads(weights.with_suffix(".json").read_text())
    assert record["weights_dtype"] == "float16" and record["kind"] == "cells"
    rebuilt = build_network(resolve_model(weights, "cells"))
    assert all(p.dtype == torch.float32 for p in rebuilt.parameters())
    x = torch.rand(1, 2, 64, 64, generator=torch.Generator().manual_seed(4))
    with torch.inference_mode():
        expected, got = net(x)[0], rebuilt(x)[0]
    assert torch.allclose(expected, got, atol=2e-2 * float(expected.abs().max()))


def test_save_bundled_format_refuses_other_suffixes(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=f"^{tmp_path / 'm.pth'}: bundled-format weights must end in .safetensors$"):
        save_bundled_format(tiny_cpnet(), tmp_path / "m.pth", {})


def test_provenance_is_json_ready(tmp_path: Path) -> None:
    weights = save_bundled_format(tiny_cpnet(), tmp_path / "m.safetensors", {"kind": "cells"})
    spec = resolve_model(weights, "cells")
    record = json.loads(json.dumps(spec.provenance()))
    assert record["path"] == str(weights)
    assert record["nbase"] == list(TINY_NBASE)
    assert record["sha256"] == sha256_of_file(weights)
    assert isinstance(spec, CellposeNetSpec)
