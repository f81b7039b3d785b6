"""`edgevoice export --model vocalnet` on a VocalNet folder of the Qwen2.5 family (VocalNet-qwen25-7B's layout).

The folder is built here: a tiny Qwen2 LLM made with transformers' ``Qwen2ForCausalLM`` (random
weights, stored bf16 as the trainer saves them, untied ``lm_head``, q/k/v biases), the speech
parts (Whisper encoder copy, projector, MTP speech decoder) copied from the ``vocalnet_small``
fixture, a ChatML tokenizer with Qwen2.5's special ids (the freeze_omni_small fixture's byte-level
BPE with ``<|endoftext|>`` 151643, ``<|im_start|>`` 151644, ``<|im_end|>`` 151645) and a chat
template that, like Qwen2.5-Instruct's, writes a default system block when a conversation has none.

References (SJTU-OmniAgent/VocalNet at bdf01d2):
``omni_speech/model/language_model/omni_speech2s_qwen2.py`` (``OmniSpeech2SConfig.model_type``
"omni_speech2s_qwen"; ``streaming_generate_mtp`` stops at 151645 = <|im_end|> and closes the speech
decoder's input with embed(151643) = <|endoftext|>), ``omni_speech/datasets/preprocess.py``
``preprocess_qwen_2_5_v1`` and ``omni_speech/infer/vocalnet.py`` ``VocalNetModel.__call__`` (the
prompt), and transformers' ``Qwen2ForCausalLM`` (the LLM the reference runs).
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHARED_FIXTURES
from edgevoice.export import export_package
from edgevoice.export.trt_check import check_trt_compatibility
from safetensors.torch import load_file, save_file

from edgevoice.backends import open_runner
from edgevoice.errors import EdgevoiceError
from edgevoice.models.vocalnet.prompt import SPEECH_PLACEHOLDER, SPEECH_TEXT
from edgevoice.runtime.vocalnet.turn_input import input_rows
from edgevoice.weights.vocalnet.chat import (
    QWEN_SYSTEM,
    chat_template,
    read_chat_facts,
    render,
    special_tokens,
)

pytestmark = pytest.mark.slow  # one export of the built folder for the module (~1 min on 2 cores)

VOCALNET = SHARED_FIXTURES / "vocalnet_small"
CHATML_TOKENIZER = SHARED_FIXTURES / "freeze_omni_small" / "llm" / "tokenizer.json"
QWEN_IDS = {"<|endoftext|>": 151643, "<|im_start|>": 151644, "<|im_end|>": 151645}
# Qwen2.5-7B-Instruct's config.json at toy width: vocab, rope theta, eps, untied head and special ids as published.
LLM = {"vocab_size": 152064, "hidden_size": 16, "intermediate_size": 40, "num_hidden_layers": 2,
       "num_attention_heads": 2, "num_key_value_heads": 1, "max_position_embeddings": 32768, "rope_theta": 1000000.0,
       "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "use_sliding_window": False, "sliding_window": 131072,
       "max_window_layers": 2, "bos_token_id": 151643, "eos_token_id": 151645, "hidden_act": "silu"}
# ChatML with Qwen2.5-Instruct's behaviour: a default system block when the conversation has none.
TEMPLATE = (
    "{%- if messages[0]['role'] != 'system' %}"
    "{{- '<|im_start|>system\\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\\n' }}"
    "{%- endif %}"
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}{{- '<|im_start|>assistant\\n' }}{%- endif %}\n"
)
LLM_PREFIXES = ("model.embed_tokens.", "model.layers.", "model.norm.", "lm_head.")


def qwen_tokenizer_json() -> str:
    """The byte-level ChatML tokenizer with its specials moved to Qwen2.5's ids (vocab and added tokens)."""
    data = json.loads(CHATML_TOKENIZER.read_text())
    for token in data["added_tokens"]:
        token["id"] = QWEN_IDS[token["content"]]
        data["model"]["vocab"][token["content"]] = token["id"]
    return json.dumps(data)


