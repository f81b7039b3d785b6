"""Whisper in torch: strict loaders, front-end numerics, encoder/decoder against transformers, KV cache."""

from __future__ import annotations

import dataclasses
import struct

import numpy as np
import pytest
import torch
from conftest import espeak

from edgevoice.errors import EdgevoiceError
from edgevoice.models.whisper.layers import slaney_mel_filters
from edgevoice.models.whisper.model import Whisper, WhisperConfig, WhisperDecoderStep, WhisperEncoderStep
from edgevoice.recipes.cascade.whisper import packaged_model_dir
from edgevoice.weights.whisper.ctranslate2 import (
    load_whisper_ct2,
    read_ct2_model,
    whisper_config_from_ct2,
    whisper_state_from_ct2,
)
from edgevoice.weights.whisper.hf import load_whisper_hf, save_whisper_hf

SOT, NO_TIMESTAMPS = 50257, 50362


@pytest.fixture(scope="module")
def ct2_model():
    return read_ct2_model(packaged_model_dir() / "model.bin")


@pytest.fixture(scope="module")
def whisper(ct2_model) -> Whisper:
    model = Whisper(whisper_config_from_ct2(ct2_model))
    model.load_state_dict(whisper_state_from_ct2(ct2_model, model.config))
    return model.eval()


@pytest.fixture(scope="module")
def utterance() -> np.ndarray:
    return espeak("Please turn on the kitchen lights.")


def padded_window(audio: np.ndarray, config: WhisperConfig) -> tuple[torch.Tensor, torch.Tensor]:
    window = np.zeros((1, config.window_samples), dtype=np.float32)
    window[0, : audio.size] = audio
    return torch.from_numpy(window), torch.tensor([audio.size])


# --- loaders ---------------------------------------------------------------------------------


def test_ct2_loader_builds_tiny_en_from_every_tensor(ct2_model):
    config = whisper_config_from_ct2(ct2_model)
    assert config == WhisperConfig()  # tiny.en: the defaults
    state = whisper_state_from_ct2(ct2_model, config)
    assert set(state) == set(Whisper(config).state_dict())


def test_ct2_loader_names_an_unused_variable(ct2_model):
    extra = dataclasses.replace(ct2_model, variables={**ct2_model.variables, "decoder/extra_head/weight": np.zeros(3, np.float16)})
    with pytest.raises(EdgevoiceError, match="decoder/extra_head/weight"):
        whisper_state_from_ct2(extra, whisper_config_from_ct2(ct2_model))


def test_ct2_loader_names_a_missing_variable(ct2_model):
    variables = dict(ct2_model.variables)
    del variables["decoder/layer_2/attention/linear_2/bias"]
    with pytest.raises(EdgevoiceError, match="decoder/layer_2/attention/linear_2/bias"):
        whisper_state_from_ct2(dataclasses.replace(ct2_model, variables=variables), whisper_config_from_ct2(ct2_model))


def test_ct2_loader_refuses_a_key_bias(ct2_model):
    # Whisper's key projection has no bias; a non-zero slot would be silently dropped otherwise.
    variables = dict(ct2_model.variables)
    name = "encoder/layer_1/self_attention/linear_0/bias"
    bias = variables[name].copy()
    bias[400] = 0.5  # inside the k slice (384..767)
    variables[name] = bias
    with pytest.raises(EdgevoiceError, match="no bias"):
        whisper_state_from_ct2(dataclasses.replace(ct2_model, variables=variables), whisper_config_from_ct2(ct2_model))


def test_ct2_reader_reports_a_truncated_file(tmp_path):
    data = (packaged_model_dir() / "model.bin").read_bytes()[:5000]
    (tmp_path / "model.bin").write_bytes(data)
    with pytest.raises(EdgevoiceError, match="truncated"):
        read_ct2_model(tmp_path / "model.bin")


