"""Hugging Face Whisper directories (openai/whisper-* layout) to and from our ``Whisper`` module.

A directory holds ``config.json`` and ``model.safetensors`` (or shards listed in
``model.safetensors.index.json``), with transformers' ``WhisperForConditionalGeneration`` key names
(``model.encoder.layers.0.self_attn.q_proj.weight`` ...); a bare ``WhisperModel`` save without
the ``model.`` prefix loads too. This lets users bring whisper-base/small/... by path.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch

from edgevoice.errors import EdgevoiceError
from edgevoice.models.whisper.model import Whisper, WhisperConfig
from edgevoice.weights.strict import load_state_strict

_OUTPUT_PROJECTION = "proj_out.weight"  # tied to the token embedding; optional in files


def _linear(ours: str, theirs: str, bias: bool = True) -> list[tuple[str, str]]:
    pairs = [(f"{ours}.weight", f"{theirs}.weight")]
    return pairs + ([(f"{ours}.bias", f"{theirs}.bias")] if bias else [])


def _attention(ours: str, theirs: str) -> list[tuple[str, str]]:
    return (
        _linear(f"{ours}.q", f"{theirs}.q_proj")
        + _linear(f"{ours}.k", f"{theirs}.k_proj", bias=False)
        + _linear(f"{ours}.v", f"{theirs}.v_proj")
        + _linear(f"{ours}.out", f"{theirs}.out_proj")
    )


def key_map(config: WhisperConfig) -> list[tuple[str, str]]:
    """(our state-dict key, HF key) for every tensor of the model, HF names without ``model.``."""
    pairs = _linear("encoder.conv1", "encoder.conv1") + _linear("encoder.conv2", "encoder.conv2")
    pairs += [("encoder.positions", "encoder.embed_positions.weight")]
    pairs += _linear("encoder.final_norm", "encoder.layer_norm")
    for i in range(config.n_audio_layers):
        ours, theirs = f"encoder.layers.{i}", f"encoder.layers.{i}"
        pairs += _linear(f"{ours}.attn_norm", f"{theirs}.self_attn_layer_norm")
        pairs += _attention(f"{ours}.attn", f"{theirs}.self_attn")
        pairs += _linear(f"{ours}.mlp_norm", f"{theirs}.final_layer_norm")
        pairs += _linear(f"{ours}.mlp.fc1", f"{theirs}.fc1") + _linear(f"{ours}.mlp.fc2", f"{theirs}.fc2")
    pairs += [("decoder.embed.weight", "decoder.embed_tokens.weight"), ("decoder.positions", "decoder.embed_positions.weight")]
    pairs += _linear("decoder.final_norm", "decoder.layer_norm")
    for i in range(config.n_text_layers):
        ours, theirs = f"decoder.layers.{i}", f"decoder.layers.{i}"
        pairs += _linear(f"{ours}.self_norm", f"{theirs}.self_attn_layer_norm")
        pairs += _attention(f"{ours}.self_attn", f"{theirs}.self_attn")
        pairs += _linear(f"{ours}.cross_norm", f"{theirs}.encoder_attn_layer_norm")
        pairs += _linear(f"{ours}.cross_attn.q", f"{theirs}.encoder_attn.q_proj")
        pairs += _linear(f"{ours}.cross_attn.out", f"{theirs}.encoder_attn.out_proj")
        pairs += _linear(f"cross_kv.{i}.k", f"{theirs}.encoder_attn.k_proj", bias=False)
        pairs += _linear(f"cross_kv.{i}.v", f"{theirs}.encoder_attn.v_proj")
        pairs += _linear(f"{ours}.mlp_norm", f"{theirs}.final_layer_norm")
        pairs += _linear(f"{ours}.mlp.fc1", f"{theirs}.fc1") + _linear(f"{ours}.mlp.fc2", f"{theirs}.fc2")
    return pairs


def whisper_config_from_hf(hf: dict) -> WhisperConfig:
    """Our config from a transformers ``WhisperConfig`` dict; refuses variants we do not compute."""
    if hf.get("model_type") != "whisper":
        raise EdgevoiceError(f"config.json has model_type {hf.get('model_type')!r}, not 'whisper'; pass a Whisper directory")
    if hf.get("activation_function", "gelu") != "gelu" or hf.get("scale_embedding", False):
        raise EdgevoiceError("this Whisper config uses a non-standard activation or embedding scale; edgevoice supports the openai/whisper-* layout")
    if hf["encoder_ffn_dim"] != hf["decoder_ffn_dim"]:
        raise EdgevoiceError("encoder and decoder MLP widths differ in config.json; edgevoice expects one width")
    return WhisperConfig(
        n_mels=hf["num_mel_bins"],
        n_audio_ctx=hf["max_source_positions"],
        width=hf["d_model"],
        n_audio_heads=hf["encoder_attention_heads"],
        n_audio_layers=hf["encoder_layers"],
        n_vocab=hf["vocab_size"],
        n_text_ctx=hf["max_target_positions"],
        n_text_heads=hf["decoder_attention_heads"],
        n_text_layers=hf["decoder_layers"],
        ffn=hf["encoder_ffn_dim"],
    )


def hf_config_from_whisper(config: WhisperConfig) -> dict:
    """The config.json fields that describe ``config`` in transformers' Whisper layout."""
    return {
        "model_type": "whisper",
        "architectures": ["WhisperForConditionalGeneration"],
        "num_mel_bins": config.n_mels,
        "max_source_positions": config.n_audio_ctx,
        "d_model": config.width,
        "encoder_attention_heads": config.n_audio_heads,
        "encoder_layers": config.n_audio_layers,
        "vocab_size": config.n_vocab,
        "max_target_positions": config.n_text_ctx,
        "decoder_attention_heads": config.n_text_heads,
        "decoder_layers": config.n_text_layers,
        "encoder_ffn_dim": config.ffn,
        "decoder_ffn_dim": config.ffn,
        "activation_function": "gelu",
        "scale_embedding": False,
        "tie_word_embeddings": True,
    }


