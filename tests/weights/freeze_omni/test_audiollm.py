"""The audiollm converter: safe loading only, strict key accounting, sizes from the files, not the fixture."""

from __future__ import annotations

import os
import shutil

import pytest
import torch
from fo_fixtures import fixture_sets, load_set

from edgevoice.errors import EdgevoiceError
from edgevoice.weights.freeze_omni.audiollm import load_listen
from edgevoice.weights.pt_checkpoint import load_pt_tensors


@pytest.fixture()
def copy_of_set(tmp_path):
    """A writable copy of the first fixture set's checkpoints/audiollm + llm."""
    sets = fixture_sets()
    root = load_set(sets[0] if sets else None).root
    shutil.copytree(root / "checkpoints" / "audiollm", tmp_path / "checkpoints" / "audiollm")
    os.symlink(root / "llm", tmp_path / "llm")
    return tmp_path


def state_of(copy) -> dict[str, torch.Tensor]:
    return load_pt_tensors(copy / "checkpoints" / "audiollm" / "final.pt")


def save_state(copy, state) -> None:
    torch.save(state, copy / "checkpoints" / "audiollm" / "final.pt")


class _RunsCode:
    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_checkpoint_with_code_is_refused(copy_of_set):
    state = dict(state_of(copy_of_set))
    marker = copy_of_set / "pwned"
    state["predictor_head.bias"] = _RunsCode(str(marker))
    save_state(copy_of_set, state)
    with pytest.raises(EdgevoiceError, match="refusing to load .*final.pt"):
        load_listen(copy_of_set / "checkpoints", copy_of_set / "llm")
    assert not marker.exists()


def test_leftover_missing_and_misshaped_keys_are_named(copy_of_set):
    state = dict(state_of(copy_of_set))
    save_state(copy_of_set, {**state, "adpter.conv1d1.weight": torch.zeros(3)})
    with pytest.raises(EdgevoiceError, match=r"does not use: \['adpter.conv1d1.weight'\]"):
        load_listen(copy_of_set / "checkpoints", copy_of_set / "llm")

    broken = dict(state)
    del broken["encoder.enc.1.encoders.0.self_attn.linear_pos.weight"]
    broken["adpter.bn2.bias"] = broken["adpter.bn2.bias"][:-1]
    save_state(copy_of_set, broken)
    with pytest.raises(EdgevoiceError) as error:
        load_listen(copy_of_set / "checkpoints", copy_of_set / "llm")
    assert "missing encoder.enc.1.encoders.0.self_attn.linear_pos.weight" in str(error.value)
    assert "adpter.bn2.bias has shape" in str(error.value)

    no_task = {k: v for k, v in state.items() if k != "task_embeddings.weight"}
    save_state(copy_of_set, no_task)
    with pytest.raises(EdgevoiceError, match="task_embeddings"):
        load_listen(copy_of_set / "checkpoints", copy_of_set / "llm")


@torch.no_grad()
def test_fp32_checkpoint_and_cmvn_from_global_cmvn_give_the_same_model(copy_of_set):
    reference = load_listen(copy_of_set / "checkpoints", copy_of_set / "llm")
    state = {k: v.float() for k, v in state_of(copy_of_set).items() if not k.startswith("encoder.global_cmvn.")}
    save_state(copy_of_set, state)  # all float32 now, and no CMVN buffers: computed from global_cmvn
    again = load_listen(copy_of_set / "checkpoints", copy_of_set / "llm")
    for ours, theirs in zip(reference.encoder.parameters(), again.encoder.parameters()):
        assert torch.equal(ours, theirs)
    assert torch.allclose(reference.frontend.cmvn_istd, again.frontend.cmvn_istd, rtol=1e-6)
    assert torch.allclose(reference.frontend.cmvn_mean, again.frontend.cmvn_mean, rtol=1e-6)


def test_sizes_come_from_train_yaml_and_must_agree(copy_of_set):
    path = copy_of_set / "checkpoints" / "audiollm" / "train.yaml"
    text = path.read_text()
    heads = load_listen(copy_of_set / "checkpoints", copy_of_set / "llm").encoder.config.heads
    path.write_text(text.replace(f"transformer-attention-heads: {heads}", f"transformer-attention-heads: {heads * 2}"))
    with pytest.raises(EdgevoiceError, match="transformer-attention-heads"):
        load_listen(copy_of_set / "checkpoints", copy_of_set / "llm")
    path.write_text(text.replace("transformer-pos-enc-class: rel-enc", "transformer-pos-enc-class: abs-enc"))
    with pytest.raises(EdgevoiceError, match="rel-enc"):
        load_listen(copy_of_set / "checkpoints", copy_of_set / "llm")


def test_wrong_folders_are_user_errors(tmp_path, copy_of_set):
    with pytest.raises(EdgevoiceError, match="audiollm/train.yaml"):
        load_listen(tmp_path / "nowhere", copy_of_set / "llm")
    with pytest.raises(EdgevoiceError, match="config.json"):
        load_listen(copy_of_set / "checkpoints" / "audiollm", tmp_path)
