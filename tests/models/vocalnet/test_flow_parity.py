"""The CosyVoice2 flow (tokens -> mel) against the VocalNet reference goldens, in torch and ONNX.

Reference: ``CausalMaskedDiffWithXvec.inference`` (cosyvoice/flow/flow.py), ``CausalConditionalCFM
.forward/solve_euler`` (cosyvoice/flow/flow_matching.py), ``ConditionalDecoder.forward``
(cosyvoice/flow/decoder.py), ``UpsampleConformerEncoder.forward`` (cosyvoice/transformer/
upsample_encoder.py) and ``CosyVoice2Model.token2wav/tts_direct_update`` (cosyvoice/cli/model.py), as
``omni_speech/infer/vocalnet.py`` and ``vocalnet_streaming.py`` call them. Tolerances follow the
fixture README section 7 (float32: rtol 1e-4, atol 1e-4 * max|ref|).
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from vn_fixtures import fixture_params, load_set

from edgevoice.models.vocalnet.flow import (
    EulerStepGraph,
    FlowEncoderGraph,
    FlowStreamer,
    euler_schedule,
)
from edgevoice.weights.vocalnet.cosyvoice import load_flow


def assert_close(actual, expected, name: str, rel: float = 1e-4) -> None:
    actual, expected = torch.as_tensor(actual).float(), torch.as_tensor(expected).float()
    assert actual.shape == expected.shape, f"{name}: shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    scale = expected.abs().max().item()
    err = (actual - expected).abs().max().item()
    assert torch.allclose(actual, expected, rtol=rel, atol=rel * scale), f"{name}: max|err| {err:.3g} (max|ref| {scale:.3g})"


@pytest.fixture(scope="module", params=fixture_params())
def case(request):
    from safetensors.torch import load_file

    vn = load_set(request.param)
    torch.set_num_threads(2)
    prompt = load_file(str(vn.prompt_dir / "prompt_inputs.safetensors"))
    return vn, load_flow(vn.cosyvoice_dir), prompt


def prompt_args(prompt):
    return prompt["prompt_token"][None], prompt["prompt_feat"][None], prompt["embedding"][None]


def golden_cond(vn, prompt) -> torch.Tensor:
    """cond as the reference builds it: prompt mel in the first frames, zeros after. [1, 80, T]"""
    mu = vn.nonstream["flow_mu"]
    cond = torch.zeros(1, *mu.shape)
    cond[0, :, : prompt["prompt_feat"].shape[0]] = prompt["prompt_feat"].T
    return cond


def test_conditioning_matches_golden(case):
    """spks = spk_embed_affine_layer(normalize(embedding)); mu = encoder_proj(encoder(prompt | units))."""
    vn, flow, prompt = case
    tokens = torch.cat([prompt["prompt_token"], vn.nonstream["speech_units"]])[None]
    with torch.no_grad():
        assert_close(flow.speaker(prompt["embedding"][None])[0], vn.nonstream["flow_spks"], "flow_spks")
        assert_close(flow.encode(tokens)[0], vn.nonstream["flow_mu"], "flow_mu")


def test_first_estimator_call_matches_golden(case):
    """The CFG pair of Euler step 1: row 0 conditioned, row 1 with mu/spks/cond zeroed (solve_euler)."""
    vn, flow, prompt = case
    g = vn.nonstream
    with torch.no_grad():
        pair = flow.decoder.estimator_pair(
            g["flow_noise"][None], g["flow_mu"][None], g["flow_spks"][None], golden_cond(vn, prompt), torch.zeros(1)
        )
    assert_close(pair, g["flow_est_step0_out"], "flow_est_step0_out")


def test_euler_times_match_golden(case):
    """t fed at each step: t_span = 1 - cos(linspace(0,1,n+1) * pi/2), advanced by t += dt."""
    vn, flow, _ = case
    times = torch.cat([t for t, _ in euler_schedule(flow.cfg.n_timesteps, flow.cfg.t_scheduler)])
    assert torch.equal(times, vn.nonstream["flow_t_steps"])


def test_nonstream_mel_matches_golden(case):
    """tts_direct(stream=False): one finalize=True flow call over all units, prompt frames cut off."""
    vn, flow, prompt = case
    g = vn.nonstream
    mel, (mu, _, _) = flow.inference(g["speech_units"][None], *prompt_args(prompt), g["flow_noise"][None], finalize=True)
    assert mu.shape[2] == vn.meta["nonstream"]["flow"]["T_total"]
    assert_close(mel[0], g["flow_mel"], "flow_mel")


def test_streaming_calls_match_golden(case):
    """tts_direct_update(stream=True): call schedule (tokens, offset, finalize) and each call's mel."""
    vn, flow, prompt = case
    streamer = FlowStreamer(flow, *prompt_args(prompt), vn.nonstream["flow_noise"][None])
    calls = []
    for chunk in vn.meta["stream"]["yields"]:
        units = [u for group in chunk["units"] for u in group]
        calls += streamer.push(units, is_last=chunk["is_last"])
    expected = vn.meta["stream"]["vocoder_calls"]
    assert [(c.n_tokens, c.token_offset, c.finalize) for c in calls] == [
        (e["n_tokens"], e["token_offset"], e["finalize"]) for e in expected
    ]
    assert streamer.tokens == vn.stream["stream_units"].tolist()
    for i, call in enumerate(calls):
        assert_close(call.mel[0], vn.stream[f"stream_v{i}_flow_mel"], f"stream_v{i}_flow_mel")
        assert call.new_mel.shape[2] == call.mel.shape[2] - call.token_offset * flow.cfg.token_mel_ratio


