"""VocalNet's listening side against the reference goldens (``golden/nonstream.safetensors``).

Reference: ``omni_speech/infer/vocalnet.py`` ``VocalNetModel.__call__`` (log-mel, speech_length,
prompt ids), ``omni_speech/model/omni_speech_arch.py`` ``encode_speech`` and
``prepare_inputs_labels_for_speech_and_text`` (encoder, projector, embedding assembly),
``omni_speech/model/speech_projector/speech_projector.py`` ``EncoderProjectorConcat``,
``omni_speech/datasets/preprocess.py`` ``preprocess_llama_3_v1`` (chat template), and
``omni_speech/model/language_model/omni_speech2s_llama.py`` ``generate`` (greedy ids; the speech
decoder's input is ``hidden_states[-1]``, the final-RMSNorm output, of the step that produced each token).

Each stage is teacher-forced from the golden input of that stage (fixture README §7), then the
chain is checked once from the audio. Tolerance (README §7): float32 vs float32 reference,
max |Δ| <= 1e-4 · max |golden|; ids exact.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from edgevoice.export.to_onnx import export_onnx
from edgevoice.export.trt_check import check_trt_compatibility
from vn_fixtures import fixture_params, load_set

from edgevoice.models.llm import Llama3RopeScaling, LlmStep, ScaledRotaryEmbedding
from edgevoice.models.vocalnet.prompt import (
    SPEECH_PLACEHOLDER,
    assemble_inputs_embeds,
    llama3_prompt_ids,
    pad_or_trim,
    speech_frames,
    speech_rows,
)
from edgevoice.recipes.base import RecipeComponent
from edgevoice.weights.vocalnet.checkpoint import (
    build_listen,
    build_llm,
    load_vocalnet_checkpoint,
)

REL_TOL = 1e-4


def rel_err(x, ref) -> float:
    x, ref = torch.as_tensor(np.asarray(x)), torch.as_tensor(np.asarray(ref))
    assert x.shape == ref.shape, f"shape {tuple(x.shape)} != golden {tuple(ref.shape)}"
    return float((x.double() - ref.double()).abs().max() / ref.double().abs().max())


class Parts:
    def __init__(self, root):
        self.fixture = load_set(root)
        self.golden = self.fixture.nonstream
        self.ckpt = load_vocalnet_checkpoint(self.fixture.vocalnet_dir)
        self.listen = build_listen(self.ckpt)
        self.llm = build_llm(self.ckpt)

    def padded_audio(self) -> torch.Tensor:  # (1, window)
        return torch.from_numpy(pad_or_trim(self.golden["audio_16k"].numpy(), self.listen.config.window_samples))[None]

    def golden_mel(self) -> torch.Tensor:  # (1, n_mels, n_frames): stored frames + the constant padding value
        stored = self.golden["whisper_log_mel"]
        full = torch.full((stored.shape[0], self.listen.config.n_frames), float(self.golden["whisper_log_mel_pad_value"]))
        full[:, : stored.shape[1]] = stored
        return full[None]

    def rows(self) -> int:
        c = self.listen.config
        return speech_rows(len(self.golden["audio_16k"]), c.window_samples, c.n_frames, self.listen.projector.k)


@pytest.fixture(scope="module", params=fixture_params())
def parts(request):
    return Parts(request.param)


@torch.no_grad()
def test_log_mel(parts):
    mel = parts.listen.log_mel(parts.padded_audio())
    assert rel_err(mel, parts.golden_mel()) <= REL_TOL


@torch.no_grad()
def test_encoder_out(parts):
    assert rel_err(parts.listen.encode(parts.golden_mel())[0], parts.golden["encoder_out"]) <= REL_TOL


@torch.no_grad()
def test_projector_out(parts):
    assert rel_err(parts.listen.projector(parts.golden["encoder_out"][None])[0], parts.golden["projector_out"]) <= REL_TOL


@torch.no_grad()
def test_audio_to_speech_rows_chained(parts):
    assert rel_err(parts.listen(parts.padded_audio())[0], parts.golden["projector_out"]) <= REL_TOL


def test_prompt_ids_and_speech_rows(parts):
    ids = llama3_prompt_ids(parts.fixture.vocalnet_dir / "tokenizer.json")
    assert ids.tolist() == parts.golden["prompt_input_ids"].tolist()
    assert ids.tolist() == parts.fixture.meta["nonstream"]["prompt_input_ids"]
    c = parts.listen.config
    assert speech_frames(len(parts.golden["audio_16k"]), c.window_samples, c.n_frames) == parts.fixture.meta["nonstream"]["speech_length_frames"]
    assert len(ids) - 1 + parts.rows() == parts.golden["llm_inputs_embeds"].shape[0]


def test_inputs_embeds(parts):
    ids = parts.golden["prompt_input_ids"].numpy()
    speech = parts.golden["projector_out"][: parts.rows()].numpy()
    embeds = assemble_inputs_embeds(ids, speech, parts.llm.model.embed_tokens.weight.detach().numpy(),
                                    parts.ckpt.config.tokenizer_max_length)
    assert rel_err(embeds, parts.golden["llm_inputs_embeds"]) <= REL_TOL
    with pytest.raises(ValueError, match="exactly one speech placeholder"):
        assemble_inputs_embeds(ids[ids != SPEECH_PLACEHOLDER], speech, parts.llm.model.embed_tokens.weight.detach().numpy())


def prompt_pass(llm, embeds: torch.Tensor, capacity: int):
    caches = llm.empty_cache(1, capacity)
    return llm.run(embeds[None], torch.zeros(1, dtype=torch.long), caches)


@torch.no_grad()
def test_prompt_last_hidden(parts):
    hidden, _ = prompt_pass(parts.llm, parts.golden["llm_inputs_embeds"], parts.golden["llm_inputs_embeds"].shape[0])
    assert rel_err(hidden[0], parts.golden["llm_prompt_last_hidden"]) <= REL_TOL


@torch.no_grad()
def test_llama3_rope_scaling_is_what_the_hidden_states_need(parts):
    """Without the llama3 frequency scaling the prompt pass leaves the tolerance: the test can tell."""
    from transformers import LlamaConfig
    from transformers.modeling_rope_utils import ROPE_INIT_FUNCTIONS

    c = parts.ckpt.config.llm
    s = c.rope_scaling
    hf = LlamaConfig(hidden_size=c.head_dim * c.heads, num_attention_heads=c.heads, head_dim=c.head_dim, rope_theta=c.rope_base,
                     rope_scaling={"rope_type": "llama3", "factor": s.factor, "low_freq_factor": s.low_freq_factor,
                                   "high_freq_factor": s.high_freq_factor, "original_max_position_embeddings": s.original_context})
    expected, _ = ROPE_INIT_FUNCTIONS["llama3"](hf, "cpu")
    ours = ScaledRotaryEmbedding(c.head_dim, c.rope_base, s)
    assert torch.allclose(ours.inv_freq, expected.float(), rtol=1e-6, atol=0)
    assert torch.equal(ours.half().inv_freq, ScaledRotaryEmbedding(c.head_dim, c.rope_base, s).inv_freq)  # survives casts
    unscaled = build_llm(parts.ckpt)
    unscaled.rotary = ScaledRotaryEmbedding(c.head_dim, c.rope_base, Llama3RopeScaling(1.0, 1.0, 4.0, s.original_context))
    hidden, _ = prompt_pass(unscaled, parts.golden["llm_inputs_embeds"], parts.golden["llm_inputs_embeds"].shape[0])
    assert rel_err(hidden[0], parts.golden["llm_prompt_last_hidden"]) > 10 * REL_TOL


@torch.no_grad()
def test_greedy_text_ids_step_hidden_and_logits(parts):
    """Greedy decode on the cached decode step; row k of the hidden output is what the speech decoder gets."""
    g, llm = parts.golden, parts.llm
    embeds = g["llm_inputs_embeds"]
    capacity = embeds.shape[0] + g["text_ids"].shape[0]
    decode = LlmStep(llm, tokens=1)
    hidden, caches = prompt_pass(llm, embeds, capacity)
    last = hidden[:, -1]
    logits = llm.logits(last)
    ids, rows, top_values, top_ids = [], [], [], []
    position = embeds.shape[0]
    eot = int(g["text_ids"][-1])
    for _ in range(g["text_ids"].shape[0]):
        rows.append(last[0])
        top = torch.topk(logits[0], 8)
        top_values.append(top.values)
        top_ids.append(top.indices)
        ids.append(int(logits[0].argmax()))
        if ids[-1] == eot:
            break
        logits, last, *caches = decode.step(torch.tensor([[ids[-1]]]), torch.tensor([position]), *caches)
        position += 1
    assert ids == g["text_ids"].tolist()
    assert rel_err(torch.stack(rows), g["llm_step_hidden"]) <= REL_TOL
    assert torch.equal(torch.stack(top_ids), g["llm_logits_top8_ids"])
    assert rel_err(torch.stack(top_values), g["llm_logits_top8_values"]) <= REL_TOL


def test_listen_graph_on_onnxruntime_and_tensorrt_10_3(parts, tmp_path):
    component = RecipeComponent(name="vn_listen", module=parts.listen, stream={}, license="Apache-2.0")
    path = tmp_path / "vn_listen.onnx"
    export_onnx(component, path, "fp32", max_batch=1)
    trt = check_trt_compatibility(str(path), "10.3")
    assert trt.ok, trt.summary()
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    (speech,) = session.run(None, {"audio": parts.padded_audio().numpy()})
    assert rel_err(speech[0], parts.golden["projector_out"]) <= REL_TOL
