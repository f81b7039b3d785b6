"""VocalNet's MTP speech decoder against the reference goldens: torch, and the ONNX graphs on onnxruntime.

Reference: omni_speech/model/speech_generator/speech_generator_ar_mtp.py (SJTU-OmniAgent/VocalNet),
``SpeechGeneratorARMTP.pre_nn_forward`` / ``transformer_infer`` / ``infer_mtp_layer`` (the passes),
``predict_mtp`` (non-streaming loop, goldens in nonstream.safetensors) and ``streaming_predict_mtp``
(per-call loop, goldens in stream.safetensors; per-call cache lengths in meta.json → stream.sg_calls).
Tolerances as the fixture README advises: rtol 1e-4, atol 1e-4 · max|ref|; units exact.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from vn_fixtures import fixture_params, load_set

from edgevoice.errors import EdgevoiceError
from edgevoice.models.vocalnet.speech_decoder import speech_decoder_steps
from edgevoice.runtime.vocalnet.speech_tokens import (
    MtpRule,
    StreamingUnits,
    predict_units,
)
from edgevoice.weights.vocalnet.checkpoint import load_vocalnet_checkpoint
from edgevoice.weights.vocalnet.speech_decoder import load_speech_decoder


def assert_close(actual, expected, what: str, rel: float = 1e-4) -> None:
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} vs {expected.shape}"
    scale = float(np.abs(expected).max())
    err = float(np.abs(actual - expected).max())
    assert np.allclose(actual, expected, rtol=rel, atol=rel * scale), f"{what}: max |diff| {err:.3g} (max |ref| {scale:.3g})"


def stream_calls(s) -> list[tuple[np.ndarray, list[int]]]:
    """(input rows, output units) of each recorded streaming_predict_mtp call, in order."""
    count = len(s.meta["stream"]["sg_calls"])
    return [(s.stream[f"stream_sg_call{i}_input"].numpy(), s.stream[f"stream_sg_call{i}_output"].tolist())
            for i in range(count)]


@pytest.fixture(scope="module", params=fixture_params())
def vn(request):
    s = load_set(request.param)
    checkpoint = load_vocalnet_checkpoint(s.vocalnet_dir, s.whisper_dir)
    mtp_used = int(s.meta["nonstream"]["sg_predict_kwargs"]["infer_mtp_token_num"])
    # Capacities from the goldens (small caches keep the graphs quick); rows + BOS, units fed.
    text_rows = s.nonstream["sg_input"].shape[0] + 1
    speech_rows = max(s.nonstream["sg_output_tokens"].shape[0], len(s.meta["stream"]["units"]) + 2) + mtp_used + 1
    decoder = load_speech_decoder(checkpoint.speech_generator, checkpoint.config.generator, str(s.vocalnet_dir),
                                  mtp_used=mtp_used, max_text_rows=text_rows, max_speech_rows=speech_rows)
    g = checkpoint.config.generator
    return SimpleNamespace(set=s, decoder=decoder, generator=g, checkpoint=checkpoint,
                           nonstream_rule=MtpRule.nonstreaming(g.sos_id, g.eos_id, 1 + mtp_used),
                           stream_rule=MtpRule.streaming(g.sos_id, g.eos_id, 1 + mtp_used, chunk_units=g.speech_token_num))


class TorchGraphs:
    """The two step views over one state tuple, driven like the runtime drives the graphs."""

    def __init__(self, decoder):
        self.steps = speech_decoder_steps(decoder)
        self.state = decoder.empty_state()
        self.logits: list[np.ndarray] = []

    @torch.no_grad()
    def text(self, rows, prenn_len, text_len):
        self.state = self.steps["speech_text"].step(
            torch.from_numpy(rows)[None], torch.tensor([prenn_len]), torch.tensor([text_len]), *self.state)

    @torch.no_grad()
    def units(self, tokens, text_len, speech_len):
        logits, *self.state = self.steps["speech_units"].step(
            torch.tensor([list(tokens)]), torch.tensor([text_len]), torch.tensor([list(speech_len)]), *self.state)
        self.logits.append(logits[0].numpy())
        return self.logits[-1]


# --- torch ------------------------------------------------------------------------------------

def test_pre_nn_and_prefill_match_golden(vn):
    """pre_nn_forward (causal, positions 0..T-1) and transformer_infer over [emb(BOS) ⊕ pre-NN] (predict_mtp)."""
    g = vn.set.nonstream
    zero = torch.zeros(1, dtype=torch.long)
    with torch.no_grad():
        pre, decoded, _ = vn.decoder.text_pass(g["sg_input"][None], zero, zero, vn.decoder.empty_state())
    assert_close(pre[0], g["sg_pre_nn_out"], "sg_pre_nn_out")
    assert_close(decoded[0], g["sg_prefill_out"], "sg_prefill_out")


def test_nonstream_units_and_first_logits(vn):
    """predict_mtp with greedy choice: every unit exact, the first 4 cycles' logits of each head close."""
    g = vn.set.nonstream
    graphs = TorchGraphs(vn.decoder)
    units = predict_units(graphs, g["sg_input"].numpy(), vn.nonstream_rule)
    assert units == g["sg_output_tokens"].tolist()
    assert units[1:-1] == g["speech_units"].tolist()
    first = np.stack(graphs.logits[:4])  # (4, N, V): main head before the penalty, then MTP heads
    assert_close(first[:, 0], g["sg_main_logits_first"], "main head logits")
    for j in range(vn.decoder.config.mtp_used):
        assert_close(first[:, j + 1], g[f"sg_mtp{j}_logits_first"], f"MTP head {j} logits")
    assert len(graphs.logits) == vn.set.meta["nonstream"]["sg_n_main_steps"]


