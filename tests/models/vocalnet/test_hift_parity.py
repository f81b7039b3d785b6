"""HiFT vocoder parity with the VocalNet reference goldens (torch, then the exported ONNX graphs).

Reference: VocalNet's bundled ``cosyvoice/hifigan/generator.py`` (``HiFTGenerator.inference`` /
``decode``, ``SineGen.forward``, ``SourceModuleHnNSF.forward``) and
``cosyvoice/hifigan/f0_predictor.py`` (``ConvRNNF0Predictor.forward``), as recorded in the
fixture's ``golden/nonstream.safetensors`` and ``golden/stream.safetensors``. Tolerances follow the
fixture README §7: rtol 1e-4 / atol 1e-4·max|ref| per tensor, 1e-3 for waveforms.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from vn_fixtures import fixture_params, load_set

from edgevoice.errors import EdgevoiceError
from edgevoice.models.vocalnet.hift import (
    HiftDecodeStep,
    HiftSourceStep,
    istft_basis,
    stft_basis,
)
from edgevoice.weights.pt_checkpoint import load_pt_tensors
from edgevoice.weights.vocalnet.cosyvoice import (
    HIFT_NAME,
    hift_fold_weight_norm,
    hift_load,
)

OPSET = 20


@pytest.fixture(scope="module", autouse=True)
def one_torch_thread():
    """Small convolutions: one thread is faster than two fighting over a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", params=fixture_params())
def vn(request):
    return load_set(request.param)


@pytest.fixture(scope="module")
def hift(vn):
    return hift_load(vn.cosyvoice_dir)