def test_ct2_reader_refuses_another_format_version(tmp_path):
    (tmp_path / "model.bin").write_bytes(struct.pack("<I", 2) + b"\0" * 16)
    with pytest.raises(EdgevoiceError, match="version 2"):
        read_ct2_model(tmp_path / "model.bin")


@pytest.fixture(scope="module")
def hf_dir(whisper, tmp_path_factory):
    return save_whisper_hf(whisper, tmp_path_factory.mktemp("hf_whisper"))


def test_hf_round_trip_gives_identical_weights(whisper, hf_dir):
    loaded = load_whisper_hf(hf_dir)
    assert loaded.config == whisper.config
    ours, theirs = whisper.state_dict(), loaded.state_dict()
    assert all(torch.equal(ours[k], theirs[k]) for k in ours)


def test_hf_loader_names_missing_and_unexpected_keys(hf_dir, tmp_path):
    from safetensors.torch import load_file, save_file

    tensors = load_file(str(hf_dir / "model.safetensors"))
    tensors["model.decoder.layers.0.extra.weight"] = torch.zeros(2)
    del tensors["model.encoder.layers.3.fc2.bias"]
    save_file(tensors, str(tmp_path / "model.safetensors"))
    (tmp_path / "config.json").write_text((hf_dir / "config.json").read_text())
    with pytest.raises(EdgevoiceError, match=r"encoder\.layers\.3\.fc2\.bias.*decoder\.layers\.0\.extra\.weight"):
        load_whisper_hf(tmp_path)


@pytest.fixture(scope="module")
def hf_reference(hf_dir):
    transformers = pytest.importorskip("transformers")  # test-only reference
    return transformers.WhisperForConditionalGeneration.from_pretrained(str(hf_dir)).eval()


def test_encoder_matches_transformers(whisper, hf_reference, utterance):
    audio, length = padded_window(utterance, whisper.config)
    with torch.no_grad():
        mel = whisper.front_end(audio, length)
        ours = whisper.encoder(mel)
        theirs = hf_reference.model.encoder(input_features=mel).last_hidden_state
    assert (ours - theirs).abs().max().item() < 1e-4


def test_decoder_matches_transformers(whisper, hf_reference, utterance):
    audio, length = padded_window(utterance, whisper.config)
    tokens = torch.tensor([[SOT, NO_TIMESTAMPS, 4222, 1210, 319, 262]])  # " Please turn on the"
    with torch.no_grad():
        mel = whisper.front_end(audio, length)
        states = whisper.encoder(mel)
        ours = whisper.decoder(tokens, *whisper.cross_attention_inputs(states))
        theirs = hf_reference(encoder_outputs=(states,), decoder_input_ids=tokens).logits
    assert (ours - theirs).abs().max().item() < 1e-3  # logits span about +-30


# --- front end -------------------------------------------------------------------------------


def test_mel_filters_match_faster_whisper():
    from faster_whisper.feature_extractor import FeatureExtractor

    reference = FeatureExtractor.get_mel_filters(16000, 400, n_mels=80)
    assert np.abs(slaney_mel_filters(16000, 400, 80) - reference).max() < 1e-7


@pytest.mark.parametrize("kind", ["speech", "tone_and_noise", "one_second"])
def test_log_mel_matches_faster_whisper(whisper, utterance, kind):
    from faster_whisper.audio import pad_or_trim
    from faster_whisper.feature_extractor import FeatureExtractor

    rng = np.random.default_rng(1)
    if kind == "speech":
        audio = utterance
    elif kind == "tone_and_noise":
        t = np.arange(40000) / 16000
        audio = (0.3 * np.sin(2 * np.pi * 440 * t) + 0.02 * rng.standard_normal(t.size)).astype(np.float32)
    else:
        audio = utterance[:16000]
    features = FeatureExtractor()(audio)
    # What faster-whisper feeds its encoder: the content frames, zero-padded to 3000.
    reference = pad_or_trim(features[:, : features.shape[-1] - 1])
    with torch.no_grad():
        ours = whisper.front_end(*padded_window(audio, whisper.config))[0].numpy()
    assert ours.shape == reference.shape == (80, 3000)
    assert np.abs(ours - reference).max() < 1e-4


