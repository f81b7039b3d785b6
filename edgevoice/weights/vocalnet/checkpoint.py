"""Read a published VocalNet folder and its Whisper folder, strictly, into configs + float32 tensors.

Inputs (the layouts VocalNet's ``load_pretrained_model`` reads):

* the VocalNet folder: ``config.json`` (an ``OmniSpeech2SConfig``: a Llama/Qwen2 config plus the
  speech fields) and ``model.safetensors`` or shards listed in ``model.safetensors.index.json``,
  stored in bfloat16;
* the Whisper folder named by ``config.json → speech_encoder`` (whisper-large-v3, float16,
  ``WhisperForConditionalGeneration`` names).

Output: a ``VocalNetCheckpoint`` = ``VocalNetConfig`` + one dict of float32 tensors per part.
The contract other modules build on:

``llm``
    Hugging Face Llama names (``model.embed_tokens.weight``, ``model.layers.{i}.self_attn.q_proj.weight``,
    ``model.norm.weight``; ``lm_head.weight`` only when untied), which are ``LlmModel``'s own state-dict
    names: ``load_state_strict(LlmModel(config.llm), ckpt.llm, ...)``.
``speech_encoder``
    HF ``WhisperEncoder`` names without prefix (``conv1.weight``, ``embed_positions.weight``,
    ``layers.{i}.self_attn.q_proj.weight``, ``layer_norm.bias`` ...), taken **from the Whisper folder**:
    the reference replaces the module built from ``model.speech_encoder.*`` by a fresh pipeline load
    of that folder, so those are the weights that run. The VocalNet file's own
    ``model.speech_encoder.*`` copy is checked name-for-name and shape-for-shape against it and then
    dropped; ``embedded_encoder_equal`` says whether its values were identical too.
``speech_projector``
    ``linear1.weight`` [inner, encoder_dim * k], ``linear1.bias``, ``linear2.weight`` [llm_hidden, inner],
    ``linear2.bias`` (``EncoderProjectorConcat``; inner is 2048 in the reference code, read from the file).
``speech_generator``
    every ``speech_generator.*`` tensor with that prefix stripped, names as in ``SpeechGeneratorARMTP``:
    ``embedding.weight`` [vocab, width], ``encode_layers.{i}.*`` (pre-NN) and ``decode_layers.{i}.*``
    (``LlamaDecoderLayer`` names: ``self_attn.{q,k,v,o}_proj.weight``, ``mlp.{gate,up,down}_proj.weight``,
    ``input_layernorm.weight``, ``post_attention_layernorm.weight``), ``norm.weight``,
    ``output_proj.{weight,bias}``, ``mtp_layers.{j}.decoder_layer.*``, ``mtp_layers.{j}.norm_final.weight``,
    ``mtp_layers.{j}.output_proj.{weight,bias}``. Its sizes and special ids are ``config.generator``
    (a ``SpeechGeneratorConfig``). Names and shapes are checked here against that config.

Every tensor of both files is accounted for: a missing, unexpected or mis-shaped one is an
``EdgevoiceError`` naming it. The Whisper folder's decoder (``model.decoder.*``, ``proj_out.weight``)
is loaded by the reference but never used; it is accepted and ignored.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import torch

from edgevoice.errors import EdgevoiceError
from edgevoice.models.llm import Llama3RopeScaling, LlmConfig, LlmModel
from edgevoice.models.vocalnet.listen import VocalNetListen
from edgevoice.models.whisper.model import WhisperConfig, WhisperEncoder
from edgevoice.weights.llm.hf import llm_config_from_hf
from edgevoice.weights.strict import load_state_strict
from edgevoice.weights.whisper.hf import key_map

ENCODER_COPY_PREFIX = "model.speech_encoder."  # the VocalNet file's (unused) encoder copy
PROJECTOR_PREFIX = "model.speech_projector."
GENERATOR_PREFIX = "speech_generator."
WHISPER_ENCODER_PREFIX = "model.encoder."  # in the Whisper folder
WHISPER_UNUSED_PREFIXES = ("model.decoder.", "proj_out.")  # loaded by the reference, never run
# model_type of OmniSpeech2SConfig in omni_speech2s_llama.py / omni_speech2s_qwen2.py -> the LLM kind
BASE_MODEL_TYPES = {"omni_speech2s_llama": "llama", "omni_speech2s_qwen": "qwen2"}


@dataclass(frozen=True)
class ProjectorConfig:
    """``EncoderProjectorConcat``: k encoder frames concatenated -> Linear -> ReLU -> Linear."""

    k: int  # "speech_encoder_ds_rate": frames per group
    encoder_dim: int  # "speech_encoder_hidden_size"
    inner: int  # width of linear1 (hard-coded 2048 in the reference; read from the tensor)
    llm_dim: int  # LLM hidden size


@dataclass(frozen=True)
class SpeechGeneratorConfig:
    """``SpeechGeneratorARMTP`` sizes and ids from config.json (what the MTP decoder needs)."""

    width: int  # "llm_hidden_size": the decoder runs at the LLM's width
    heads: int  # "decoder_num_heads" (kv heads = heads: LlamaConfig default)
    ffn: int  # "decoder_ffn_dim"
    pre_nn_layers: int  # "encoder_num_layers" (encode_layers)
    decoder_layers: int  # "decoder_num_layers" (decode_layers)
    mtp_num: int  # number of MTP heads stored
    unit_vocab_size: int  # speech units (6561)
    vocab: int  # unit_vocab_size + "special_tokens"
    bos_id: int
    sos_id: int
    eos_id: int
    pad_id: int
    max_positions: int  # "speech_max_position_embeddings"
    txt_token_num: int  # streaming: text rows per decoder call
    speech_token_num: int  # streaming: units per non-final call
    decoder_hidden_size: int  # written by training, unused by the reference code
    rope_theta: float = 10000.0  # LlamaConfig default: the reference sets no rope_theta
    rms_eps: float = 1e-6  # LlamaConfig default: the reference sets no rms_norm_eps

    @property
    def head_dim(self) -> int:
        return self.width // self.heads


@dataclass(frozen=True)
class VocalNetConfig:
    llm: LlmConfig
    encoder: WhisperConfig  # the Whisper folder's encoder sizes (decoder fields unused)
    projector: ProjectorConfig
    generator: SpeechGeneratorConfig
    tokenizer_max_length: int  # "tokenizer_model_max_length": the reference truncates LLM inputs to it


@dataclass(frozen=True)
class VocalNetCheckpoint:
    config: VocalNetConfig
    llm: dict[str, torch.Tensor]
    speech_encoder: dict[str, torch.Tensor]
    speech_projector: dict[str, torch.Tensor]
    speech_generator: dict[str, torch.Tensor]
    embedded_encoder_equal: bool  # the VocalNet file's encoder copy had the Whisper folder's values


def read_safetensors_folder(directory: Path) -> dict[str, torch.Tensor]:
    """Every tensor of ``model.safetensors`` or of the shards its index lists (dtype as stored)."""
    from safetensors.torch import load_file

    index = directory / "model.safetensors.index.json"
    if index.is_file():
        weight_map: dict[str, str] = json.loads(index.read_text())["weight_map"]
        files = sorted(set(weight_map.values()))
    elif (directory / "model.safetensors").is_file():
        weight_map, files = {}, ["model.safetensors"]
    else:
        raise EdgevoiceError(f"{directory} has neither model.safetensors nor model.safetensors.index.json; download the weights")
    tensors: dict[str, torch.Tensor] = {}
    for name in files:
        if not (directory / name).is_file():
            raise EdgevoiceError(f"shard {name} listed in {index} is missing; finish the download")
        for key, tensor in load_file(str(directory / name)).items():
            if key in tensors:
                raise EdgevoiceError(f"tensor '{key}' appears in two shards of {directory}; remove the stale shard")
            if weight_map and weight_map.get(key) != name:
                raise EdgevoiceError(f"tensor '{key}' is in {name} but {index.name} says {weight_map.get(key)}; re-download")
            tensors[key] = tensor
    unlisted = sorted(set(weight_map) - set(tensors))
    if unlisted:
        raise EdgevoiceError(f"{index} lists tensors no shard holds, e.g. '{unlisted[0]}'; re-download")
    return tensors


def check_part(tensors: Mapping[str, torch.Tensor], expected: Mapping[str, tuple[int, ...]], what: str) -> None:
    """One-line error naming the first missing, unexpected or mis-shaped tensor of a part."""
    missing = sorted(set(expected) - set(tensors))
    extra = sorted(set(tensors) - set(expected))
    if missing:
        raise EdgevoiceError(f"{what}: tensor '{missing[0]}' is missing ({len(missing)} missing); is config.json from the same model?")
    if extra:
        raise EdgevoiceError(f"{what}: unexpected tensor '{extra[0]}' ({len(extra)} unexpected); is config.json from the same model?")
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != tuple(shape):
            raise EdgevoiceError(
                f"{what}: tensor '{name}' has shape {tuple(tensors[name].shape)}, config.json implies {tuple(shape)}"
            )


def _take(tensors: dict[str, torch.Tensor], prefix: str) -> dict[str, torch.Tensor]:
    """Pop every tensor under ``prefix`` from ``tensors``, prefix stripped."""
    keys = [k for k in tensors if k.startswith(prefix)]
    return {k[len(prefix):]: tensors.pop(k) for k in keys}


def _require(config: Mapping[str, Any], key: str, source: Path) -> Any:
    if key not in config:
        raise EdgevoiceError(f"{source} has no '{key}'; is this a VocalNet (OmniSpeech2S) config.json?")
    return config[key]


# --- configs ---------------------------------------------------------------------------------

def llm_config(config: Mapping[str, Any], source: Path, max_context: int, prefill_max_tokens: int) -> LlmConfig:
    kind = BASE_MODEL_TYPES.get(config.get("model_type", ""))
    if kind is None:
        raise EdgevoiceError(f"{source} has model_type {config.get('model_type')!r}; expected one of {sorted(BASE_MODEL_TYPES)}")
    scaling = config.get("rope_scaling")
    base = llm_config_from_hf({**config, "model_type": kind, "rope_scaling": None}, max_context, prefill_max_tokens)
    if scaling is None or scaling.get("rope_type", scaling.get("type")) == "default":
        return base
    if scaling.get("rope_type", scaling.get("type")) != "llama3":
        raise EdgevoiceError(f"{source} sets rope scaling {scaling!r}; only 'llama3' scaling is implemented")
    return replace(base, rope_scaling=Llama3RopeScaling(
        factor=float(scaling["factor"]),
        low_freq_factor=float(scaling["low_freq_factor"]),
        high_freq_factor=float(scaling["high_freq_factor"]),
        original_context=int(scaling["original_max_position_embeddings"]),
    ))


def encoder_config(whisper: Mapping[str, Any], source: Path) -> WhisperConfig:
    if whisper.get("model_type") != "whisper":
        raise EdgevoiceError(f"{source} has model_type {whisper.get('model_type')!r}; point speech_encoder at a Whisper folder")
    if whisper.get("activation_function", "gelu") != "gelu":
        raise EdgevoiceError(f"{source} uses activation {whisper['activation_function']!r}; the encoder implements gelu")
    heads = int(whisper["encoder_attention_heads"])
    return WhisperConfig(
        n_mels=int(whisper["num_mel_bins"]), n_audio_ctx=int(whisper["max_source_positions"]),
        width=int(whisper["d_model"]), n_audio_heads=heads, n_audio_layers=int(whisper["encoder_layers"]),
        ffn=int(whisper["encoder_ffn_dim"]), n_vocab=int(whisper.get("vocab_size", 1)),
        n_text_heads=heads, n_text_layers=0,  # the decoder is never run
    )


def generator_config(config: Mapping[str, Any], source: Path) -> SpeechGeneratorConfig:
    kind = _require(config, "speech_generator_type", source)
    if "ar_mtp" not in kind:
        raise EdgevoiceError(f"{source} has speech_generator_type {kind!r}; only the 'ar_mtp' speech decoder is implemented")
    width, heads = int(_require(config, "llm_hidden_size", source)), int(_require(config, "decoder_num_heads", source))
    if width % heads:
        raise EdgevoiceError(f"{source}: llm_hidden_size {width} is not divisible by decoder_num_heads {heads}")
    units = int(_require(config, "unit_vocab_size", source))
    return SpeechGeneratorConfig(
        width=width, heads=heads, ffn=int(_require(config, "decoder_ffn_dim", source)),
        pre_nn_layers=int(_require(config, "encoder_num_layers", source)),
        decoder_layers=int(_require(config, "decoder_num_layers", source)),
        mtp_num=int(_require(config, "mtp_num", source)),
        unit_vocab_size=units, vocab=units + int(_require(config, "special_tokens", source)),
        bos_id=int(config.get("speech_bos_token_id", units)), sos_id=int(config.get("speech_sos_token_id", units + 1)),
        eos_id=int(config.get("speech_eos_token_id", units + 2)), pad_id=int(config.get("speech_padding_token_id", units + 3)),
        max_positions=int(config.get("speech_max_position_embeddings", 2048)),
        txt_token_num=int(config.get("txt_token_num", 5)), speech_token_num=int(config.get("speech_token_num", 15)),
        decoder_hidden_size=int(config.get("decoder_hidden_size", width)),
    )


# --- expected tensor shapes --------------------------------------------------------------------

def llm_shapes(config: LlmConfig) -> dict[str, tuple[int, ...]]:
    with torch.device("meta"):  # shapes only: a 1B model is not allocated
        return {k: tuple(v.shape) for k, v in LlmModel(config).state_dict().items()}


def encoder_shapes(config: WhisperConfig) -> dict[str, tuple[int, ...]]:
    """HF WhisperEncoder names (no prefix) -> shape, from our encoder via the cascade's name map."""
    with torch.device("meta"):
        ours = WhisperEncoder(config).state_dict()
    return {theirs: tuple(ours[mine].shape) for mine, theirs in encoder_key_pairs(config)}