def test_streaming_calls_match_golden(vn):
    """streaming_predict_mtp call by call: units exact, cache lengths as meta.json → stream.sg_calls records."""
    calls = stream_calls(vn.set)
    units = StreamingUnits(TorchGraphs(vn.decoder), vn.stream_rule)
    for i, ((rows, expected), record) in enumerate(zip(calls, vn.set.meta["stream"]["sg_calls"])):
        got = units(rows, last=record["is_last"])
        assert got == expected, f"call {i}"
        p = units.positions
        assert (p.prenn_len, p.text_len, p.speech_len[0]) == (
            record["prenn_kv_len"], record["kv_text_len"], record["kv_speech_len"] - record["kv_text_len"]), f"call {i}"
    assert units.all_units[1:-1] == vn.set.stream["stream_units"].tolist()


def test_text_in_chunks_equals_text_at_once(vn):
    """The streaming contract: pre-NN rows fed in chunks equal one call, and later chunks never change them."""
    rows = vn.set.nonstream["sg_input"][None]
    decoder, state = vn.decoder, vn.decoder.empty_state()
    zero = torch.zeros(1, dtype=torch.long)
    with torch.no_grad():
        whole_pre, whole_dec, whole_state = decoder.text_pass(rows, zero, zero, state)
        pieces, prenn, text = [], 0, 0
        for start in range(0, rows.shape[1], 4):
            chunk = rows[:, start:start + 4]
            pre, _, state = decoder.text_pass(chunk, torch.tensor([prenn]), torch.tensor([text]), state)
            pieces.append(pre)
            prenn, text = prenn + chunk.shape[1], text + chunk.shape[1] + (1 if text == 0 else 0)
        assert_close(torch.cat(pieces, 1), whole_pre, "chunked pre-NN rows")
        sos = torch.tensor([[decoder.config.sos_id]])
        speech = torch.zeros(1, decoder.config.heads_per_step, dtype=torch.long)
        at_once, _, _ = decoder.unit_pass(sos, torch.tensor([text]), speech, whole_state)
        chunked, _, _ = decoder.unit_pass(sos, torch.tensor([text]), speech, state)
    assert text == whole_dec.shape[1]
    assert_close(chunked, at_once, "first unit logits after chunked text")


def test_rows_past_the_counters_are_invisible(vn):
    """A module the host did not advance may hold stale rows: a repeated step with the same counters repeats its logits."""
    graphs = TorchGraphs(vn.decoder)
    graphs.text(vn.set.nonstream["sg_input"].numpy(), 0, 0)
    text_len = vn.set.nonstream["sg_input"].shape[0] + 1
    heads = vn.decoder.config.heads_per_step
    first = graphs.units([vn.generator.sos_id], text_len, [0] * heads)
    graphs.units([7, 8, 9][:heads], text_len, [1] * heads)  # written, then rolled back by not advancing
    again = graphs.units([7, 8, 9][:heads], text_len, [1] * heads)
    other = graphs.units([10, 11, 12][:heads], text_len, [1] * heads)
    assert graphs.logits[1].shape == (heads, vn.generator.vocab)
    np.testing.assert_array_equal(graphs.logits[1], again)
    assert not np.allclose(again, other), "different units must change the logits"
    assert first.shape == again.shape


def test_fp16_compute_keeps_the_first_cycles_logits(vn):
    """fp16 caches and math (what an fp16 export runs), teacher-forced with the golden units: cosine >= 0.999 per head."""
    import copy

    g, heads = vn.set.nonstream, vn.decoder.config.heads_per_step
    graphs = TorchGraphs(copy.deepcopy(vn.decoder))
    for step in graphs.steps.values():
        step.set_compute_dtype(torch.float16)
    graphs.state = graphs.steps["speech_text"].decoder.empty_state()  # fp16 caches
    graphs.text(g["sg_input"].numpy(), 0, 0)
    text_len, units = g["sg_input"].shape[0] + 1, g["sg_output_tokens"].tolist()
    feeds = [units[:1]] + [units[1 + heads * i: 1 + heads * (i + 1)] for i in range(3)]
    for fed, done in zip(feeds, [0, 1, 1 + heads, 1 + 2 * heads]):
        graphs.units(fed, text_len, [done] * heads)
    got = torch.from_numpy(np.stack(graphs.logits))  # (4, N, V)
    refs = [g["sg_main_logits_first"]] + [g[f"sg_mtp{j}_logits_first"] for j in range(heads - 1)]
    for head, ref in enumerate(refs):
        cosine = torch.nn.functional.cosine_similarity(got[:, head].double(), ref.double(), dim=-1)
        assert float(cosine.min()) >= 0.999, f"head {head}: cosine {cosine.tolist()}"


