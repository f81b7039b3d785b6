"""`edgevoice export --model vocalnet` refuses a damaged published folder in one line naming what is wrong.

Copies of a fixture set with one tensor removed, added or reshaped in ``model.safetensors``, a
``hift.pt`` that pickles code, or a missing voice prompt: each is refused before any graph is
written (``edgevoice.weights.vocalnet.checkpoint.check_part``, ``pt_checkpoint.load_pt`` with
``weights_only=True``), through the same ``export_package`` call the CLI makes.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import torch
from edgevoice.export import export_package
from safetensors.torch import load_file, save_file
from vn_fixtures import fixture_params, load_set

from edgevoice.errors import EdgevoiceError


@pytest.fixture(params=fixture_params())
def folder(request, tmp_path) -> Path:
    """A writable copy of the fixture set's published layout."""
    s = load_set(request.param)
    root = tmp_path / "set"
    for part in ("checkpoints", "models", "CosyVoice2-0.5B", "prompt"):
        shutil.copytree(s.root / part, root / part)
    return root


def export(root: Path, tmp_path: Path) -> str:
    """The one-line refusal of exporting ``root``'s folders."""
    with pytest.raises(EdgevoiceError) as caught:
        export_package(model="vocalnet", target="cpu", out=tmp_path / "out", weights=root / "checkpoints" / "VocalNet-1B",
                       cosyvoice=root / "CosyVoice2-0.5B")
    message = str(caught.value)
    assert "\n" not in message, message
    assert not (tmp_path / "out" / "vn_llm.onnx").exists()  # refused before any graph was written
    return message


def edit_vocalnet(root: Path, edit) -> None:
    path = root / "checkpoints" / "VocalNet-1B" / "model.safetensors"
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path), metadata={"format": "pt"})


def test_a_missing_tensor_is_named(folder, tmp_path):
    edit_vocalnet(folder, lambda t: t.pop("speech_generator.norm.weight"))
    assert "'norm.weight' is missing" in export(folder, tmp_path)


def test_an_extra_tensor_is_named(folder, tmp_path):
    edit_vocalnet(folder, lambda t: t.update({"speech_generator.extra_head.weight": torch.zeros(2, dtype=torch.bfloat16)}))
    assert "unexpected tensor 'extra_head.weight'" in export(folder, tmp_path)


def test_a_misshaped_tensor_is_named_with_both_shapes(folder, tmp_path):
    name = "model.layers.0.mlp.up_proj.weight"
    edit_vocalnet(folder, lambda t: t.update({name: t[name][:-1].clone()}))
    message = export(folder, tmp_path)
    assert f"'{name}' has shape" in message and "config.json implies" in message


class _Code:
    """Pickles as a call: a loader that unpickles arbitrary objects would run it."""

    def __reduce__(self):
        return (print, ("this ran at load time",))


def test_a_pickle_with_code_is_refused(folder, tmp_path, capsys):
    torch.save({"conv_pre.weight": _Code()}, folder / "CosyVoice2-0.5B" / "hift.pt")
    message = export(folder, tmp_path)
    assert "refusing to load" in message and "hift.pt" in message
    assert "this ran at load time" not in capsys.readouterr().out


def test_a_folder_without_a_voice_prompt_is_refused(folder, tmp_path):
    shutil.rmtree(folder / "prompt")
    assert "no voice prompt" in export(folder, tmp_path)
