"""Reading the flow of a CosyVoice2 folder: cosyvoice.yaml sizes, flow.pt strict placement.

Reference: the ``flow:`` section of CosyVoice2's ``cosyvoice.yaml`` as VocalNet's ``__init_vocoder__``
loads it (``load_hyperpyyaml`` then ``CosyVoice2Model.load`` -> ``flow.load_state_dict``), and the
chunk sizes ``CosyVoice2Model.__init__`` imposes (cosyvoice/cli/model.py).
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import torch
from vn_fixtures import fixture_params, load_set

from edgevoice.errors import EdgevoiceError
from edgevoice.models.vocalnet.flow import FlowModel
from edgevoice.weights.pt_checkpoint import load_pt_tensors
from edgevoice.weights.vocalnet.cosyvoice import (
    flow_config_from_yaml,
    flow_state,
    load_flow,
    read_cosyvoice_yaml,
)


@pytest.fixture(scope="module", params=fixture_params())
def vn(request):
    return load_set(request.param)


def test_yaml_sizes_match_the_fixture_hparams(vn):
    """Every flow size comes from the yaml (``!ref`` resolved), chunk sizes from the frame rate."""
    hp = vn.hparams["flow"]
    cfg = flow_config_from_yaml(read_cosyvoice_yaml(vn.cosyvoice_dir / "cosyvoice.yaml"), up_blocks=hp["up_encoder_blocks"])
    enc, est = cfg.encoder, cfg.estimator
    assert (cfg.vocab_size, cfg.mel_bins, cfg.spk_embed_dim) == (hp["vocab_size"], hp["mel_bins"], hp["spk_embed_dim"])
    assert (cfg.input_frame_rate, cfg.token_mel_ratio, cfg.pre_lookahead) == (
        hp["input_frame_rate"], hp["token_mel_ratio"], hp["pre_lookahead_len"])
    assert (enc.input_size, enc.width, enc.heads, enc.ffn, enc.blocks) == (
        hp["input_size"], hp["encoder_output_size"], hp["encoder_heads"], hp["encoder_ffn"], hp["encoder_blocks"])
    assert (est.in_channels, est.out_channels, list(est.channels), est.head_dim, est.blocks, est.mid_blocks, est.heads) == (
        hp["estimator"]["in_channels"], hp["estimator"]["out_channels"], hp["estimator"]["channels"],
        hp["estimator"]["attention_head_dim"], hp["estimator"]["n_blocks"], hp["estimator"]["num_mid_blocks"],
        hp["estimator"]["num_heads"])
    assert (cfg.cfg_rate, cfg.t_scheduler, cfg.n_timesteps) == (
        hp["cfm"]["inference_cfg_rate"], hp["cfm"]["t_scheduler"], hp["cfm"]["n_timesteps"])
    assert (enc.chunk_tokens, est.chunk_frames) == (hp["static_chunk_size_encoder"], hp["static_chunk_size_estimator"])


def test_flow_state_is_contiguous_and_equal_to_the_file(vn):
    """The fixture stores strided views of shared pools; we hand on contiguous copies of the same values."""
    raw = load_pt_tensors(vn.cosyvoice_dir / "flow.pt")
    assert any(not t.is_contiguous() for t in raw.values())  # the quirk is really there
    state = flow_state(vn.cosyvoice_dir / "flow.pt")
    assert set(state) == set(raw)
    for name, tensor in state.items():
        assert tensor.is_contiguous() and torch.equal(tensor, raw[name]), name


def test_load_flow_places_every_tensor(vn):
    flow = load_flow(vn.cosyvoice_dir)
    state = flow_state(vn.cosyvoice_dir / "flow.pt")
    ours = flow.state_dict()
    assert set(ours) == set(state)
    assert all(torch.equal(ours[k], state[k]) for k in state)
    assert flow.cfg.encoder.up_blocks == vn.hparams["flow"]["up_encoder_blocks"]


# --- small folders written here: other sizes and broken checkpoints --------------------------------

SMALL = {  # yaml field (with its indentation where the name repeats) -> a size unlike any fixture
    "    vocab_size": "37", "    input_size": "24", "        input_size": "24", "        output_size": "24",
    "        attention_heads": "2", "        linear_units": "16", "        num_blocks": "2",
    "            channels": "[16, 8]", "            attention_head_dim": "4", "            n_blocks": "2",
    "            num_mid_blocks": "1", "            num_heads": "2",
}


def small_yaml(text: str) -> str:
    """The fixture yaml with the flow's sizes replaced (only inside the flow: section)."""
    head, flow, tail = re.split(r"(?m)^(?=flow:|hift:)", text, maxsplit=2)
    for key, value in SMALL.items():
        flow, count = re.subn(rf"(?m)^({key}:)[ \t]*[^#\n]*?([ \t]*#[^\n]*)?$", rf"\g<1> {value}\g<2>", flow)
        assert count == 1, f"{key.strip()} appears {count} times at that depth in the flow section"
    return head + flow + tail