def assert_close(actual, ref, rel: float, what: str) -> None:
    actual, ref = np.asarray(actual, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    assert actual.shape == ref.shape, f"{what}: shape {actual.shape} != {ref.shape}"
    scale = float(np.abs(ref).max())
    err = float(np.abs(actual - ref).max())
    assert np.allclose(actual, ref, rtol=rel, atol=rel * scale), f"{what}: max |Δ| {err:.3g} (max |ref| {scale:.3g})"


def voiced_samples(f0: np.ndarray, threshold: float, per_frame: int) -> np.ndarray:
    return np.repeat(f0 > threshold, per_frame)


def test_f0_matches_reference(vn, hift):
    """ConvRNNF0Predictor.forward on the golden flow mel gives the recorded ``hift_f0``."""
    with torch.no_grad():
        f0 = hift.f0_predictor(vn.nonstream["flow_mel"][None])
    assert_close(f0[0], vn.nonstream["hift_f0"], 1e-4, "hift_f0")


def test_f0_of_every_stream_chunk(vn, hift):
    """HiFTGenerator.inference's f0 for each streaming call (8 cached frames ⊕ new frames)."""
    calls = vn.meta["stream"]["vocoder_calls"]
    for call in calls:
        i = call["i"]
        with torch.no_grad():
            f0 = hift.f0_predictor(vn.stream[f"stream_v{i}_hift_mel"][None])
        assert_close(f0[0], vn.stream[f"stream_v{i}_f0"], 1e-4, f"stream_v{i}_f0")


def test_source_is_the_reference_sines_plus_noise_of_the_right_size(vn, hift):
    """SineGen + SourceModuleHnNSF with the recorded phases and no noise explain ``hift_source``
    up to the reference's Gaussian noise: atanh(ref) − atanh(ours) = w·noise, whose std is
    ‖w‖·0.003 on voiced and ‖w‖·0.1/3 on unvoiced samples. Our own noise input must add the same."""
    cfg, golden = hift.config, vn.nonstream
    mel, phase = golden["flow_mel"][None], golden["hift_phase_vec"][None]
    samples = mel.shape[-1] * cfg.samples_per_frame
    noise = torch.from_numpy(np.random.default_rng(3).standard_normal((1, cfg.harmonics, samples)).astype(np.float32))
    with torch.no_grad():
        f0, clean = hift.source(mel, phase, torch.zeros(1, cfg.harmonics, samples))
        _, noisy = hift.source(mel, phase, noise)
    voiced = voiced_samples(f0[0].numpy(), cfg.voiced_threshold, cfg.samples_per_frame)
    w_norm = float(hift.m_source.l_linear.weight.detach().norm())
    expected = {True: w_norm * cfg.nsf_sigma, False: w_norm * cfg.nsf_alpha / 3}
    ours_clean = np.arctanh(clean[0, 0].double().numpy())
    for name, signal in (("reference", golden["hift_source"]), ("ours", noisy[0, 0])):
        residual = np.arctanh(signal.double().numpy()) - ours_clean
        for is_voiced in (True, False):
            part = residual[voiced == is_voiced]
            assert part.size > 1000, "the fixture should have voiced and unvoiced stretches"
            assert abs(part.std() / expected[is_voiced] - 1) < 0.1, (name, is_voiced, part.std(), expected[is_voiced])
            assert abs(part.mean()) < 0.1 * expected[is_voiced], (name, is_voiced, part.mean())


def test_waveform_matches_reference(vn, hift):
    """HiFTGenerator.decode(flow_mel, hift_source) gives ``wav_nonstream`` (tts_direct, stream=False)."""
    with torch.no_grad():
        wav = hift.decode(vn.nonstream["flow_mel"][None], vn.nonstream["hift_source"][None, None])
    assert_close(wav[0], vn.nonstream["wav_nonstream"], 1e-3, "wav_nonstream")


def test_dsp_bases_equal_torch_stft_and_istft(hift):
    """The conv STFT / transposed-conv iSTFT equal torch.stft / torch.istft (center, Hann, n_fft 16, hop 4)."""
    cfg = hift.config
    signal = torch.randn(1, 1, 40 * cfg.hop_len, generator=torch.Generator().manual_seed(0))
    window = torch.hann_window(cfg.n_fft, periodic=True)
    spec = torch.stft(signal[:, 0], cfg.n_fft, cfg.hop_len, cfg.n_fft, window=window, return_complex=True)
    ours = hift._stft(signal)
    assert_close(ours, torch.cat([spec.real, spec.imag], dim=1), 1e-5, "stft")
    logmag_phase = torch.randn(1, 2 * cfg.spectrum_bins, 41, generator=torch.Generator().manual_seed(1))
    mag, phase = logmag_phase[:, : cfg.spectrum_bins].exp(), logmag_phase[:, cfg.spectrum_bins :].sin()
    ref = torch.istft(torch.polar(mag, phase), cfg.n_fft, cfg.hop_len, cfg.n_fft, window=window)
    assert_close(hift._istft(logmag_phase), ref, 1e-5, "istft")
    assert stft_basis(cfg.n_fft).shape == istft_basis(cfg.n_fft).shape == (2 * cfg.spectrum_bins, 1, cfg.n_fft)


def test_weight_norm_is_folded_like_torch(vn):
    """g·v/‖v‖ as torch's weight_norm(dim=0) computes it, for a Conv1d and a ConvTranspose1d."""
    path = vn.cosyvoice_dir / HIFT_NAME
    raw = load_pt_tensors(path)
    folded = hift_fold_weight_norm(raw, str(path))
    for prefix in ("conv_pre", "ups.0"):
        g, v = raw[f"{prefix}.weight_g"], raw[f"{prefix}.weight_v"]
        expected = torch._weight_norm(v.contiguous(), g, 0)
        assert_close(folded[f"{prefix}.weight"], expected, 1e-6, prefix)
    assert not any(k.endswith(("weight_g", "weight_v")) for k in folded)


def test_checkpoint_errors_are_one_line(vn, tmp_path):
    path = vn.cosyvoice_dir / HIFT_NAME
    raw = load_pt_tensors(path)
    without_g = {k: v for k, v in raw.items() if k != "conv_post.weight_g"}
    with pytest.raises(EdgevoiceError, match="conv_post.weight_g") as info:
        hift_fold_weight_norm(without_g, "hift.pt")
    assert "\n" not in str(info.value)
    # An extra tensor must be refused by the strict placement, naming it.
    (tmp_path / "cosyvoice.yaml").write_text((vn.cosyvoice_dir / "cosyvoice.yaml").read_text())
    torch.save({**raw, "extra.weight": torch.zeros(1)}, tmp_path / HIFT_NAME)
    with pytest.raises(EdgevoiceError, match="extra.weight") as info:
        hift_load(tmp_path)
    assert "\n" not in str(info.value)


# --- exported graphs -------------------------------------------------------------------------

def export(module: torch.nn.Module, args: tuple, names: list[str], outputs: list[str], path) -> str:
    """Export with a dynamic frame count; sample-rate inputs are per_frame × frames long."""
    frames = torch.export.Dim("frames", min=2, max=4096)
    per_frame = args[-1].shape[-1] // args[0].shape[-1]
    dims = [{2: frames}] + [{2: per_frame * frames} if a.dim() == 3 else {} for a in args[1:]]
    with torch.no_grad():
        program = torch.onnx.export(
            module, args, dynamic_shapes=tuple(dims), dynamo=True, opset_version=OPSET,
            input_names=names, output_names=outputs, verbose=False,
        )
    program.save(str(path))
    return str(path)


@pytest.fixture(scope="module")
def onnx_graphs(hift, vn, tmp_path_factory):
    out = tmp_path_factory.mktemp("hift_onnx")
    cfg = hift.config
    mel = vn.nonstream["flow_mel"][None][..., :24]
    samples = mel.shape[-1] * cfg.samples_per_frame
    source_path = export(
        HiftSourceStep(hift).eval(), (mel, torch.zeros(1, cfg.harmonics), torch.zeros(1, cfg.harmonics, samples)),
        ["mel", "phase", "noise"], ["f0", "source"], out / "hift_source.onnx",
    )
    decode_path = export(
        HiftDecodeStep(hift).eval(), (mel, torch.zeros(1, 1, samples)), ["mel", "source"], ["audio"], out / "hift_decode.onnx"
    )
    return source_path, decode_path


def session(path: str):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])


