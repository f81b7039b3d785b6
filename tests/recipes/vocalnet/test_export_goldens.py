"""`edgevoice export --model vocalnet` on a fixture set: every graph of the package against the goldens.

The package's ONNX graphs run on onnxruntime through the runtime's own adapters
(``edgevoice.runtime.vocalnet.engines``), fed the golden inputs of each stage (teacher forcing).
Reference calls (SJTU-OmniAgent/VocalNet, as the fixture README §4-5 records them):
``omni_speech/infer/vocalnet.py`` ``__call__`` (log-mel, encoder, ``EncoderProjectorConcat``, the
prompt of ``preprocess_llama_3_v1``, greedy ``generate`` with ``output_hidden_states``),
``speech_generator_ar_mtp.py`` ``SpeechGeneratorARMTP.predict_mtp`` (units),
``cosyvoice/flow/flow.py`` ``CausalMaskedDiffWithXvec.inference`` + ``flow_matching.py``
``CausalConditionalCFM.solve_euler`` (mu, spks, the first CFG Euler step, the mel) and
``cosyvoice/hifigan/generator.py`` ``HiFTGenerator.inference`` (F0, audio from the recorded source).
Tolerances as the README's §7 advises: rtol 1e-4, atol 1e-4·max|ref| (1e-3 for audio); ids exact.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgevoice.backends import open_runner
from edgevoice.runtime.vocalnet.engines import (
    DecoderEngines,
    FlowEngines,
    FlowFacts,
    HiftEngines,
)
from edgevoice.runtime.vocalnet.speech_tokens import MtpRule, predict_units
from edgevoice.runtime.vocalnet.turn_input import (
    input_rows,
    pad_or_trim,
    speech_row_count,
)

pytestmark = pytest.mark.slow  # one export of the fixture folders for the whole module


def assert_close(actual, expected, what: str, rel: float = 1e-4) -> None:
    actual, expected = np.asarray(actual, np.float64), np.asarray(expected, np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} vs {expected.shape}"
    scale = float(np.abs(expected).max())
    err = float(np.abs(actual - expected).max())
    assert np.allclose(actual, expected, rtol=rel, atol=rel * scale), f"{what}: max |diff| {err:.3g} (max |ref| {scale:.3g})"


def golden(s, name: str) -> np.ndarray:
    return s.nonstream[name].numpy()


def runner(manifest, name: str):
    return open_runner(manifest, name, backend="ort")


def test_manifest_says_what_the_runtime_needs(fixture_export):
    s, manifest = fixture_export
    config = manifest.config
    assert manifest.recipe == "vocalnet"
    assert config["pipeline"] == ["vad", "vn_listen", "vn_llm", "speech_text", "speech_units", "flow_encoder",
                                  "flow_step", "hift_source", "hift_decode"]
    assert config["llm"]["prompt_ids"] == s.meta["nonstream"]["prompt_input_ids"]
    assert config["llm"]["eot_id"] == 128009 and config["llm"]["vocab_size"] == s.hparams["llm"]["vocab_size"]
    assert config["speech"]["heads"] == 1 + s.meta["nonstream"]["sg_predict_kwargs"]["infer_mtp_token_num"]
    np.testing.assert_allclose([t for t, _ in config["flow"]["euler"]], s.meta["nonstream"]["flow"]["t_span"][:-1],
                               rtol=0, atol=1e-7)
    assert "Apache-2.0" in config["licenses"]["weights"] and config["checkpoint"]["stamp"]
    for c in manifest.components.values():  # every graph passed the TensorRT 10.3 op check
        assert "OK" in c.trt_check["10.3"], (c.name, c.trt_check)
    voice = np.load(manifest.path(config["flow"]["voice_file"]))
    for key in ("prompt_token", "prompt_feat", "embedding"):  # the voice prompt ships as package data
        np.testing.assert_array_equal(voice[key], _prompt(s)[key].reshape(voice[key].shape))
    budgets = config["published_budget"]
    assert set(budgets) == {"VocalNet-1B", "VocalNet-8B"}
    assert budgets["VocalNet-1B"]["targets"]["jetson-orin-agx"]["fits"]


def _prompt(s) -> dict:
    from safetensors.numpy import load_file

    return load_file(str(s.prompt_dir / "prompt_inputs.safetensors"))


def test_listen_graph_matches_the_projector_goldens(fixture_export):
    """The graph's rows, then the runtime's row count and input rows (``runtime/vocalnet/turn_input.py``)."""
    s, manifest = fixture_export
    listen = manifest.config["listen"]
    audio = pad_or_trim(golden(s, "audio_16k"), listen["window_samples"])[None]
    rows = runner(manifest, "vn_listen").infer({"audio": audio})["speech_embeds"][0]
    assert_close(rows, golden(s, "projector_out"), "projector_out")
    n = speech_row_count(golden(s, "audio_16k").size, listen["window_samples"], listen["n_frames"], listen["k"])
    table = np.load(manifest.path(manifest.config["llm"]["embed_tokens"]))
    embeds = input_rows(np.array(manifest.config["llm"]["prompt_ids"]), golden(s, "projector_out")[:n], table)
    assert_close(embeds, golden(s, "llm_inputs_embeds"), "llm_inputs_embeds")


def test_llm_graph_answers_greedily_with_the_golden_hidden_states(fixture_export):
    s, manifest = fixture_export
    llm = manifest.config["llm"]
    stream = runner(manifest, "vn_llm").stream()
    rows, step = golden(s, "llm_inputs_embeds"), llm["prefill_max_tokens"]
    for start in range(0, rows.shape[0], step):  # the prompt in prefill chunks
        out = stream({"input_embeds": rows[None, start:start + step], "position": np.array([start])})
    table = np.load(manifest.path(llm["embed_tokens"]))
    ids, hidden, position = [], [], rows.shape[0]
    expected = golden(s, "text_ids").tolist()
    for _ in expected:
        hidden.append(out["hidden"][0])
        ids.append(int(np.argmax(out["logits"][0])))
        if ids[-1] == llm["eot_id"]:
            break
        out = stream({"input_embeds": table[ids[-1]][None, None], "position": np.array([position])})
        position += 1
    assert ids == expected
    assert_close(np.stack(hidden), golden(s, "llm_step_hidden"), "llm_step_hidden")


def test_speech_decoder_graphs_give_the_golden_units(fixture_export):
    s, manifest = fixture_export
    speech = manifest.config["speech"]
    engines = DecoderEngines(runner(manifest, "speech_text"), runner(manifest, "speech_units"))
    rule = MtpRule.nonstreaming(speech["sos_id"], speech["eos_id"], speech["heads"])
    units = predict_units(engines, golden(s, "sg_input"), rule)
    assert units == golden(s, "sg_output_tokens").tolist()


def _flow(s, manifest, noise: np.ndarray) -> FlowEngines:
    prompt = _prompt(s)
    return FlowEngines(runner(manifest, "flow_encoder"), runner(manifest, "flow_step"),
                       FlowFacts.from_config(manifest.config["flow"]), prompt["prompt_token"],
                       prompt["prompt_feat"], prompt["embedding"], noise)


def test_flow_graphs_match_the_conditioning_euler_step_and_mel(fixture_export):
    s, manifest = fixture_export
    prompt = _prompt(s)
    tokens = np.concatenate([prompt["prompt_token"], golden(s, "speech_units")])[None].astype(np.int64)
    out = runner(manifest, "flow_encoder").infer({"tokens": tokens, "speaker_embedding": prompt["embedding"][None]})
    assert_close(out["mu"][0], golden(s, "flow_mu"), "flow_mu")
    assert_close(out["spks"][0], golden(s, "flow_spks"), "flow_spks")
    # One CFG Euler step from the golden start point: z + dt * (1.7 est(cond) - 0.7 est(uncond)).
    z, pair = golden(s, "flow_noise"), golden(s, "flow_est_step0_out")
    cond = np.zeros_like(z)
    cond[:, :prompt["prompt_feat"].shape[0]] = prompt["prompt_feat"].T
    t, dt = manifest.config["flow"]["euler"][0]
    feeds = {"x": z[None], "mu": out["mu"], "spks": out["spks"], "cond": cond[None],
             "t": np.array([t], np.float32), "dt": np.array([dt], np.float32)}
    step = runner(manifest, "flow_step").infer(feeds)["x_next"][0]
    assert_close(step, z + np.float32(dt) * (1.7 * pair[0] - 0.7 * pair[1]), "first Euler step")
    mel = _flow(s, manifest, z).mel(golden(s, "speech_units").tolist(), finalize=True)
    assert_close(mel, golden(s, "flow_mel"), "flow_mel")


def test_hift_graphs_match_f0_and_audio(fixture_export):
    s, manifest = fixture_export
    hift = manifest.config["hift"]
    engines = HiftEngines(runner(manifest, "hift_source"), runner(manifest, "hift_decode"), hift["samples_per_frame"])
    mel = golden(s, "flow_mel")[None]
    phase = golden(s, "hift_phase_vec")[None]
    noise = np.zeros((1, hift["harmonics"], mel.shape[-1] * hift["samples_per_frame"]), np.float32)
    f0, _ = engines.source(mel, phase, noise)
    assert_close(f0[0], golden(s, "hift_f0"), "hift_f0")
    audio = engines.decode(mel, golden(s, "hift_source")[None, None])[0]
    assert_close(audio, golden(s, "wav_nonstream"), "wav_nonstream", rel=1e-3)


def test_pipeline_streams_the_golden_text_units_and_chunks(fixture_export):
    """The run-time pipeline on the package (``runtime/vocalnet/pipeline.py``) against the streaming
    goldens of ``vocalnet_streaming.py``: the same text, every unit handed to the vocoder, and the
    same audio samples per vocoder chunk (the audio itself differs: HiFT's source is random)."""
    from edgevoice.runtime.vocalnet.pipeline import VocalNetPipeline

    s, manifest = fixture_export
    units, tokens, samples = [], [], []
    for step in VocalNetPipeline(manifest).respond(golden(s, "audio_16k")):
        if step.kind == "units":
            units += step.units
        elif step.kind == "token":
            tokens.append(step.token)
        elif step.kind == "pcm":
            samples.append(step.pcm.size)
    assert tokens == s.stream["stream_text_ids"].tolist()[:-1]  # the end id is not text
    assert units == s.stream["stream_units"].tolist()
    assert samples == [s.stream[f"stream_v{i}_wav"].numel() for i in range(len(s.meta["stream"]["vocoder_calls"]))]
