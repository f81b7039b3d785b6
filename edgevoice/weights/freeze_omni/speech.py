"""Freeze-Omni's speech path from its published ``checkpoints/`` folder: decoder and codec.

    checkpoints/decoder/model.json   [idim, odim, args]: the speech decoder's shape
    checkpoints/decoder/final.pt     {'model': state dict} (or the flat state dict), fp32 or bf16
    checkpoints/codec/model.json     TiCodec config
    checkpoints/codec/final.pt       {'generator', 'quantizer', 'encoder'}, generator weight-normed

Every dimension comes from the two model.json files and the tensor shapes, nothing from the
published sizes, so shrunk or widened checkpoints load the same way. Accounting is strict: each
tensor is used exactly once, or the load fails naming the leftover, missing or mis-shaped keys.
The parts deliberately not loaded (the codec's audio encoder, training-snapshot entries beside
the decoder's 'model') are listed by name in ``FoSpeech.unused_by_design``, never dropped silently.
Files are read with the weights-only unpickler (``edgevoice.weights.pt_checkpoint``).
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from edgevoice.errors import EdgevoiceError
from edgevoice.models.freeze_omni.codec import FoCodecConfig, FoCodecDecoder
from edgevoice.models.freeze_omni.speech_decoder import FoSpeechDecoder, FoSpeechDecoderConfig
from edgevoice.weights.pt_checkpoint import load_pt, tensor_dict
from edgevoice.weights.strict import load_state_strict

_CODEC_ENTRIES = ("generator", "quantizer")  # what decoding needs from codec/final.pt
_CODEC_UNUSED = {"encoder": "the codec's audio encoder, only used to make tokens from audio"}


@dataclass(frozen=True)
class FoSpeech:
    """The loaded speech path: decoder and codec modules (eval mode) and what was left out."""

    decoder: FoSpeechDecoder  # speech-token decoder; its config is decoder.config
    codec: FoCodecDecoder  # codec generator; its config is codec.config
    global_tokens: tuple[int, ...]  # the codec's fixed global tokens (folded into codec.global_vector)
    unused_by_design: tuple[str, ...]  # checkpoint entries not needed to decode, with the reason
    source: str  # where the weights came from

    @property
    def decoder_config(self) -> FoSpeechDecoderConfig:
        return self.decoder.config

    @property
    def codec_config(self) -> FoCodecConfig:
        return self.codec.config


def load_speech(
    checkpoints_dir: str | Path,
    max_prefix_rows: int = 512,
    max_text_rows: int = 512,
    max_speech_tokens: int = 1000,
    codec_max_tokens: int = 60,
) -> FoSpeech:
    """Decoder and codec from a Freeze-Omni ``checkpoints`` folder; the limits size the graphs' inputs and caches."""
    root = Path(checkpoints_dir)
    if not root.is_dir():
        raise EdgevoiceError(f"{root} is not a directory; pass the Freeze-Omni 'checkpoints' folder")
    limits = {"max_prefix_rows": max_prefix_rows, "max_text_rows": max_text_rows, "max_speech_tokens": max_speech_tokens}
    decoder, decoder_unused = load_decoder(root / "decoder", **limits)
    codec, global_tokens, codec_unused = load_codec(root / "codec", codec_max_tokens)
    return FoSpeech(decoder, codec, global_tokens, decoder_unused + codec_unused, str(root))


# --- decoder -------------------------------------------------------------------------------


def _read_json(path: Path) -> Any:
    if not path.is_file():
        raise EdgevoiceError(f"{path} is missing; the Freeze-Omni checkpoint folder needs it next to final.pt")
    try:
        return json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise EdgevoiceError(f"{path} is not valid JSON ({exc}); download it again") from exc


def _field(config: Mapping[str, Any], name: str, source: Path) -> Any:
    if name not in config:
        raise EdgevoiceError(f"{source} has no '{name}'; is it a Freeze-Omni model.json?")
    return config[name]