def test_onnx_graphs_match_reference(vn, hift, onnx_graphs):
    """The exported graphs on the non-streaming call (350 frames) and a streaming chunk (other length)."""
    cfg = hift.config
    source_sess, decode_sess = session(onnx_graphs[0]), session(onnx_graphs[1])
    golden = vn.nonstream
    mel = golden["flow_mel"][None].numpy()
    samples = mel.shape[-1] * cfg.samples_per_frame
    f0, source = source_sess.run(None, {
        "mel": mel, "phase": golden["hift_phase_vec"][None].numpy(),
        "noise": np.zeros((1, cfg.harmonics, samples), np.float32),
    })
    assert_close(f0[0], golden["hift_f0"], 1e-4, "onnx hift_f0")
    with torch.no_grad():
        _, torch_source = hift.source(torch.from_numpy(mel), golden["hift_phase_vec"][None], torch.zeros(1, cfg.harmonics, samples))
    # The sine phase is a running sum of F0 over frames, so float-rounding differences in F0
    # (1e-6 relative) grow along the 350 frames: compare the excitation at 1e-2 of its peak.
    assert_close(source, torch_source, 1e-2, "onnx source vs torch")
    (audio,) = decode_sess.run(None, {"mel": mel, "source": golden["hift_source"][None, None].numpy()})
    assert_close(audio[0], golden["wav_nonstream"], 1e-3, "onnx wav_nonstream")
    chunk = vn.stream["stream_v1_hift_mel"][None].numpy()
    (f0_chunk, _) = source_sess.run(None, {
        "mel": chunk, "phase": np.zeros((1, cfg.harmonics), np.float32),
        "noise": np.zeros((1, cfg.harmonics, chunk.shape[-1] * cfg.samples_per_frame), np.float32),
    })
    assert_close(f0_chunk[0], vn.stream["stream_v1_f0"], 1e-4, "onnx stream_v1_f0")


def test_onnx_graphs_parse_on_tensorrt_10_3(onnx_graphs):
    from edgevoice.export.trt_check import check_trt_compatibility

    for path in onnx_graphs:
        result = check_trt_compatibility(path, "10.3")
        assert result.ok, result.summary()
        assert not result.warnings, result.summary()