def test_weights_are_placed_strictly(vn):
    """Every speech_generator tensor is placed once: a missing, extra or mis-shaped one is refused by name."""
    tensors, g, src = dict(vn.checkpoint.speech_generator), vn.generator, "fixture"
    missing = {k: v for k, v in tensors.items() if k != "mtp_layers.0.norm_final.weight"}
    with pytest.raises(EdgevoiceError, match="mtp_layers.0.norm_final.weight"):
        load_speech_decoder(missing, g, src)
    with pytest.raises(EdgevoiceError, match="decode_layers.99.foo"):
        load_speech_decoder({**tensors, "decode_layers.99.foo": torch.zeros(1)}, g, src)
    with pytest.raises(EdgevoiceError, match="output_proj.bias"):
        load_speech_decoder({**tensors, "output_proj.bias": torch.zeros(3)}, g, src)
    with pytest.raises(EdgevoiceError, match="mtp_used"):
        load_speech_decoder(tensors, g, src, mtp_used=g.mtp_num + 1)
    last = f"mtp_layers.{g.mtp_num - 1}.output_proj.bias"  # placed even when fewer heads run
    decoder = load_speech_decoder(tensors, g, src, mtp_used=1)
    assert torch.equal(decoder.mtp_layers[g.mtp_num - 1].output_proj.bias, tensors[last].float())


# --- ONNX on onnxruntime ----------------------------------------------------------------------

@pytest.fixture(scope="module")
def exported(vn, tmp_path_factory):
    from edgevoice.export.to_onnx import export_onnx

    from edgevoice.backends.ort import OrtRunner
    from edgevoice.recipes.base import RecipeComponent

    out = tmp_path_factory.mktemp("vocalnet_speech_decoder")
    runners, paths = {}, {}
    for name, module in speech_decoder_steps(vn.decoder).items():
        component = RecipeComponent(name=name, module=module, stream={}, license="Apache-2.0")
        paths[name] = out / f"{name}.onnx"
        entry = export_onnx(component, paths[name], "fp32", max_batch=2)
        runners[name] = OrtRunner(entry, paths[name], threads=2)
    return SimpleNamespace(runners=runners, paths=paths)


class OrtGraphs:
    """The exported graphs over one state dict, the way the runtime drives them."""

    def __init__(self, exported):
        self.runners = exported.runners
        self.state = self.runners["speech_units"].initial_state(1)
        self.logits: list[np.ndarray] = []

    def _run(self, name, feeds):
        runner = self.runners[name]
        outputs = runner.infer({**feeds, **self.state})
        wiring = runner.component.state
        self.state = {wiring[k]: outputs.pop(k) for k in list(outputs) if k in wiring}
        return outputs

    def text(self, rows, prenn_len, text_len):
        self._run("speech_text", {"rows": rows[None].astype(np.float32), "prenn_len": np.array([prenn_len]),
                                  "text_len": np.array([text_len])})

    def units(self, tokens, text_len, speech_len):
        out = self._run("speech_units", {"tokens": np.array([list(tokens)], dtype=np.int64),
                                         "text_len": np.array([text_len]), "speech_len": np.array([list(speech_len)])})
        self.logits.append(out["logits"][0])
        return self.logits[-1]


@pytest.mark.slow  # the module fixture exports both graphs: ~90 s on 2 busy cores
def test_onnx_nonstream_units_and_logits(vn, exported):
    """The exported graphs reproduce predict_mtp: units exact, first cycles' logits of every head close."""
    g = vn.set.nonstream
    graphs = OrtGraphs(exported)
    assert predict_units(graphs, g["sg_input"].numpy(), vn.nonstream_rule) == g["sg_output_tokens"].tolist()
    first = np.stack(graphs.logits[:4])
    assert_close(first[:, 0], g["sg_main_logits_first"], "onnx main head logits")
    for j in range(vn.decoder.config.mtp_used):
        assert_close(first[:, j + 1], g[f"sg_mtp{j}_logits_first"], f"onnx MTP head {j} logits")


@pytest.mark.slow  # the module fixture exports both graphs: ~90 s on 2 busy cores
def test_onnx_streaming_calls(vn, exported):
    """The exported graphs reproduce streaming_predict_mtp call by call."""
    units = StreamingUnits(OrtGraphs(exported), vn.stream_rule)
    for i, ((rows, expected), record) in enumerate(zip(stream_calls(vn.set), vn.set.meta["stream"]["sg_calls"])):
        assert units(rows, last=record["is_last"]) == expected, f"call {i}"


@pytest.mark.slow  # the module fixture exports both graphs: ~90 s on 2 busy cores
def test_graphs_pass_the_trt_10_3_op_check(exported):
    from edgevoice.export.trt_check import check_trt_compatibility

    for name, path in exported.paths.items():
        result = check_trt_compatibility(path, "10.3")
        assert result.ok, f"{name}: {result.summary()}"