def test_front_end_ignores_samples_past_length(whisper, utterance):
    audio, length = padded_window(utterance, whisper.config)
    noisy = audio.clone()
    # The last frames' windows read up to n_fft/2 samples past the end, which must be zeros as
    # in faster-whisper's padding; everything further is never read.
    start = utterance.size + whisper.config.n_fft
    noisy[0, start:] = torch.randn(noisy.shape[1] - start)
    with torch.no_grad():
        clean, dirty = whisper.front_end(audio, length), whisper.front_end(noisy, length)
    assert torch.equal(clean, dirty)


# --- decoder step with the fixed-capacity KV cache --------------------------------------------


@pytest.fixture(scope="module")
def cross(whisper, utterance):
    with torch.no_grad():
        return WhisperEncoderStep(whisper).step(*padded_window(utterance, whisper.config))


def test_cached_steps_match_the_full_sequence_call(whisper, cross):
    decoder = WhisperDecoderStep(whisper)
    tokens = torch.tensor([[SOT, NO_TIMESTAMPS, 4222, 1210, 319, 262, 9592, 7588, 13]])
    with torch.no_grad():
        full = decoder(tokens, *cross)  # (1, 9, V)
        state = decoder.init_state(1)
        pieces, offset = [], 0
        for size in (2, 1, 3, 1, 2):  # a prompt, single tokens, and multi-token calls
            logits, *state = decoder.step(tokens[:, offset : offset + size], torch.tensor([offset]), *cross, *state)
            pieces.append(logits)
            offset += size
    assert (torch.cat(pieces, dim=1) - full).abs().max().item() < 1e-4


def test_cache_slots_past_the_position_are_never_read(whisper, cross):
    decoder = WhisperDecoderStep(whisper)
    tokens = torch.tensor([[SOT, NO_TIMESTAMPS, 4222]])
    zeros = decoder.init_state(1)
    garbage = tuple(torch.randn_like(s) * 10 for s in zeros)  # e.g. left over from a previous utterance
    with torch.no_grad():
        clean = decoder.step(tokens, torch.tensor([0]), *cross, *zeros)
        dirty = decoder.step(tokens, torch.tensor([0]), *cross, *garbage)
    assert torch.equal(clean[0], dirty[0])
    # The written slots hold the new keys; later slots keep what was there.
    assert torch.equal(dirty[1][:, :, 3:], garbage[0][:, :, 3:])


def test_appending_tokens_never_changes_earlier_logits(whisper, cross):
    decoder = WhisperDecoderStep(whisper)
    tokens = torch.tensor([[SOT, NO_TIMESTAMPS, 4222, 1210, 319]])
    with torch.no_grad():
        short, long = decoder(tokens[:, :3], *cross), decoder(tokens, *cross)
    # Not bit-exact: matmuls of another length sum in another order (~3e-5 on logits of ~10).
    assert (short - long[:, :3]).abs().max().item() < 1e-4


def test_greedy_torch_transcript(whisper, cross):
    """End to end in torch: the cached greedy loop spells the utterance."""
    from tokenizers import Tokenizer

    decoder = WhisperDecoderStep(whisper)
    state, feed, offset, out = decoder.init_state(1), [SOT, NO_TIMESTAMPS], 0, []
    with torch.no_grad():
        while len(out) < 20:
            logits, *state = decoder.step(torch.tensor([feed]), torch.tensor([offset]), *cross, *state)
            offset += len(feed)
            token = int(logits[0, -1].argmax())
            if token == 50256:
                break
            out.append(token)
            feed = [token]
    text = Tokenizer.from_file(str(packaged_model_dir() / "tokenizer.json")).decode(out)
    assert text.strip() == "Please turn on the kitchen lights."


def test_load_whisper_ct2_from_path():
    model = load_whisper_ct2(packaged_model_dir() / "model.bin")
    assert not model.training and model.config.n_vocab == 51864
