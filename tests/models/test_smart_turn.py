"""Smart Turn in torch: sizes, the in-graph front end, and the exported graph on onnxruntime.

Seeded random weights: these tests need no weights package (tests/recipes/cascade/test_turn.py
checks the shipped weights against pipecat's graph).
"""

from __future__ import annotations

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch
from edgevoice.export.to_onnx import export_onnx

from edgevoice.models.smart_turn import SmartTurn, SmartTurnConfig, normalize_waveform
from edgevoice.models.whisper.model import WhisperEncoder
from edgevoice.recipes.base import RecipeComponent


@pytest.fixture(scope="module")
def model() -> SmartTurn:
    torch.manual_seed(0)
    turn = SmartTurn()
    with torch.no_grad():  # default init gives near-constant outputs; spread the classifier out
        for parameter in turn.classifier.parameters():
            parameter.mul_(4.0)
    return turn.eval()


@pytest.fixture(scope="module")
def audio() -> torch.Tensor:
    rng = np.random.default_rng(1)
    t = np.arange(SmartTurnConfig().window_samples) / 16000
    voiced = np.sin(2 * np.pi * 140 * t) * (np.sin(2 * np.pi * 3 * t) > 0) * (t > 4.0)  # 4 s of zeros, then sound
    noisy = 0.05 * rng.standard_normal(t.size)
    return torch.tensor(np.stack([0.3 * voiced, noisy]), dtype=torch.float32)  # (2, 128000)


@pytest.fixture(scope="module")
def exported(model, tmp_path_factory):
    path = tmp_path_factory.mktemp("smart_turn") / "turn.onnx"
    component = RecipeComponent("turn", model, {}, "test")
    entry = export_onnx(component, path, "fp32", max_batch=4)
    return path, entry


def test_config_sizes_follow_the_window():
    c = SmartTurnConfig()
    assert (c.window_samples, c.n_frames, c.n_audio_ctx) == (128000, 800, 400)
    encoder = c.encoder_config()
    assert (encoder.n_audio_ctx, encoder.width, encoder.n_audio_heads, encoder.n_audio_layers) == (400, 384, 6, 4)
    with pytest.raises(ValueError, match="even number"):
        SmartTurnConfig(hop=333)


def test_reuses_the_whisper_encoder(model):
    assert isinstance(model.encoder, WhisperEncoder)
    assert model.encoder.positions.shape == (400, 384)
    # The front end's STFT basis and filters are derived, not weights.
    assert not [k for k in model.state_dict() if k.startswith("front_end") or k == "full_length"]


def test_shapes_and_range(model, audio):
    with torch.no_grad():
        features = model.features(audio)
        prob = model(audio)
    assert features.shape == (2, 80, 800)
    assert prob.shape == (2, 1) and prob.dtype == torch.float32
    assert torch.all((prob > 0) & (prob < 1))
    assert model.input_specs()[0].shape == ("batch", 128000) and model.output_names() == ("prob",)


def test_waveform_normalization_makes_loudness_irrelevant(model, audio):
    with torch.no_grad():
        quiet, loud = model(audio * 0.5), model(audio * 3.0)
    # Not exact: the variance's epsilon (1e-7) weighs a little more on quieter audio.
    assert torch.allclose(quiet, loud, atol=1e-4)
    normalized = normalize_waveform(audio, 1e-7)
    assert torch.allclose(normalized.mean(dim=1), torch.zeros(2), atol=1e-5)
    assert torch.allclose(normalized.std(dim=1, unbiased=False), torch.ones(2), atol=1e-4)


def test_every_frame_counts(model, audio):
    # The window is valid in full: no frame is masked, so the last 10 ms change the features.
    changed = audio.clone()
    changed[:, -160:] += 0.2
    with torch.no_grad():
        before, after = model.features(audio), model.features(changed)
    assert not torch.allclose(before[..., -1], after[..., -1])


def test_batch_rows_are_independent(model, audio):
    with torch.no_grad():
        both = model(audio)
        first = model(audio[:1])
    assert torch.allclose(both[:1], first, atol=1e-6)


def test_fp16_keeps_the_front_end_in_float32(model, audio):
    import copy

    half = copy.deepcopy(model).set_compute_dtype(torch.float16)
    assert half.front_end.basis.dtype == torch.float32 and half.encoder.conv1.weight.dtype == torch.float16
    if torch.cuda.is_available():  # fp16 matmuls need a GPU in some torch builds; the CPU path checks dtypes only
        with torch.no_grad():
            assert torch.allclose(half.cuda()(audio.cuda()).cpu(), model(audio), atol=2e-2)


def test_export_matches_torch_on_onnxruntime(model, audio, exported):
    path, entry = exported
    assert [i.name for i in entry.inputs] == ["audio"] and [o.name for o in entry.outputs] == ["prob"]
    assert entry.inputs[0].shape == ("batch", 128000) and entry.outputs[0].shape == ("batch", 1)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    [ours] = session.run(None, {"audio": audio.numpy()})
    with torch.no_grad():
        reference = model(audio).numpy()
    assert np.max(np.abs(ours - reference)) <= 1e-5
    assert abs(float(ours[0, 0]) - float(ours[1, 0])) > 1e-3  # the two inputs really differ


def test_export_has_no_stft_op(exported):
    path, _ = exported
    ops = {node.op_type for node in onnx.load(str(path), load_external_data=False).graph.node}
    assert "Conv" in ops and not ops & {"STFT", "DFT", "MelWeightMatrix", "Pad"}