def decoder_config_from_json(path: Path, **limits: int) -> FoSpeechDecoderConfig:
    """The decoder shape from ``decoder/model.json`` ([idim, odim, args]), with the graphs' limits."""
    data = _read_json(path)
    if not (isinstance(data, list) and len(data) == 3 and isinstance(data[2], Mapping)):
        raise EdgevoiceError(f"{path} should hold [idim, odim, args]; is it the decoder's model.json?")
    idim, odim, args = data
    width = int(_field(args, "transformer_attention_dim", path))
    out_width = int(_field(args, "encoder_output_dim", path))
    if not int(idim) == width == out_width:
        raise EdgevoiceError(f"{path}: idim {idim}, transformer_attention_dim {width} and encoder_output_dim "
                             f"{out_width} must agree (the decoder has one width); is the file edited by hand?")
    blocks = int(_field(args, "transformer_num_blocks", path))
    with_prefix = bool(args.get("kv_cache_prefix_finetune", 0))
    try:
        return FoSpeechDecoderConfig(
            width=width, heads=int(_field(args, "transformer_attention_heads", path)),
            ffn=int(_field(args, "transformer_linear_units", path)), prefix_layers=blocks if with_prefix else 0,
            pre_nn_layers=blocks // 2, ar_layers=blocks, odim=int(odim), **limits,
        )
    except ValueError as exc:
        raise EdgevoiceError(f"{path} describes a decoder edgevoice cannot build: {exc}") from exc


