"""Freeze-Omni speech graphs exported to ONNX and run on onnxruntime CPU with state fed back.

Each fixture set's decoder and codec are exported once (about 35 s on 2 cores for the four
graphs). The golden inputs then go through the graphs only, as the runtime would drive them:
speech_prefix -> speech_text -> speech_token per step (state of one fed into the next), greedy
choice and the codec FIFO on the host. Tolerances as in tests/models/freeze_omni/test_speech.py (rtol 1e-4,
atol 1e-4 * max|ref|): onnxruntime reorders float32 sums, which moves results by ~1e-6 relative.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from edgevoice.export.to_onnx import export_onnx
from edgevoice.export.trt_check import check_trt_compatibility
from freeze_omni_sets import fixture_set_params, golden_speech, require_set, speech_limits

from edgevoice.backends.ort import OrtRunner
from edgevoice.recipes.freeze_omni.speech import speech_components
from edgevoice.runtime.freeze_omni.speech_tokens import (
    CodecStreamConfig,
    SpeechAudioStream,
    SpeechTokenRule,
    generate_speech_tokens,
)
from edgevoice.weights.freeze_omni.speech import load_speech


@pytest.fixture(scope="module", params=fixture_set_params())
def exported(request, tmp_path_factory):
    path = require_set(request.param)
    golden, meta = golden_speech(path)
    speech = load_speech(path / "checkpoints", **speech_limits(golden))
    out = tmp_path_factory.mktemp("fo_speech")
    components = {c.name: c for c in speech_components(speech)}
    entries = {name: export_onnx(c, out / f"{name}.onnx", "fp32", max_batch=2) for name, c in components.items()}
    runners = {name: OrtRunner(entry, out / f"{name}.onnx", threads=2) for name, entry in entries.items()}
    return SimpleNamespace(out=out, golden=golden, meta=meta, speech=speech, components=components,
                           entries=entries, runners=runners)


def assert_close(actual, expected, what: str, rel: float = 1e-4) -> None:
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} vs {expected.shape}"
    scale = float(np.abs(expected).max())
    err = float(np.abs(actual - expected).max())
    assert np.allclose(actual, expected, rtol=rel, atol=rel * scale), f"{what}: max |diff| {err:.3g} (max |ref| {scale:.3g})"


class OrtSpeechDecoder:
    """The three decoder graphs over one state dict, the way the runtime drives them."""

    def __init__(self, exported, batch: int = 1):
        self.runners = exported.runners
        self.state = self.runners["speech_token"].initial_state(batch)
        self.logits: list[np.ndarray] = []

    def run(self, name: str, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        runner = self.runners[name]
        outputs = runner.infer({**feeds, **self.state})
        wiring = runner.component.state
        self.state = {wiring[k]: outputs.pop(k) for k in list(outputs) if k in wiring}
        return outputs

    def start(self, prefix: np.ndarray | None, text: np.ndarray) -> None:
        if prefix is not None:
            self.run("speech_prefix", {"prefix": prefix})
        self.run("speech_text", {"text": text})

    def token_step(self, token: int) -> np.ndarray:
        logits = self.run("speech_token", {"token": np.array([[token]], dtype=np.int64)})["logits"][0]
        self.logits.append(logits)
        return logits


def golden_inputs(exported) -> tuple[np.ndarray, np.ndarray]:
    golden = exported.golden
    return golden["tts_prefix_in"][None].numpy(), golden["tts_hidden_in"][None].numpy()


def test_every_graph_passes_the_tensorrt_10_3_check(exported):
    assert set(exported.entries) == {"speech_prefix", "speech_text", "speech_token", "codec"}
    for name in exported.entries:
        result = check_trt_compatibility(str(exported.out / f"{name}.onnx"), "10.3")
        assert result.ok, f"{name}: {result.summary()}"


def test_decoder_graphs_share_one_state_contract(exported):
    names = [{spec.name for spec in exported.entries[n].inputs if spec.name in exported.entries[n].state_inputs}
             for n in ("speech_prefix", "speech_text", "speech_token")]
    assert names[0] == names[1] == names[2] and {"prefix_len", "position"} <= names[0]
    assert exported.entries["speech_token"].stream["shared_state_with"] == ["speech_prefix", "speech_text", "speech_token"]
    assert exported.entries["codec"].state == {}


def test_greedy_tokens_and_logits_through_onnxruntime_match_golden(exported):
    golden, config = exported.golden, exported.speech.decoder_config
    decoder = OrtSpeechDecoder(exported)
    decoder.start(*golden_inputs(exported))
    rule = SpeechTokenRule(config.sos_id, config.eos_id, max_tokens=exported.meta["speech_decoder"]["max_tokens"])
    tokens = list(generate_speech_tokens(decoder.token_step, rule))
    assert tokens == golden["tts_tokens"].tolist()
    assert_close(np.stack(decoder.logits), golden["tts_logits"], "tts_logits (onnxruntime)")
    assert decoder.state["position"].tolist() == [golden["tts_hidden_in"].shape[0] + 1 + len(tokens)]


def test_batched_sessions_keep_their_own_prefix(exported):
    """Two sessions in one batch, one with the golden prefix and one without: rows stay independent."""
    prefix, text = golden_inputs(exported)
    fed = [exported.speech.decoder_config.sos_id, *exported.golden["tts_tokens"][:5].tolist()]
    alone = OrtSpeechDecoder(exported)
    alone.start(None, text)
    expected = [alone.token_step(t) for t in fed]
    both = OrtSpeechDecoder(exported, batch=2)
    both.run("speech_prefix", {"prefix": np.concatenate([prefix, prefix])})
    both.state["prefix_len"][1] = 0  # the second session has no prefix
    both.run("speech_text", {"text": np.concatenate([text, text])})
    rows = [both.run("speech_token", {"token": np.array([[t], [t]], dtype=np.int64)})["logits"] for t in fed]
    assert_close(np.stack([r[1] for r in rows]), np.stack(expected), "no-prefix row in a batch")
    assert_close(np.stack([r[0] for r in rows]), exported.golden["tts_logits"][: len(fed)], "prefixed row in a batch")


def ort_decode(exported):
    runner = exported.runners["codec"]
    return lambda tokens: runner.infer({"tokens": tokens[None].astype(np.int64)})["pcm"][0]


def test_codec_graph_through_the_fifo_matches_golden(exported):
    golden, meta = exported.golden, exported.meta
    for tokens, wav, counts in (
        (golden["tts_tokens"], golden["tts_wav"], meta["speech_decoder"]["yielded_segment_samples"]),
        (golden["codec_fixed_tokens"], golden["codec_full_wav"], meta["codec"]["chunked_yielded_segment_samples"]),
    ):
        stream = SpeechAudioStream(ort_decode(exported), CodecStreamConfig(hop=exported.speech.codec_config.hop))
        pieces = [p for t in tokens.tolist() if (p := stream.push(t)) is not None] + [stream.finish()]
        assert [len(p) for p in pieces if len(p)] == counts
        assert_close(np.concatenate(pieces), wav, "codec pcm (onnxruntime)")


def test_codec_graph_takes_any_window_length(exported):
    codec = exported.speech.codec
    tokens = exported.golden["codec_fixed_tokens"].numpy()
    for length in (1, 7, codec.config.max_tokens):
        with torch.no_grad():
            expected = codec(torch.from_numpy(tokens[:length])[None])[0].numpy()
        assert_close(ort_decode(exported)(tokens[:length]), expected, f"codec window of {length}")


def test_recipe_parity_feeds_through_onnxruntime(exported):
    """Each component's own parity feeds, torch step vs graph, state fed back on both sides."""
    for name, component in exported.components.items():
        module, entry = component.module, exported.entries[name]
        runner = exported.runners[name]
        torch_state, ort_state = module.init_state(1), runner.initial_state(1)
        outputs_n = len(module.output_names())
        atol, rtol = component.parity_tolerance["fp32"]
        for feed in component.parity_feeds():
            with torch.no_grad():
                results = module.step(*(torch.from_numpy(feed[s.name]) for s in module.input_specs()), *torch_state)
            torch_state = results[outputs_n:]
            ort = runner.infer({**feed, **ort_state})
            ort_state = {entry.state[k]: v for k, v in ort.items() if k in entry.state}
            for out, ref in zip(entry.outputs, results):
                assert np.allclose(ort[out.name], ref.numpy(), atol=atol, rtol=rtol), f"{name}.{out.name}"