def random_qwen2(seed: int = 7):
    """transformers' Qwen2ForCausalLM at toy width, every value bf16-representable (stored exactly)."""
    from transformers import Qwen2Config, Qwen2ForCausalLM

    torch.manual_seed(seed)
    model = Qwen2ForCausalLM(Qwen2Config(**LLM, attn_implementation="eager")).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                value = 1 + 0.1 * torch.randn_like(p)
            elif name.endswith(".bias"):
                value = 0.2 * torch.randn_like(p)  # q/k/v biases: large enough to matter
            elif "embed_tokens" in name:
                value = 0.5 * torch.randn_like(p)
            else:
                value = torch.randn_like(p) / p.shape[1] ** 0.5
            p.copy_(value.bfloat16().float())
    return model


def write_folder(root: Path, model) -> Path:
    """A VocalNet-qwen25 folder: config.json, generation_config.json, tokenizer files, model.safetensors."""
    folder = root / "checkpoints" / "VocalNet-qwen25-tiny"
    folder.mkdir(parents=True)
    speech_config = json.loads((VOCALNET / "checkpoints" / "VocalNet-1B" / "config.json").read_text())
    speech_keys = {k: v for k, v in speech_config.items() if k.startswith(("speech_", "decoder_", "encoder_", "mtp_",
                                                                               "unit_", "txt_", "special_", "llm_"))}
    config = {**LLM, **speech_keys, "model_type": "omni_speech2s_qwen", "architectures": ["OmniSpeech2SQwen2ForCausalLM"],
              "rope_scaling": None, "attention_dropout": 0.0, "torch_dtype": "bfloat16",
              "tokenizer_model_max_length": 4096}
    (folder / "config.json").write_text(json.dumps(config, indent=2))
    (folder / "generation_config.json").write_text(json.dumps({"bos_token_id": 151643, "eos_token_id": [151645, 151643]}))
    (folder / "tokenizer.json").write_text(qwen_tokenizer_json())
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "chat_template": TEMPLATE, "eos_token": "<|im_end|>", "pad_token": "<|endoftext|>", "bos_token": None,
        "tokenizer_class": "Qwen2Tokenizer", "model_max_length": 32768}))
    speech = {k: v for k, v in load_file(str(VOCALNET / "checkpoints" / "VocalNet-1B" / "model.safetensors")).items()
              if not k.startswith(LLM_PREFIXES)}
    llm = {k: v.detach().bfloat16().contiguous() for k, v in model.state_dict().items()}
    save_file({**llm, **speech}, str(folder / "model.safetensors"), metadata={"format": "pt"})
    return folder


def export(folder: Path, out: Path):
    return export_package(model="vocalnet", target="cpu", out=out, weights=folder, cosyvoice=VOCALNET / "CosyVoice2-0.5B",
                          whisper=VOCALNET / "models" / "speech_encoder" / "whisper-large-v3")


@pytest.fixture(scope="module")
def qwen(tmp_path_factory):
    """(the transformers model, its VocalNet folder, the exported package's manifest)."""
    root = tmp_path_factory.mktemp("vn-qwen")
    model = random_qwen2()
    folder = write_folder(root, model)
    return model, folder, export(folder, root / "package")


def expected_prompt(tokenizer) -> list[int]:
    """The ids preprocess_qwen_2_5_v1 + vocalnet.py build, written out: the system turn, the user turn
    with its <|im_start|> and last newline cut ([21:-1] with Qwen2.5's tokenizer), <|endoftext|>,
    then "\\n<|im_start|>assistant\\n" ([198, 151644, 77091, 198] with Qwen2.5's tokenizer)."""
    text = (f"<|im_start|>system\n{QWEN_SYSTEM}<|im_end|>\nuser\n{SPEECH_TEXT}<|im_end|><|endoftext|>"
            "\n<|im_start|>assistant\n")
    before, after = text.split(SPEECH_TEXT)
    encode = lambda s: tokenizer.encode(s, add_special_tokens=False).ids
    return [*encode(before), SPEECH_PLACEHOLDER, *encode(after)]


