"""The VocalNet checkpoint reader: every part read as float32, sizes from the folders, strict accounting.

Reference: ``omni_speech/model/builder.py`` ``load_pretrained_model`` (the VocalNet folder via
``from_pretrained``, then the speech encoder replaced by a pipeline load of the Whisper folder in
``omni_speech/model/speech_encoder/speech_encoder.py`` ``WhisperWrappedEncoder.load``).
"""

from __future__ import annotations

import json
import re
import shutil

import pytest
import torch
from safetensors.torch import load_file, save_file
from vn_fixtures import fixture_params, fixture_sets, load_set

from edgevoice.errors import EdgevoiceError
from edgevoice.weights.vocalnet.checkpoint import (
    build_listen,
    build_llm,
    load_vocalnet_checkpoint,
)


@pytest.fixture(scope="module", params=fixture_params())
def fixture_and_ckpt(request):
    fixture = load_set(request.param)
    return fixture, load_vocalnet_checkpoint(fixture.vocalnet_dir)  # Whisper folder found from config.json


def numel(tensors: dict[str, torch.Tensor]) -> int:
    return sum(t.numel() for t in tensors.values())


def test_configs_come_from_the_folders(fixture_and_ckpt):
    fixture, ckpt = fixture_and_ckpt
    c, hp = ckpt.config, fixture.hparams
    llm = hp["llm"]
    assert (c.llm.hidden, c.llm.layers, c.llm.heads, c.llm.kv_heads, c.llm.head_dim, c.llm.ffn, c.llm.vocab_size) == (
        llm["hidden"], llm["layers"], llm["heads"], llm["kv_heads"], llm["head_dim"], llm["ffn"], llm["vocab_size"])
    assert c.llm.rope_base == llm["rope_theta"] and c.llm.rms_eps == llm["rms_norm_eps"] and c.llm.tie_word_embeddings
    scaling = llm["rope_scaling"]
    assert (c.llm.rope_scaling.factor, c.llm.rope_scaling.low_freq_factor, c.llm.rope_scaling.high_freq_factor,
            c.llm.rope_scaling.original_context) == (scaling["factor"], scaling["low_freq_factor"],
                                                      scaling["high_freq_factor"], scaling["original_max_position_embeddings"])
    enc = hp["whisper_encoder"]
    assert (c.encoder.width, c.encoder.n_audio_layers, c.encoder.n_audio_heads, c.encoder.ffn, c.encoder.n_mels,
            c.encoder.n_audio_ctx) == (enc["d_model"], enc["layers"], enc["heads"], enc["ffn"], enc["n_mels"], enc["max_source_positions"])
    assert (c.projector.k, c.projector.encoder_dim * c.projector.k, c.projector.inner, c.projector.llm_dim) == (
        hp["projector"]["ds_rate"], *hp["projector"]["linear1"], hp["projector"]["linear2"][1])
    sd, g = hp["speech_decoder"], c.generator
    assert (g.width, g.heads, g.head_dim, g.ffn, g.pre_nn_layers, g.decoder_layers, g.mtp_num, g.vocab) == (
        sd["width"], sd["heads"], sd["head_dim"], sd["ffn"], sd["pre_nn_layers"], sd["decoder_layers"], sd["mtp_num"], sd["vocab"])
    assert (g.bos_id, g.sos_id, g.eos_id, g.pad_id) == tuple(sd["special_ids"][k] for k in ("BOS", "SOS", "EOS", "PAD"))
    assert (g.rope_theta, g.rms_eps, g.max_positions) == (sd["rope_theta"], sd["rms_norm_eps"], sd["max_position_embeddings"])


def test_every_part_is_float32_with_the_stored_values(fixture_and_ckpt):
    fixture, ckpt = fixture_and_ckpt
    hp = fixture.hparams
    assert numel(ckpt.llm) == hp["llm"]["params"]
    assert numel(ckpt.speech_encoder) == hp["whisper_encoder"]["params_encoder"]
    assert numel(ckpt.speech_projector) == hp["projector"]["params"]
    assert numel(ckpt.speech_generator) == hp["speech_decoder"]["params"]
    parts = (ckpt.llm, ckpt.speech_encoder, ckpt.speech_projector, ckpt.speech_generator)
    assert all(t.dtype == torch.float32 for part in parts for t in part.values())
    stored = load_file(str(fixture.vocalnet_dir / "model.safetensors"))
    assert stored["model.embed_tokens.weight"].dtype == torch.bfloat16
    assert torch.equal(ckpt.llm["model.embed_tokens.weight"], stored["model.embed_tokens.weight"].float())
    assert torch.equal(ckpt.speech_generator["output_proj.bias"], stored["speech_generator.output_proj.bias"].float())
    assert set(ckpt.speech_generator) == {k[len("speech_generator."):] for k in stored if k.startswith("speech_generator.")}
    whisper = load_file(str(fixture.whisper_dir / "model.safetensors"))
    assert torch.equal(ckpt.speech_encoder["conv1.weight"], whisper["model.encoder.conv1.weight"].float())
    assert ckpt.embedded_encoder_equal  # README §3: both copies are identical in the fixture