def encoder_key_pairs(config: WhisperConfig) -> list[tuple[str, str]]:
    """(our WhisperEncoder key, HF WhisperEncoder key), both without prefix: the cascade's map, encoder part."""
    return [(o[len("encoder."):], t[len("encoder."):]) for o, t in key_map(config) if o.startswith("encoder.")]


def _llama_layer_shapes(prefix: str, g: SpeechGeneratorConfig) -> dict[str, tuple[int, ...]]:
    w, f = g.width, g.ffn
    return {
        **{f"{prefix}self_attn.{p}_proj.weight": (w, w) for p in "qkvo"},
        f"{prefix}mlp.gate_proj.weight": (f, w), f"{prefix}mlp.up_proj.weight": (f, w), f"{prefix}mlp.down_proj.weight": (w, f),
        f"{prefix}input_layernorm.weight": (w,), f"{prefix}post_attention_layernorm.weight": (w,),
    }


def generator_shapes(g: SpeechGeneratorConfig) -> dict[str, tuple[int, ...]]:
    shapes = {"embedding.weight": (g.vocab, g.width), "norm.weight": (g.width,),
              "output_proj.weight": (g.vocab, g.width), "output_proj.bias": (g.vocab,)}
    for i in range(g.pre_nn_layers):
        shapes.update(_llama_layer_shapes(f"encode_layers.{i}.", g))
    for i in range(g.decoder_layers):
        shapes.update(_llama_layer_shapes(f"decode_layers.{i}.", g))
    for j in range(g.mtp_num):
        shapes.update(_llama_layer_shapes(f"mtp_layers.{j}.decoder_layer.", g))
        shapes.update({f"mtp_layers.{j}.norm_final.weight": (g.width,), f"mtp_layers.{j}.output_proj.weight": (g.vocab, g.width),
                       f"mtp_layers.{j}.output_proj.bias": (g.vocab,)})
    return shapes


