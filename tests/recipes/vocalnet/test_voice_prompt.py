"""The vocalnet exporter's voice prompt: computed with CosyVoice2's ONNX front ends, or precomputed, or refused.

Reference: SJTU-OmniAgent/VocalNet ``omni_speech/infer/vocalnet.py`` (commit bdf01d2),
``VocalNetModel.__init_vocoder__`` with ``postprocess`` and ``SpeechTokenizer.extract_speech_token``
/ ``extract_speech_feat`` / ``extract_spk_embedding`` (the front ends of FunAudioLLM/CosyVoice's
``cosyvoice/cli/frontend.py``). The fixture's ``prompt/prompt_inputs.safetensors`` holds that
code's own ``prompt_speech_16k`` (after ``postprocess``) and ``prompt_feat`` (after the
token/mel alignment); its tokens and embedding came from stand-ins, since the real ONNX files cannot
be had here.

So the ONNX files are stand-ins too: tiny random-weight torch modules exported with the published
files' interfaces (speech_tokenizer_v2.onnx: ``feats`` float32 (batch, 128, frames) and
``feats_length`` int32 (batch,) -> ``indices`` int64 (batch, 1, frames / 4); campplus.onnx:
``input`` float32 (batch, frames, 80) -> 192 floats per batch row). onnxruntime's session class
is wrapped to record what the exporter feeds them, and the feeds are compared with features
computed independently: faster-whisper's log-mel and the project's float64-exact Kaldi fbank
(``edgevoice.models.freeze_omni.frontend``), both on the reference's ``prompt_speech_16k``.
"""

from __future__ import annotations

import shutil
import warnings
from pathlib import Path
from typing import ClassVar

import numpy as np
import onnxruntime
import pytest
import torch
from safetensors.numpy import load_file
from torch import nn
from vn_fixtures import fixture_params, load_set

from edgevoice.errors import EdgevoiceError
from edgevoice.recipes.vocalnet import voice as vn_voice
from edgevoice.recipes.vocalnet.prompt_audio import (
    flow_mel,
    load_prompt_wav,
    postprocess,
    sinc_resample,
)
from edgevoice.recipes.vocalnet.prompt_models import align, speech_tokens

UNITS = 6561  # the flow's token vocabulary
RATIO, MEL_BINS, EMBED = 2, 80, 192


class StandInTokenizer(nn.Module):
    """feats (B, 128, T), feats_length (B,) -> indices (B, 1, T // 4): 4-frame means, a random projection, argmax."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(128, UNITS)

    def forward(self, feats: torch.Tensor, feats_length: torch.Tensor) -> torch.Tensor:
        pooled = nn.functional.avg_pool1d(feats, 4, 4).transpose(1, 2)  # (B, T // 4, 128)
        ids = self.proj(pooled).argmax(-1)  # (B, T // 4)
        position = torch.ones_like(ids).cumsum(1) - 1
        valid = position < (feats_length.long() // 4)[:, None]  # frames past feats_length give id 0
        return torch.where(valid, ids, torch.zeros_like(ids))[:, None]


class StandInCampplus(nn.Module):
    """input (B, T, 80) -> output (B, 192): time mean and std through a random projection."""

    def __init__(self):
        super().__init__()
        self.proj = nn.Linear(2 * MEL_BINS, EMBED)

    def forward(self, feats: torch.Tensor) -> torch.Tensor:
        return self.proj(torch.cat([feats.mean(1), feats.std(1)], dim=-1))


def _export(module: nn.Module, args: tuple, path: Path, inputs: list[str], outputs: list[str], axes: dict) -> None:
    with warnings.catch_warnings(), torch.no_grad():
        warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
        torch.onnx.export(module.eval(), args, str(path), dynamo=False, opset_version=17, input_names=inputs,
                          output_names=outputs, dynamic_axes=axes)


@pytest.fixture(scope="module")
def stand_ins(tmp_path_factory) -> Path:
    """A folder with the two stand-in ONNX files, under the published names."""
    folder = tmp_path_factory.mktemp("cosyvoice-front-ends")
    torch.manual_seed(7)
    _export(StandInTokenizer(), (torch.zeros(1, 128, 40), torch.tensor([40], dtype=torch.int32)),
            folder / "speech_tokenizer_v2.onnx", ["feats", "feats_length"], ["indices"],
            {"feats": {0: "batch", 2: "frames"}, "feats_length": {0: "batch"}, "indices": {0: "batch", 2: "tokens"}})
    _export(StandInCampplus(), (torch.zeros(1, 50, MEL_BINS),), folder / "campplus.onnx", ["input"], ["output"],
            {"input": {0: "batch", 1: "frames"}, "output": {0: "batch"}})
    return folder


@pytest.fixture(params=fixture_params())
def vn_set(request):
    return load_set(request.param)


@pytest.fixture
def folder(vn_set, tmp_path) -> Path:
    """A writable copy of the set's CosyVoice2 folder and its sibling prompt/ (prompt.wav + prompt_inputs)."""
    for part in ("CosyVoice2-0.5B", "prompt"):
        shutil.copytree(vn_set.root / part, tmp_path / part)
    return tmp_path / "CosyVoice2-0.5B"