def test_modules_build_from_the_checkpoint(fixture_and_ckpt):
    _, ckpt = fixture_and_ckpt
    listen, llm = build_listen(ckpt), build_llm(ckpt)
    assert torch.equal(listen.encoder.positions, ckpt.speech_encoder["embed_positions.weight"])
    assert torch.equal(llm.model.norm.weight, ckpt.llm["model.norm.weight"])


# --- strictness, on an edited copy of the first set -----------------------------------------------

@pytest.fixture()
def edited(tmp_path):
    """(write(tensors), read()) over a copy of the first set's VocalNet folder; Whisper folder as shipped."""
    sets = fixture_sets()
    fixture = load_set(sets[0] if sets else None)
    folder = tmp_path / "VocalNet-1B"
    folder.mkdir()
    shutil.copy(fixture.vocalnet_dir / "config.json", folder / "config.json")
    tensors = load_file(str(fixture.vocalnet_dir / "model.safetensors"))

    def write(state: dict[str, torch.Tensor]) -> None:
        save_file(state, str(folder / "model.safetensors"), metadata={"format": "pt"})

    def read():
        return load_vocalnet_checkpoint(folder, whisper_dir=fixture.whisper_dir)

    return tensors, write, read, folder


@pytest.mark.parametrize("name", [
    "model.layers.1.mlp.down_proj.weight",
    "model.speech_projector.linear2.bias",
    "speech_generator.mtp_layers.0.norm_final.weight",
    "model.speech_encoder.layers.0.fc1.weight",
])
def test_a_missing_tensor_is_named(edited, name):
    tensors, write, read, _ = edited
    del tensors[name]
    write(tensors)
    with pytest.raises(EdgevoiceError, match=f"{re.escape(name.split('.', 2)[-1])}' is missing"):
        read()


@pytest.mark.parametrize("name", ["model.layers.99.mlp.up_proj.weight", "speech_generator.extra_head.weight",
                                  "model.speech_projector.linear3.weight", "model.speech_encoder.layers.7.fc1.bias"])
def test_an_unexpected_tensor_is_named(edited, name):
    tensors, write, read, _ = edited
    tensors[name] = torch.zeros(2, dtype=torch.bfloat16)
    write(tensors)
    with pytest.raises(EdgevoiceError, match=f"unexpected tensor '.*{re.escape(name.split('.', 2)[-1])}'"):
        read()


@pytest.mark.parametrize("name", ["model.norm.weight", "speech_generator.embedding.weight",
                                  "model.speech_encoder.conv2.bias", "model.speech_projector.linear1.weight"])
def test_a_misshaped_tensor_is_named(edited, name):
    tensors, write, read, _ = edited
    tensors[name] = torch.zeros(*tensors[name].shape[:-1], tensors[name].shape[-1] + 1, dtype=torch.bfloat16)
    write(tensors)
    with pytest.raises(EdgevoiceError, match="has shape"):
        read()


def test_a_tied_lm_head_copy_must_equal_the_embedding(edited):
    tensors, write, read, _ = edited
    tensors["lm_head.weight"] = tensors["model.embed_tokens.weight"].clone()
    write(tensors)
    assert "lm_head.weight" not in read().llm
    tensors["lm_head.weight"][0, 0] += 1
    write(tensors)
    with pytest.raises(EdgevoiceError, match="lm_head.weight differs"):
        read()


def test_sharded_folder_reads_like_one_file(edited):
    tensors, write, read, folder = edited
    write(tensors)
    whole = read()
    (folder / "model.safetensors").unlink()
    names = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": names[::2], "model-00002-of-00002.safetensors": names[1::2]}
    for file, keys in shards.items():
        save_file({k: tensors[k] for k in keys}, str(folder / file), metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {k: f for f, keys in shards.items() for k in keys}}
    (folder / "model.safetensors.index.json").write_text(json.dumps(index))
    sharded = read()
    assert all(torch.equal(sharded.llm[k], v) for k, v in whole.llm.items())
    assert all(torch.equal(sharded.speech_generator[k], v) for k, v in whole.speech_generator.items())
    (folder / "model-00002-of-00002.safetensors").unlink()
    with pytest.raises(EdgevoiceError, match="model-00002-of-00002.safetensors .*missing"):
        read()


def test_unsupported_config_choices_are_refused(edited):
    tensors, write, read, folder = edited
    write(tensors)
    config = json.loads((folder / "config.json").read_text())
    for key, value, message in [("rope_scaling", {"rope_type": "yarn", "factor": 4.0}, "only 'llama3'"),
                                ("speech_generator_type", "ctc", "only the 'ar_mtp'"),
                                ("speech_encoder_hidden_size", 7, "speech_encoder_hidden_size 7")]:
        (folder / "config.json").write_text(json.dumps({**config, key: value}))
        with pytest.raises(EdgevoiceError, match=message):
            read()


def test_a_missing_whisper_folder_says_what_to_pass(tmp_path, edited):
    tensors, write, _, folder = edited
    write(tensors)
    with pytest.raises(EdgevoiceError, match="pass whisper_dir"):
        load_vocalnet_checkpoint(folder)