def test_manifest_carries_the_folders_ids_and_prompt(qwen):
    from tokenizers import Tokenizer

    _, folder, manifest = qwen
    llm = manifest.config["llm"]
    assert llm["family"] == "qwen2"
    assert llm["eot_id"] == QWEN_IDS["<|im_end|>"]  # the streaming loop's stop id
    assert llm["stop_ids"] == [151643, 151645]  # plus generation_config's eos ids
    assert llm["end_row_id"] == QWEN_IDS["<|endoftext|>"]  # txt_eos_emb
    assert llm["vocab_size"] == LLM["vocab_size"] and llm["hidden"] == LLM["hidden_size"]
    assert llm["prompt_ids"] == expected_prompt(Tokenizer.from_file(str(folder / "tokenizer.json")))
    assert "Qwen2.5" in manifest.config["licenses"]["weights"]


def test_the_template_renders_as_transformers_renders_it(qwen):
    """``render`` against transformers' ``apply_chat_template`` on the folder's own tokenizer files."""
    from transformers import AutoTokenizer

    _, folder, _ = qwen
    hf = AutoTokenizer.from_pretrained(str(folder))
    for messages in ([{"role": "system", "content": QWEN_SYSTEM}], [{"role": "user", "content": SPEECH_TEXT}]):
        ours = render(chat_template(folder), messages, special_tokens(folder))
        assert ours == hf.apply_chat_template(messages, tokenize=False)


def test_llm_graph_matches_transformers_qwen2(qwen):
    """vn_llm on onnxruntime vs ``Qwen2ForCausalLM`` on the same weights: the last hidden state after
    the final norm at every prefill chunk and decode step, and 8 greedy ids."""
    model, _, manifest = qwen
    llm = manifest.config["llm"]
    table = np.load(manifest.path(llm["embed_tokens"]))
    assert np.array_equal(table, model.model.embed_tokens.weight.detach().numpy())
    speech = np.random.default_rng(3).standard_normal((9, llm["hidden"])).astype(np.float32)
    embeds = input_rows(np.asarray(llm["prompt_ids"]), speech, table)  # (L, hidden)
    stream, chunk = open_runner(manifest, "vn_llm", backend="ort").stream(), llm["prefill_max_tokens"]
    for start in range(0, len(embeds), chunk):
        out = stream({"input_embeds": embeds[None, start:start + chunk], "position": np.array([start])})
        assert_close(out["hidden"][0], reference_hidden(model, embeds[: start + chunk]), f"prefill to row {start + chunk}")
    ours, theirs, rows = [], [], torch.from_numpy(embeds)
    for position in range(len(embeds), len(embeds) + 8):
        hidden = reference_hidden(model, rows.numpy())
        theirs.append(int(torch.argmax(model.lm_head(torch.from_numpy(hidden)))))
        ours.append(int(np.argmax(out["logits"][0])))
        assert_close(out["hidden"][0], hidden, f"decode step at {position}")
        rows = torch.cat([rows, model.model.embed_tokens.weight[theirs[-1]][None].detach()])
        out = stream({"input_embeds": table[ours[-1]][None, None], "position": np.array([position])})
    assert ours == theirs


@torch.no_grad()
def reference_hidden(model, embeds: np.ndarray) -> np.ndarray:
    """transformers' last hidden state (after the final RMSNorm) of the last row of ``embeds`` (L, hidden)."""
    return model.model(inputs_embeds=torch.from_numpy(np.ascontiguousarray(embeds))[None]).last_hidden_state[0, -1].numpy()


def assert_close(actual, expected, what: str, rel: float = 1e-4) -> None:
    scale = float(np.abs(expected).max())
    err = float(np.abs(actual - expected).max())
    assert np.allclose(actual, expected, rtol=rel, atol=rel * scale), f"{what}: max |diff| {err:.3g} (max |ref| {scale:.3g})"