def _reference_prompt(vn_set) -> dict[str, np.ndarray]:
    return load_file(str(vn_set.prompt_dir / "prompt_inputs.safetensors"))


def _load(folder: Path) -> vn_voice.VoicePrompt:
    return vn_voice.load_voice(folder, RATIO, MEL_BINS, EMBED, UNITS)


class Recording(onnxruntime.InferenceSession):
    """An InferenceSession that keeps (model file name, feeds) of every run."""

    calls: ClassVar[list[tuple[str, dict[str, np.ndarray]]]] = []

    def __init__(self, path, *args, **kwargs):
        super().__init__(path, *args, **kwargs)
        self.file = Path(path).name

    def run(self, output_names, feeds, run_options=None):
        Recording.calls.append((self.file, {k: np.array(v) for k, v in feeds.items()}))
        return super().run(output_names, feeds, run_options)


# --- the audio side against the reference's own numbers ----------------------------------------


def test_postprocess_and_flow_mel_match_the_reference(vn_set):
    """``postprocess(load_wav(prompt, 16000))`` and ``extract_speech_feat(Resample(16k->24k)(...))`` of
    vocalnet.py ``__init_vocoder__`` (matcha ``mel_spectrogram`` per cosyvoice.yaml ``feat_extractor``)."""
    reference = _reference_prompt(vn_set)
    speech = postprocess(load_prompt_wav(vn_set.prompt_dir / "prompt.wav", 16000))
    np.testing.assert_allclose(speech, reference["prompt_speech_16k"], atol=1e-6)
    mel = flow_mel(sinc_resample(reference["prompt_speech_16k"], 16000, 24000))
    expected = reference["prompt_feat_full"]
    assert mel.shape == expected.shape
    np.testing.assert_allclose(mel, expected, atol=1e-4 * float(np.abs(expected).max()))


def test_resampling_keeps_a_tone():
    """A 16 kHz tone resampled to 24 kHz is the same tone sampled at 24 kHz (away from the edges)."""
    t16, t24 = np.arange(16000) / 16000, np.arange(24000) / 24000
    out = sinc_resample(np.sin(2 * np.pi * 440 * t16).astype(np.float32), 16000, 24000)
    assert out.shape == (24000,)
    np.testing.assert_allclose(out[200:-200], np.sin(2 * np.pi * 440 * t24)[200:-200], atol=2e-3)


def test_alignment_cuts_to_two_mel_frames_per_token():
    """vocalnet.py: token_len = min(int(feat_frames / 2), n_tokens); feat[:2 * token_len], tokens[:token_len]."""
    feat = np.zeros((9, MEL_BINS), np.float32)
    tokens, cut = align(np.arange(6), feat, RATIO)  # 9 frames hold 4 tokens
    assert tokens.tolist() == [0, 1, 2, 3] and cut.shape == (8, MEL_BINS)
    tokens, cut = align(np.arange(3), feat, RATIO)  # 3 tokens hold 6 frames
    assert tokens.tolist() == [0, 1, 2] and cut.shape == (6, MEL_BINS)


# --- the ONNX path ---------------------------------------------------------------------------


