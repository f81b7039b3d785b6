"""Load (and write) Llama-family LLMs as Hugging Face directories: config.json + *.safetensors.

Users bring SmolLM2-360M/1.7B, Llama or Qwen2.5-0.5B by path. Loading is strict: every tensor
of the checkpoint must find a parameter and every parameter a tensor; the one tolerated extra
is ``lm_head.weight`` in a checkpoint whose config ties it to the embedding (some exporters
write the tied copy), and only when it equals the embedding.

``save_hf_directory`` writes our weights in the same layout, which doubles as a fast cache of a
dequantized GGUF (safetensors loads in a fraction of the GGUF dequantization time).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from edgevoice.errors import EdgevoiceError
from edgevoice.models.llm import LlmConfig, LlmModel
from edgevoice.weights.strict import load_state_strict

MODEL_TYPES = ("llama", "qwen2")


def llm_config_from_hf(config: dict[str, Any], max_context: int = 1024, prefill_max_tokens: int = 64) -> LlmConfig:
    """Our LlmConfig from a Hugging Face config.json dict (Llama, SmolLM = llama, Qwen2)."""
    kind = config.get("model_type")
    if kind not in MODEL_TYPES:
        raise EdgevoiceError(f"config.json has model_type '{kind}'; edgevoice loads {', '.join(MODEL_TYPES)} directories")
    scaling = config.get("rope_scaling") or (config.get("rope_parameters") or {}).get("rope_type", "default")
    if scaling not in (None, "default") and not (isinstance(scaling, dict) and scaling.get("rope_type", "default") == "default"):
        raise EdgevoiceError(f"config.json sets rope scaling {scaling!r}, which edgevoice's LLM does not implement")
    if kind == "qwen2" and config.get("use_sliding_window"):
        raise EdgevoiceError("config.json enables Qwen2 sliding-window attention, which edgevoice does not implement")
    hidden, heads = int(config["hidden_size"]), int(config["num_attention_heads"])
    rope_base = config.get("rope_theta") or (config.get("rope_parameters") or {}).get("rope_theta", 10000.0)
    return LlmConfig(
        vocab_size=int(config["vocab_size"]),
        hidden=hidden,
        layers=int(config["num_hidden_layers"]),
        heads=heads,
        kv_heads=int(config.get("num_key_value_heads") or heads),
        head_dim=int(config.get("head_dim") or hidden // heads),
        ffn=int(config["intermediate_size"]),
        rope_base=float(rope_base),
        rms_eps=float(config.get("rms_norm_eps", 1e-6)),
        tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        # Qwen2 always has q/k/v biases; Llama only with attention_bias.
        qkv_bias=kind == "qwen2" or bool(config.get("attention_bias", False)),
        max_context=max_context,
        prefill_max_tokens=prefill_max_tokens,
    )


def read_safetensors(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise EdgevoiceError(f"{directory} has no *.safetensors files; pass a Hugging Face model directory")
    state: dict[str, torch.Tensor] = {}
    for file in files:
        for name, tensor in load_file(str(file)).items():
            if name in state:
                raise EdgevoiceError(f"tensor '{name}' appears in two files of {directory}; remove the stale shard")
            state[name] = tensor
    return state


def load_llm_hf(directory: str | Path, max_context: int = 1024, prefill_max_tokens: int = 64) -> LlmModel:
    """An fp32 LlmModel in eval mode from a Hugging Face directory (strict)."""
    directory = Path(directory)
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise EdgevoiceError(f"{directory} has no config.json; pass a Hugging Face model directory")
    config = llm_config_from_hf(json.loads(config_path.read_text()), max_context, prefill_max_tokens)
    state = {name: tensor.float() for name, tensor in read_safetensors(directory).items()}
    if config.tie_word_embeddings and "lm_head.weight" in state:
        head = state.pop("lm_head.weight")
        if not torch.equal(head, state.get("model.embed_tokens.weight", head)):
            raise EdgevoiceError(
                f"tensor 'lm_head.weight' in {directory} differs from the embedding although config.json "
                "sets tie_word_embeddings; set it to false"
            )
    model = LlmModel(config)
    load_state_strict(model, state, source=str(directory))
    return model.eval()


def hf_config_dict(config: LlmConfig) -> dict[str, Any]:
    """A Llama (or Qwen2 when q/k/v have biases) config.json transformers can load."""
    kind = "qwen2" if config.qkv_bias else "llama"
    return {
        "architectures": ["Qwen2ForCausalLM" if kind == "qwen2" else "LlamaForCausalLM"],
        "model_type": kind,
        "vocab_size": config.vocab_size,
        "hidden_size": config.hidden,
        "num_hidden_layers": config.layers,
        "num_attention_heads": config.heads,
        "num_key_value_heads": config.kv_heads,
        "head_dim": config.head_dim,
        "intermediate_size": config.ffn,
        "rope_theta": config.rope_base,
        "rms_norm_eps": config.rms_eps,
        "tie_word_embeddings": config.tie_word_embeddings,
        "attention_bias": config.qkv_bias,
        "hidden_act": "silu",
        "max_position_embeddings": max(config.max_context, 2048),
        "torch_dtype": "float32",
    }


def save_hf_directory(model: LlmModel, directory: str | Path) -> Path:
    """Write config.json + model.safetensors (float32) for ``model``; returns the directory."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    state = {k: v.detach().float().contiguous() for k, v in model.state_dict().items()}
    save_file(state, str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(hf_config_dict(model.config), indent=2) + "\n")
    return directory