def read_safetensors_dir(directory: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    index = directory / "model.safetensors.index.json"
    if index.is_file():
        files = sorted(set(json.loads(index.read_text())["weight_map"].values()))
    elif (directory / "model.safetensors").is_file():
        files = ["model.safetensors"]
    else:
        raise EdgevoiceError(f"{directory} has no model.safetensors; download the safetensors weights of the Whisper model")
    tensors: dict[str, torch.Tensor] = {}
    for name in files:
        tensors.update(load_file(str(directory / name)))
    return tensors


def load_whisper_hf(directory: str | Path) -> Whisper:
    """A ``Whisper`` in eval mode from an HF directory; every file tensor must be used exactly once."""
    directory = Path(directory)
    config_path = directory / "config.json"
    if not config_path.is_file():
        raise EdgevoiceError(f"{directory} has no config.json; pass a Hugging Face Whisper model directory")
    config = whisper_config_from_hf(json.loads(config_path.read_text()))
    tensors = read_safetensors_dir(directory)
    whisper = Whisper(config)
    load_state_strict(whisper, whisper_state_from_hf(tensors, config, str(directory)), source=str(directory))
    return whisper.eval()


def whisper_state_from_hf(tensors: dict[str, torch.Tensor], config: WhisperConfig, source: str) -> dict[str, torch.Tensor]:
    # A WhisperForConditionalGeneration save prefixes "model."; a WhisperModel save does not.
    plain = {(k[len("model.") :] if k.startswith("model.") else k): v for k, v in tensors.items()}
    if len(plain) != len(tensors):
        raise EdgevoiceError(f"{source} holds both 'model.'-prefixed and bare copies of some tensors; keep one")
    state, missing = {}, []
    for ours, theirs in key_map(config):
        if theirs in plain:
            state[ours] = plain.pop(theirs)
        else:
            missing.append(theirs)
    if _OUTPUT_PROJECTION in plain:
        tied = plain.pop(_OUTPUT_PROJECTION)
        if "decoder.embed.weight" in state and not torch.equal(tied, state["decoder.embed.weight"]):
            raise EdgevoiceError(f"{source}: proj_out.weight differs from the token embedding; edgevoice needs tied output weights")
    if missing or plain:
        raise EdgevoiceError(
            f"{source} does not fit Whisper {config.width}x{config.n_audio_layers}: missing {missing[:6] or 'none'}, "
            f"unexpected {sorted(plain)[:6] or 'none'}; is config.json from the same model as the weights?"
        )
    return state


def save_whisper_hf(whisper: Whisper, directory: str | Path) -> Path:
    """Write ``whisper`` as an HF directory (config.json + model.safetensors, ``model.`` keys)."""
    from safetensors.torch import save_file

    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    ours = whisper.state_dict()
    tensors = {f"model.{theirs}": ours[mine].contiguous().clone() for mine, theirs in key_map(whisper.config)}
    save_file(tensors, str(directory / "model.safetensors"), metadata={"format": "pt"})
    (directory / "config.json").write_text(json.dumps(hf_config_from_whisper(whisper.config), indent=2))
    return directory