@pytest.fixture(scope="module")
def small_folder(vn, tmp_path_factory):
    folder = tmp_path_factory.mktemp("cosyvoice_small")
    text = small_yaml((vn.cosyvoice_dir / "cosyvoice.yaml").read_text())
    (folder / "cosyvoice.yaml").write_text(text)
    cfg = flow_config_from_yaml(read_cosyvoice_yaml(folder / "cosyvoice.yaml"), up_blocks=3)
    torch.manual_seed(0)
    state = FlowModel(cfg).state_dict()
    torch.save(state, folder / "flow.pt")
    return folder, state


def test_other_sizes_load_from_yaml_and_shapes(small_folder):
    folder, state = small_folder
    flow = load_flow(folder)
    assert flow.cfg.encoder.width == 24 and flow.cfg.encoder.up_blocks == 3
    assert flow.cfg.estimator.channels == (16, 8)
    assert all(torch.equal(flow.state_dict()[k], v) for k, v in state.items())
    tokens = torch.randint(0, 37, (1, 5))
    noise = torch.randn(1, 80, 4 * 2 + 10)
    mel, _ = flow.inference(tokens, torch.randint(0, 37, (1, 4)), torch.randn(1, 8, 80), torch.randn(1, 192), noise)
    assert mel.shape == (1, 80, 10) and torch.isfinite(mel).all()


def rewrite(folder: Path, tmp_path: Path, edit) -> Path:
    target = tmp_path / "cv"
    target.mkdir()
    shutil.copy(folder / "cosyvoice.yaml", target / "cosyvoice.yaml")
    state = torch.load(folder / "flow.pt", weights_only=True)
    edit(state)
    torch.save(state, target / "flow.pt")
    return target


@pytest.mark.parametrize(
    "edit, message",
    [
        (lambda s: s.pop("encoder_proj.bias"), "missing ['encoder_proj.bias']"),
        (lambda s: s.update({"encoder.extra.weight": torch.zeros(1)}), "unexpected ['encoder.extra.weight']"),
        (lambda s: s.update({"encoder_proj.bias": torch.zeros(3)}), "tensor 'encoder_proj.bias'"),
    ],
    ids=["missing", "unexpected", "shape"],
)
def test_bad_checkpoints_are_refused_with_the_key(small_folder, tmp_path, edit, message):
    folder, _ = small_folder
    with pytest.raises(EdgevoiceError) as info:
        load_flow(rewrite(folder, tmp_path, edit))
    assert message in str(info.value) and "\n" not in str(info.value)


def test_unsupported_yaml_layout_is_refused(small_folder, tmp_path):
    folder, _ = small_folder
    (tmp_path / "cosyvoice.yaml").write_text(
        (folder / "cosyvoice.yaml").read_text().replace("use_cnn_module: False", "use_cnn_module: True"))
    shutil.copy(folder / "flow.pt", tmp_path / "flow.pt")
    with pytest.raises(EdgevoiceError, match="use_cnn_module"):
        load_flow(tmp_path)