# --- exported graphs ---------------------------------------------------------------------------

@pytest.fixture(scope="module")
def exported(case, tmp_path_factory):
    """The encoder graph and the one-step graph as ONNX (opset 20, dynamic token/frame counts)."""
    _, flow, prompt = case
    out = tmp_path_factory.mktemp("flow_onnx")
    frames = torch.export.Dim("frames", min=8, max=8192)
    tokens = torch.export.Dim("tokens", min=4, max=4096)
    mel = flow.cfg.mel_bins
    x, mu, cond = (torch.randn(1, mel, 60) for _ in range(3))  # distinct objects: export would merge one tensor passed thrice
    with torch.no_grad():
        torch.onnx.export(
            FlowEncoderGraph(flow).eval(), (torch.randint(0, flow.cfg.vocab_size, (1, 40)), prompt["embedding"][None]),
            dynamic_shapes=({1: tokens}, {}), dynamo=True, opset_version=20,
            input_names=["tokens", "embedding"], output_names=["mu", "spks"],
        ).save(str(out / "flow_encoder.onnx"))
        torch.onnx.export(
            EulerStepGraph(flow).eval(), (x, mu, torch.randn(1, mel), cond, torch.tensor([0.2]), torch.tensor([0.1])),
            dynamic_shapes=({2: frames}, {2: frames}, {}, {2: frames}, {}, {}), dynamo=True, opset_version=20,
            input_names=["x", "mu", "spks", "cond", "t", "dt"], output_names=["x_next"],
        ).save(str(out / "flow_step.onnx"))
    return out


@pytest.mark.slow
def test_graphs_pass_the_tensorrt_check(exported):
    from edgevoice.export.trt_check import check_trt_compatibility

    for name in ("flow_encoder", "flow_step"):
        result = check_trt_compatibility(str(exported / f"{name}.onnx"), "10.3")
        assert result.ok, result.summary()


@pytest.mark.slow
def test_onnxruntime_flow_matches_golden(case, exported):
    """Encoder graph once, then the step graph 10 times with host-side t/dt, equals the reference mel."""
    import onnxruntime as ort

    vn, flow, prompt = case
    g = vn.nonstream
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    encoder = ort.InferenceSession(str(exported / "flow_encoder.onnx"), options, providers=["CPUExecutionProvider"])
    step = ort.InferenceSession(str(exported / "flow_step.onnx"), options, providers=["CPUExecutionProvider"])
    tokens = torch.cat([prompt["prompt_token"], g["speech_units"]])[None].numpy()
    mu, spks = encoder.run(None, {"tokens": tokens, "embedding": prompt["embedding"][None].numpy()})
    assert_close(mu[0], g["flow_mu"], "onnx flow_mu")
    assert_close(spks[0], g["flow_spks"], "onnx flow_spks")
    x, cond = g["flow_noise"][None].numpy(), golden_cond(vn, prompt).numpy()
    for t, dt in euler_schedule(flow.cfg.n_timesteps, flow.cfg.t_scheduler):
        (x,) = step.run(None, {"x": x, "mu": mu, "spks": spks, "cond": cond, "t": t.numpy(), "dt": dt.numpy()})
    prompt_frames = prompt["prompt_feat"].shape[0]
    assert_close(np.ascontiguousarray(x[0, :, prompt_frames:]), g["flow_mel"], "onnx flow_mel")