def _as_float32(state: Mapping[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """bf16, fp16 or fp32 per tensor, all returned as contiguous fp32."""
    not_float = sorted(name for name, t in state.items() if not t.is_floating_point())
    if not_float:
        raise EdgevoiceError(f"{source}: tensors {not_float[:5]} are not floating point; is it the right checkpoint?")
    return {name: t.float().contiguous() for name, t in state.items()}


def load_decoder(folder: Path, **limits: int) -> tuple[FoSpeechDecoder, tuple[str, ...]]:
    """The speech decoder from ``folder``/model.json + final.pt, and the snapshot entries left out."""
    config = decoder_config_from_json(folder / "model.json", **limits)
    path = folder / "final.pt"
    snapshot = load_pt(path)
    unused: tuple[str, ...] = ()
    if isinstance(snapshot, Mapping) and "model" in snapshot:
        # The reference takes 'model' when present; anything beside it is training state.
        state = tensor_dict(snapshot, str(path), key="model")
        unused = tuple(f"{path.name}: '{key}' (training snapshot entry beside 'model')" for key in snapshot if key != "model")
    else:
        state = tensor_dict(snapshot, str(path))
    decoder = FoSpeechDecoder(config)
    load_state_strict(decoder, _as_float32(state, str(path)), source=str(path))
    return decoder.eval(), unused


# --- codec ---------------------------------------------------------------------------------


def codec_config_from_json(path: Path, code_dim: int, global_dim: int, max_tokens: int) -> FoCodecConfig:
    """The generator shape from ``codec/model.json``; code and global widths come from the codebooks."""
    data = _read_json(path)
    if not isinstance(data, Mapping):
        raise EdgevoiceError(f"{path} should hold a JSON object; is it the codec's model.json?")
    if str(_field(data, "resblock", path)) != "1":
        raise EdgevoiceError(f"{path}: resblock type {data['resblock']!r} is not supported (Freeze-Omni's codec uses '1')")
    for name in ("n_code_groups", "residul_layer"):
        if int(_field(data, name, path)) != 1:
            raise EdgevoiceError(f"{path}: {name}={data[name]}; only the single-codebook codec (1) is supported")
    try:
        return FoCodecConfig(
            n_codes=int(_field(data, "n_codes", path)), code_dim=code_dim,
            initial_channels=int(_field(data, "upsample_initial_channel", path)),
            upsample_rates=tuple(int(r) for r in _field(data, "upsample_rates", path)),
            upsample_kernels=tuple(int(k) for k in _field(data, "upsample_kernel_sizes", path)),
            resblock_kernels=tuple(int(k) for k in _field(data, "resblock_kernel_sizes", path)),
            resblock_dilations=tuple(tuple(int(d) for d in ds) for ds in _field(data, "resblock_dilation_sizes", path)),
            global_dim=global_dim, sample_rate=int(data.get("sampling_rate", 24000)), max_tokens=max_tokens,
        )
    except (ValueError, TypeError) as exc:
        raise EdgevoiceError(f"{path} describes a codec edgevoice cannot build: {exc}") from exc


class _Ledger:
    """Hands out tensors of one checkpoint part and reports any it did not hand out."""

    def __init__(self, tensors: Mapping[str, torch.Tensor], source: str):
        self.tensors = dict(tensors)
        self.source = source
        self.used: set[str] = set()

    def take(self, name: str) -> torch.Tensor:
        if name not in self.tensors:
            raise EdgevoiceError(f"{self.source} has no tensor '{name}'; is it the right checkpoint?")
        if name in self.used:
            raise EdgevoiceError(f"{self.source}: tensor '{name}' would be used twice; this is a bug in the converter")
        self.used.add(name)
        return self.tensors[name].float()

    def check_all_used(self) -> None:
        leftover = sorted(set(self.tensors) - self.used)
        if leftover:
            raise EdgevoiceError(f"{self.source} has tensors the codec decoder does not use: {leftover[:8]}"
                                 f"{' ...' if len(leftover) > 8 else ''}; is it a different codec variant?")


def fold_weight_norm(g: torch.Tensor, v: torch.Tensor, name: str, source: str) -> torch.Tensor:
    """w = g * v / |v|, the norm over every dim but 0 (weight_norm's default, ConvTranspose1d included)."""
    if g.shape != (v.shape[0],) + (1,) * (v.dim() - 1):
        raise EdgevoiceError(f"{source}: '{name}.weight_g' has shape {tuple(g.shape)}, which does not fit "
                             f"'{name}.weight_v' {tuple(v.shape)}; is the checkpoint damaged?")
    norm = v.norm(dim=tuple(range(1, v.dim())), keepdim=True)
    return v * (g / norm)


def _generator_state(ledger: _Ledger) -> dict[str, torch.Tensor]:
    """Generator tensors with weight norm folded (an already folded 'weight' is taken as it is)."""
    state: dict[str, torch.Tensor] = {}
    for name in sorted(ledger.tensors):
        if name.endswith(".weight_v"):
            module = name[: -len(".weight_v")]
            state[f"{module}.weight"] = fold_weight_norm(ledger.take(f"{module}.weight_g"), ledger.take(name), module, ledger.source)
        elif name.endswith((".bias", ".weight")):
            state[name] = ledger.take(name)
    return state


def _global_vector(ledger: _Ledger, global_tokens: list[int], config_path: Path) -> torch.Tensor:
    """The concatenated rows picked by the fixed global tokens, one small codebook each."""
    rows = []
    for j, token in enumerate(global_tokens):
        table = ledger.take(f"quantizer_modules_globaltokens.{j}.embedding.weight")  # (n_codes, width)
        if not 0 <= token < table.shape[0]:
            raise EdgevoiceError(f"{config_path}: global token {token} is outside codebook {j} ({table.shape[0]} rows)")
        rows.append(table[token])
    return torch.cat(rows)


def _entries(part: Any) -> str:
    return f"{len(part)} tensors" if isinstance(part, Mapping) else type(part).__name__


def load_codec(folder: Path, max_tokens: int = 60) -> tuple[FoCodecDecoder, tuple[int, ...], tuple[str, ...]]:
    """The codec generator from ``folder``/model.json + final.pt, its global tokens, and what was left out."""
    config_path, path = folder / "model.json", folder / "final.pt"
    checkpoint = load_pt(path)
    if not isinstance(checkpoint, Mapping):
        raise EdgevoiceError(f"{path} holds a {type(checkpoint).__name__}, not TiCodec's dict of parts; is it the codec checkpoint?")
    unknown = sorted(set(checkpoint) - set(_CODEC_ENTRIES) - set(_CODEC_UNUSED))
    if unknown:
        raise EdgevoiceError(f"{path} has parts {unknown} besides {list(_CODEC_ENTRIES) + list(_CODEC_UNUSED)}; is it a different codec?")
    generator = _Ledger(tensor_dict(checkpoint, str(path), key="generator"), f"{path} [generator]")
    quantizer = _Ledger(tensor_dict(checkpoint, str(path), key="quantizer"), f"{path} [quantizer]")
    global_tokens = [int(t) for t in _field(_read_json(config_path), "global_tokens", config_path)]
    codebook = quantizer.take("quantizer_modules.0.embedding.weight")  # (n_codes, code_dim)
    global_vector = _global_vector(quantizer, global_tokens, config_path)
    quantizer.check_all_used()
    state = {**_generator_state(generator), "codebook.weight": codebook, "global_vector": global_vector}
    generator.check_all_used()
    config = codec_config_from_json(config_path, codebook.shape[1], global_vector.shape[0], max_tokens)
    codec = FoCodecDecoder(config)
    load_state_strict(codec, state, source=str(path))
    unused = tuple(f"{path.name}: '{part}' ({_entries(checkpoint[part])}, {why})"
                   for part, why in _CODEC_UNUSED.items() if part in checkpoint)
    return codec.eval(), tuple(global_tokens), unused