def projector_shapes(p: ProjectorConfig) -> dict[str, tuple[int, ...]]:
    return {"linear1.weight": (p.inner, p.encoder_dim * p.k), "linear1.bias": (p.inner,),
            "linear2.weight": (p.llm_dim, p.inner), "linear2.bias": (p.llm_dim,)}


# --- loading ---------------------------------------------------------------------------------

def resolve_whisper_dir(vocalnet_dir: Path, speech_encoder: str) -> Path:
    """The reference opens ``speech_encoder`` relative to its working directory; try the usual roots."""
    path = Path(speech_encoder)
    candidates = [path] if path.is_absolute() else [Path.cwd() / path] + [d / path for d in (vocalnet_dir, *vocalnet_dir.parents[:2])]
    for candidate in candidates:
        if (candidate / "config.json").is_file():
            return candidate.resolve()
    raise EdgevoiceError(
        f"the Whisper folder '{speech_encoder}' named in {vocalnet_dir}/config.json was not found next to the "
        "checkpoint or in the working directory; pass whisper_dir"
    )


def _read_json(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise EdgevoiceError(f"{path} is missing; pass the published folder as downloaded")
    return json.loads(path.read_text())


def read_whisper_encoder(whisper_dir: Path) -> tuple[WhisperConfig, dict[str, torch.Tensor]]:
    """The Whisper folder's encoder config and float32 encoder tensors (HF names, no prefix)."""
    config = encoder_config(_read_json(whisper_dir / "config.json"), whisper_dir / "config.json")
    tensors = read_safetensors_folder(whisper_dir)
    encoder = {k: v.float() for k, v in _take(tensors, WHISPER_ENCODER_PREFIX).items()}
    leftover = sorted(k for k in tensors if not k.startswith(WHISPER_UNUSED_PREFIXES))
    if leftover:
        raise EdgevoiceError(f"{whisper_dir}: unexpected tensor '{leftover[0]}'; is this a WhisperForConditionalGeneration save?")
    check_part(encoder, encoder_shapes(config), f"{whisper_dir} (encoder)")
    return config, encoder


def _split_llm(tensors: dict[str, torch.Tensor], config: LlmConfig, source: Path) -> dict[str, torch.Tensor]:
    llm = {k: v.float() for k, v in tensors.items()}
    if config.tie_word_embeddings and "lm_head.weight" in llm:
        head = llm.pop("lm_head.weight")  # some exporters write the tied copy; it must be the embedding
        if not torch.equal(head, llm.get("model.embed_tokens.weight", head)):
            raise EdgevoiceError(f"{source}: lm_head.weight differs from the embedding although tie_word_embeddings is set")
    check_part(llm, llm_shapes(config), f"{source} (LLM)")
    return llm


def load_vocalnet_checkpoint(
    vocalnet_dir: str | Path, whisper_dir: str | Path | None = None, max_context: int = 1024, prefill_max_tokens: int = 64
) -> VocalNetCheckpoint:
    """Read both folders strictly; every tensor float32. ``whisper_dir`` defaults to config.json's speech_encoder."""
    vocalnet_dir = Path(vocalnet_dir)
    source = vocalnet_dir / "config.json"
    raw = _read_json(source)
    if _require(raw, "speech_encoder_type", source) != "whisper":
        raise EdgevoiceError(f"{source} has speech_encoder_type {raw['speech_encoder_type']!r}; only 'whisper' is implemented")
    if raw.get("speech_projector_type", "linear") != "linear":
        raise EdgevoiceError(f"{source} has speech_projector_type {raw['speech_projector_type']!r}; only 'linear' is implemented")
    whisper_dir = Path(whisper_dir) if whisper_dir else resolve_whisper_dir(vocalnet_dir, _require(raw, "speech_encoder", source))
    enc_config, encoder = read_whisper_encoder(whisper_dir)
    encoder_dim = int(_require(raw, "speech_encoder_hidden_size", source))
    if encoder_dim != enc_config.width:
        raise EdgevoiceError(f"{source} says speech_encoder_hidden_size {encoder_dim} but {whisper_dir} has d_model {enc_config.width}")
    llm_cfg = llm_config(raw, source, max_context, prefill_max_tokens)
    gen_cfg = generator_config(raw, source)

    tensors = read_safetensors_folder(vocalnet_dir)
    copy = _take(tensors, ENCODER_COPY_PREFIX)
    check_part(copy, {k: tuple(v.shape) for k, v in encoder.items()}, f"{vocalnet_dir} ({ENCODER_COPY_PREFIX}*)")
    embedded_equal = all(torch.equal(copy[k].float(), encoder[k]) for k in encoder)
    projector = {k: v.float() for k, v in _take(tensors, PROJECTOR_PREFIX).items()}
    if "linear1.bias" not in projector:
        raise EdgevoiceError(f"{vocalnet_dir}: tensor '{PROJECTOR_PREFIX}linear1.bias' is missing; is this a VocalNet checkpoint?")
    proj_cfg = ProjectorConfig(k=int(raw.get("speech_encoder_ds_rate", 5)), encoder_dim=encoder_dim,
                               inner=int(projector["linear1.bias"].shape[0]), llm_dim=llm_cfg.hidden)
    check_part(projector, projector_shapes(proj_cfg), f"{vocalnet_dir} ({PROJECTOR_PREFIX}*)")
    generator = {k: v.float() for k, v in _take(tensors, GENERATOR_PREFIX).items()}
    check_part(generator, generator_shapes(gen_cfg), f"{vocalnet_dir} ({GENERATOR_PREFIX}*)")
    llm = _split_llm(tensors, llm_cfg, vocalnet_dir)  # whatever is left must be exactly the LLM

    config = VocalNetConfig(llm=llm_cfg, encoder=enc_config, projector=proj_cfg, generator=gen_cfg,
                            tokenizer_max_length=int(raw.get("tokenizer_model_max_length") or 0))
    return VocalNetCheckpoint(config=config, llm=llm, speech_encoder=encoder, speech_projector=projector,
                              speech_generator=generator, embedded_encoder_equal=embedded_equal)


# --- modules ---------------------------------------------------------------------------------

def build_llm(ckpt: VocalNetCheckpoint) -> LlmModel:
    """The LLM (float32, eval) with the checkpoint's weights."""
    model = LlmModel(ckpt.config.llm)
    load_state_strict(model, ckpt.llm, source="VocalNet LLM")
    return model.eval()


def build_listen(ckpt: VocalNetCheckpoint) -> VocalNetListen:
    """Front end + encoder + projector (float32, eval) with the effective (Whisper folder) encoder weights."""
    c = ckpt.config
    listen = VocalNetListen(c.encoder, c.projector.k, c.projector.inner, c.projector.llm_dim)
    state = {mine: ckpt.speech_encoder[theirs] for mine, theirs in encoder_key_pairs(c.encoder)}
    load_state_strict(listen.encoder, state, source="Whisper encoder")
    load_state_strict(listen.projector, ckpt.speech_projector, source="VocalNet speech projector")
    return listen.eval()