def test_every_graph_passes_the_op_check_and_the_biases_are_in_the_llm_graph(qwen):
    import onnx

    model, _, manifest = qwen
    for name, component in manifest.components.items():
        result = check_trt_compatibility(manifest.path(component.onnx), "10.3")
        assert result.ok, f"{name}: {result.summary()}"
    graph = onnx.load(str(manifest.path(manifest.components["vn_llm"].onnx)))
    stored = [onnx.numpy_helper.to_array(t) for t in graph.graph.initializer]
    q_bias = model.model.layers[0].self_attn.q_proj.bias.detach().numpy()
    assert any(a.shape == q_bias.shape and np.array_equal(a, q_bias) for a in stored)


def test_the_runtime_closes_the_decoder_input_with_the_manifests_row(qwen, monkeypatch):
    """The pipeline hands the speech decoder embed(end_row_id) = embed(<|endoftext|>), not embed(<|im_end|>)
    (``streaming_generate_mtp``'s ``txt_eos_emb``): the id comes from the manifest, not from Llama-3's 128009."""
    from edgevoice.runtime.vocalnet import pipeline

    class Reached(Exception):
        pass

    def record(rule, end_row, decode):
        seen.append(np.asarray(end_row))
        raise Reached  # the reply's loops start right after; this test is about the row only

    _, _, manifest = qwen
    seen: list[np.ndarray] = []
    monkeypatch.setattr(pipeline, "TextChunker", record)
    steps = pipeline.VocalNetPipeline(manifest).respond(np.zeros(16000, np.float32))
    assert next(steps).kind == "listen"
    with pytest.raises(Reached):
        next(steps)
    table, llm = np.load(manifest.path(manifest.config["llm"]["embed_tokens"])), manifest.config["llm"]
    assert np.array_equal(seen[0], table[QWEN_IDS["<|endoftext|>"]]) and llm["end_row_id"] != llm["eot_id"]


def test_a_missing_q_bias_is_refused_in_one_line(qwen, tmp_path):
    _, folder, _ = qwen
    copy = tmp_path / "VocalNet-qwen25-tiny"
    shutil.copytree(folder, copy)
    tensors = load_file(str(copy / "model.safetensors"))
    tensors.pop("model.layers.1.self_attn.q_proj.bias")
    save_file(tensors, str(copy / "model.safetensors"), metadata={"format": "pt"})
    with pytest.raises(EdgevoiceError) as caught:
        export(copy, tmp_path / "out")
    message = str(caught.value)
    assert "\n" not in message and "'model.layers.1.self_attn.q_proj.bias' is missing" in message, message
    assert not (tmp_path / "out" / "vn_llm.onnx").exists()


def test_a_folder_without_a_chat_template_is_refused_in_one_line(qwen, tmp_path):
    _, folder, _ = qwen
    copy = tmp_path / "VocalNet-qwen25-tiny"
    shutil.copytree(folder, copy)
    config = json.loads((copy / "tokenizer_config.json").read_text())
    del config["chat_template"]
    (copy / "tokenizer_config.json").write_text(json.dumps(config))
    with pytest.raises(EdgevoiceError) as caught:
        read_chat_facts(copy)
    assert "\n" not in str(caught.value) and "has no chat template" in str(caught.value)


def test_the_llama_family_keeps_its_ids():
    """The published Llama layout (the vocalnet_small fixture): <|eot_id|> both ends the reply and closes the
    decoder input (``omni_speech2s_llama.py``), and the prompt is the golden ``prompt_input_ids``."""
    facts = read_chat_facts(VOCALNET / "checkpoints" / "VocalNet-1B")
    meta = json.loads((VOCALNET / "golden" / "meta.json").read_text())
    assert (facts.family, facts.eot_id, facts.end_row_id) == ("llama", 128009, 128009)
    assert list(facts.prompt_ids) == meta["nonstream"]["prompt_input_ids"]