def test_the_onnx_front_ends_get_the_reference_features(vn_set, folder, stand_ins, monkeypatch):
    """Feeds of ``extract_speech_token`` (``whisper.log_mel_spectrogram(speech, n_mels=128)``, its frame
    count as int32) and ``extract_spk_embedding`` (``kaldi.fbank(speech, num_mel_bins=80, dither=0)``
    minus its time mean) on the reference's ``prompt_speech_16k``; outputs cut and shipped."""
    from faster_whisper.feature_extractor import FeatureExtractor

    from edgevoice.models.freeze_omni.frontend import FbankConfig, FoFrontend

    for name in ("campplus.onnx", "speech_tokenizer_v2.onnx"):
        shutil.copy(stand_ins / name, folder / name)
    Recording.calls = []
    monkeypatch.setattr(onnxruntime, "InferenceSession", Recording)
    voice = _load(folder)

    speech = _reference_prompt(vn_set)["prompt_speech_16k"]
    feeds = dict(Recording.calls)
    assert sorted(feeds) == ["campplus.onnx", "speech_tokenizer_v2.onnx"] and len(Recording.calls) == 2
    mel, length = feeds["speech_tokenizer_v2.onnx"]["feats"], feeds["speech_tokenizer_v2.onnx"]["feats_length"]
    expected_mel = FeatureExtractor(feature_size=128)(speech, padding=0)[None]  # (1, 128, N // 160)
    assert mel.dtype == np.float32 and mel.shape == expected_mel.shape == (1, 128, len(speech) // 160)
    np.testing.assert_allclose(mel, expected_mel, atol=1e-4)
    assert length.dtype == np.int32 and length.tolist() == [mel.shape[2]]

    fbank = feeds["campplus.onnx"]["input"]
    with torch.no_grad():
        kaldi = FoFrontend(FbankConfig()).log_mel(torch.from_numpy(speech)[None]).numpy()
    kaldi = kaldi - kaldi.mean(axis=1, keepdims=True)
    assert fbank.dtype == np.float32 and fbank.shape == kaldi.shape
    np.testing.assert_allclose(fbank, kaldi, atol=5e-3)  # kaldi-native-fbank is float32: ~1e-4 here

    tokenizer = onnxruntime.InferenceSession(str(stand_ins / "speech_tokenizer_v2.onnx"))
    all_tokens = tokenizer.run(None, {"feats": mel, "feats_length": length})[0].reshape(-1)
    n = min(len(all_tokens), _reference_prompt(vn_set)["prompt_feat_full"].shape[0] // RATIO)
    np.testing.assert_array_equal(voice.tokens, all_tokens[:n])
    campplus = onnxruntime.InferenceSession(str(stand_ins / "campplus.onnx"))
    np.testing.assert_array_equal(voice.embedding, campplus.run(None, {"input": fbank})[0].reshape(-1))
    reference_feat = _reference_prompt(vn_set)["prompt_feat_full"][: RATIO * n]
    np.testing.assert_allclose(voice.feat, reference_feat, atol=1e-4 * float(np.abs(reference_feat).max()))
    assert voice.origin["made_from"] == "onnx" and voice.origin["prompt_tokens"] == n


def test_the_computed_prompt_is_shipped_and_recorded(vn_set, folder, stand_ins):
    """The recipe's package data (``vn_voice.npz``) and manifest config carry the computed prompt."""
    from edgevoice.recipes.vocalnet.recipe import recipe

    for name in ("campplus.onnx", "speech_tokenizer_v2.onnx"):
        shutil.copy(stand_ins / name, folder / name)
    built = recipe(weights=vn_set.vocalnet_dir, cosyvoice=folder, whisper=vn_set.whisper_dir)
    shipped = np.load(next(c for c in built.components if c.name == "flow_encoder").files[vn_voice.VOICE_FILE])
    expected = _load(folder)
    np.testing.assert_array_equal(shipped["prompt_token"], expected.tokens)
    np.testing.assert_array_equal(shipped["prompt_feat"], expected.feat)
    np.testing.assert_array_equal(shipped["embedding"], expected.embedding)
    precomputed = _reference_prompt(vn_set)
    assert not np.array_equal(shipped["embedding"], precomputed["embedding"])  # not the fixture's stand-in values
    record = built.config["flow"]["voice_prompt"]
    assert record["made_from"] == "onnx" and Path(record["prompt_wav"]).name == "prompt.wav"
    assert set(record["models"]) == {"campplus.onnx", "speech_tokenizer_v2.onnx"}


# --- the other ways --------------------------------------------------------------------------


def test_without_the_onnx_files_the_precomputed_inputs_are_used(vn_set, folder):
    voice = _load(folder)
    reference = _reference_prompt(vn_set)
    np.testing.assert_array_equal(voice.tokens, reference["prompt_token"])
    np.testing.assert_array_equal(voice.feat, reference["prompt_feat"])
    np.testing.assert_array_equal(voice.embedding, reference["embedding"])
    assert voice.origin["made_from"] == "prompt_inputs"


def test_one_onnx_file_alone_falls_back_to_the_precomputed_inputs(vn_set, folder, stand_ins):
    shutil.copy(stand_ins / "campplus.onnx", folder / "campplus.onnx")
    assert _load(folder).origin["made_from"] == "prompt_inputs"


def _refusal(folder: Path) -> str:
    with pytest.raises(EdgevoiceError) as caught:
        _load(folder)
    message = str(caught.value)
    assert "\n" not in message, message
    return message


def test_a_folder_with_neither_is_refused_in_one_line(folder):
    shutil.rmtree(folder.parent / "prompt")
    message = _refusal(folder)
    assert "no voice prompt" in message
    for name in ("campplus.onnx", "speech_tokenizer_v2.onnx", "prompt.wav", "prompt_inputs.safetensors"):
        assert name in message, message


def test_the_onnx_files_without_a_recording_are_refused_naming_prompt_wav(folder, stand_ins):
    shutil.rmtree(folder.parent / "prompt")
    for name in ("campplus.onnx", "speech_tokenizer_v2.onnx"):
        shutil.copy(stand_ins / name, folder / name)
    message = _refusal(folder)
    assert "no prompt.wav" in message and "has campplus.onnx and speech_tokenizer_v2.onnx" in message


def test_a_prompt_over_30_seconds_is_refused(stand_ins):
    """CosyVoice's ``_extract_speech_token`` asserts the prompt is at most 30 s."""
    session = onnxruntime.InferenceSession(str(stand_ins / "speech_tokenizer_v2.onnx"))
    assert speech_tokens(session, np.zeros(30 * 16000, np.float32)).size == 30 * 100 // 4
    with pytest.raises(EdgevoiceError, match="at most 30 s"):
        speech_tokens(session, np.zeros(30 * 16000 + 160, np.float32))
