"""Read CTranslate2 ``model.bin`` files and map a WhisperSpec onto our ``Whisper`` module.

The format is plain little-endian binary, read here without ctranslate2:

    u32 version | str spec name | u32 spec revision | u32 variable count
    per variable: str name | u8 rank | u32 dims[rank] | u8 dtype | u32 byte count | bytes
    u32 alias count | per alias: str alias | str target

where ``str`` is a u16 byte count followed by the bytes, NUL-terminated. Versions 5 and 6 share
this layout (what faster-whisper's converters write today).
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from edgevoice.errors import EdgevoiceError
from edgevoice.models.whisper.model import Whisper, WhisperConfig
from edgevoice.weights.strict import load_state_strict

SUPPORTED_VERSIONS = (5, 6)
# CTranslate2's DataType enum -> numpy dtype (bfloat16 is widened on read).
_DTYPES = {0: np.float32, 1: np.int8, 2: np.int16, 3: np.int32, 4: np.float16, 5: "bfloat16"}
_GELU = 3  # CTranslate2's ActivationType.GELU (exact erf), the activation of every Whisper


@dataclass
class Ct2Model:
    """The variables of one model.bin: name -> array, plus aliases (tied weights)."""

    spec: str  # e.g. "WhisperSpec"
    revision: int  # spec revision
    variables: dict[str, np.ndarray]
    aliases: dict[str, str]  # alias -> target variable name


class _Reader:
    def __init__(self, data: bytes, path: Path):
        self.data, self.pos, self.path = data, 0, path

    def take(self, n: int) -> bytes:
        if self.pos + n > len(self.data):
            raise EdgevoiceError(f"{self.path} ends early at byte {self.pos}; the file is truncated, download it again")
        chunk = self.data[self.pos : self.pos + n]
        self.pos += n
        return chunk

    def uint(self, fmt: str) -> int:
        return struct.unpack("<" + fmt, self.take(struct.calcsize(fmt)))[0]

    def string(self) -> str:
        return self.take(self.uint("H")).rstrip(b"\0").decode("utf-8")


def read_ct2_model(path: str | Path) -> Ct2Model:
    """Parse a CTranslate2 model.bin into numpy arrays (copies; the file is not kept open)."""
    path = Path(path)
    if not path.is_file():
        raise EdgevoiceError(f"no CTranslate2 model at {path}; pass the model.bin inside a faster-whisper model folder")
    reader = _Reader(path.read_bytes(), path)
    version = reader.uint("I")
    if version not in SUPPORTED_VERSIONS:
        raise EdgevoiceError(
            f"{path} is CTranslate2 format version {version}; edgevoice reads versions {SUPPORTED_VERSIONS}. "
            "Re-convert the model with a current ct2-transformers-converter"
        )
    spec, revision = reader.string(), reader.uint("I")
    variables = {}
    for _ in range(reader.uint("I")):
        name = reader.string()
        shape = tuple(reader.uint("I") for _ in range(reader.uint("B")))
        dtype_id, nbytes = reader.uint("B"), reader.uint("I")
        variables[name] = _decode(reader.take(nbytes), dtype_id, shape, name, path)
    aliases = {}
    for _ in range(reader.uint("I")):
        alias = reader.string()
        aliases[alias] = reader.string()
    return Ct2Model(spec=spec, revision=revision, variables=variables, aliases=aliases)


def _decode(raw: bytes, dtype_id: int, shape: tuple[int, ...], name: str, path: Path) -> np.ndarray:
    if dtype_id not in _DTYPES:
        raise EdgevoiceError(f"variable '{name}' in {path} has unknown dtype id {dtype_id}; is the file corrupt?")
    if _DTYPES[dtype_id] == "bfloat16":
        # bfloat16 is the top half of a float32.
        halves = np.frombuffer(raw, dtype=np.uint16).astype(np.uint32) << 16
        return halves.view(np.float32).reshape(shape)
    return np.frombuffer(raw, dtype=_DTYPES[dtype_id]).reshape(shape).copy()


def whisper_config_from_ct2(model: Ct2Model) -> WhisperConfig:
    """Sizes read from the tensors themselves, so any Whisper size loads (tiny ... large)."""
    v = _require_whisper(model).variables
    width = v["encoder/conv1/weight"].shape[0]
    return WhisperConfig(
        n_mels=v["encoder/conv1/weight"].shape[1],
        n_audio_ctx=v["encoder/position_encodings/encodings"].shape[0],
        width=width,
        n_audio_heads=int(v["encoder/num_heads"]),
        n_audio_layers=_count_layers(v, "encoder"),
        n_vocab=v["decoder/embeddings/weight"].shape[0],
        n_text_ctx=v["decoder/position_encodings/encodings"].shape[0],
        n_text_heads=int(v["decoder/num_heads"]),
        n_text_layers=_count_layers(v, "decoder"),
        ffn=v["encoder/layer_0/ffn/linear_0/weight"].shape[0],
    )


def load_whisper_ct2(path: str | Path) -> Whisper:
    """A ``Whisper`` in eval mode with every tensor of a CTranslate2 WhisperSpec, used once."""
    model = read_ct2_model(path)
    config = whisper_config_from_ct2(model)
    whisper = Whisper(config)
    load_state_strict(whisper, whisper_state_from_ct2(model, config), source=str(path))
    return whisper.eval()


def whisper_state_from_ct2(model: Ct2Model, config: WhisperConfig) -> dict[str, torch.Tensor]:
    """Our state dict from CTranslate2 names; errors name any variable left unused or missing."""
    pool = _VariablePool(model)
    _check_flags(pool, config)
    state = {
        "encoder.conv1.weight": pool.take("encoder/conv1/weight"),
        "encoder.conv1.bias": pool.take("encoder/conv1/bias"),
        "encoder.conv2.weight": pool.take("encoder/conv2/weight"),
        "encoder.conv2.bias": pool.take("encoder/conv2/bias"),
        "encoder.positions": pool.take("encoder/position_encodings/encodings"),
        "decoder.embed.weight": pool.take("decoder/embeddings/weight"),
        "decoder.positions": pool.take("decoder/position_encodings/encodings"),
    }
    state.update(_norm(pool, "encoder/layer_norm", "encoder.final_norm"))
    state.update(_norm(pool, "decoder/layer_norm", "decoder.final_norm"))
    for i in range(config.n_audio_layers):
        src, dst = f"encoder/layer_{i}", f"encoder.layers.{i}"
        state.update(_norm(pool, f"{src}/self_attention/layer_norm", f"{dst}.attn_norm"))
        state.update(_fused_qkv(pool, f"{src}/self_attention", f"{dst}.attn", config.width))
        state.update(_ffn(pool, f"{src}/ffn", dst))
    for i in range(config.n_text_layers):
        src, dst = f"decoder/layer_{i}", f"decoder.layers.{i}"
        state.update(_norm(pool, f"{src}/self_attention/layer_norm", f"{dst}.self_norm"))
        state.update(_fused_qkv(pool, f"{src}/self_attention", f"{dst}.self_attn", config.width))
        state.update(_norm(pool, f"{src}/attention/layer_norm", f"{dst}.cross_norm"))
        state.update(_linear(pool, f"{src}/attention/linear_0", f"{dst}.cross_attn.q"))
        state.update(_linear(pool, f"{src}/attention/linear_2", f"{dst}.cross_attn.out"))
        kv_weight, kv_bias = pool.take(f"{src}/attention/linear_1/weight"), pool.take(f"{src}/attention/linear_1/bias")
        k_bias = kv_bias[: config.width]
        _require_zero(k_bias, f"{src}/attention/linear_1/bias[:{config.width}]", model)
        state[f"cross_kv.{i}.k.weight"] = kv_weight[: config.width]
        state[f"cross_kv.{i}.v.weight"] = kv_weight[config.width :]
        state[f"cross_kv.{i}.v.bias"] = kv_bias[config.width :]
        state.update(_ffn(pool, f"{src}/ffn", dst))
    pool.take_alias("decoder/projection/weight", "decoder/embeddings/weight")
    pool.require_all_used()
    return state


class _VariablePool:
    """Hands out each variable once and reports whatever is left over."""

    def __init__(self, model: Ct2Model):
        self.model = model
        self.unused = set(model.variables)
        self.aliases_unused = set(model.aliases)

    def take(self, name: str) -> torch.Tensor:
        return torch.from_numpy(self.take_array(name).astype(np.float32))

    def take_array(self, name: str) -> np.ndarray:
        if name not in self.model.variables:
            raise EdgevoiceError(f"variable '{name}' is missing from the CTranslate2 {self.model.spec}; is this a Whisper model.bin?")
        if name not in self.unused:
            raise EdgevoiceError(f"variable '{name}' of the CTranslate2 model would be used twice; this is a loader bug")
        self.unused.discard(name)
        return self.model.variables[name]

    def take_alias(self, alias: str, target: str) -> None:
        # The output projection is the embedding (tied); any other aliasing is a different model.
        if self.model.aliases.get(alias, target) != target:
            raise EdgevoiceError(f"CTranslate2 alias '{alias}' points to '{self.model.aliases[alias]}', expected '{target}'")
        if alias in self.model.variables:
            _require_equal(self.take_array(alias), self.model.variables[target], alias, target)
        self.aliases_unused.discard(alias)

    def require_all_used(self) -> None:
        left = sorted(self.unused) + sorted(f"alias {a}" for a in self.aliases_unused)
        if left:
            raise EdgevoiceError(
                f"the CTranslate2 model has variables edgevoice's Whisper does not use: {left[:8]}"
                f"{' ...' if len(left) > 8 else ''}; it is not a plain Whisper checkpoint"
            )


def _check_flags(pool: _VariablePool, config: WhisperConfig) -> None:
    """Scalar flags of the spec must describe the Whisper we build (else the math would differ)."""
    expected = {
        "decoder/activation": _GELU,
        "decoder/alibi": 0,
        "decoder/pre_norm": 1,
        "decoder/scale_embeddings": 0,
        "decoder/start_from_zero_embedding": 0,
        "decoder/num_heads": config.n_text_heads,
        "encoder/num_heads": config.n_audio_heads,
    }
    for name, value in expected.items():
        found = int(pool.take_array(name))
        if found != value:
            raise EdgevoiceError(f"CTranslate2 flag '{name}' is {found}, edgevoice's Whisper needs {value}")
    # Word-timestamp metadata: read and dropped (we decode without timestamps).
    pool.take_array("decoder/alignment_heads")
    pool.take_array("decoder/alignment_layer")


def _norm(pool: _VariablePool, src: str, dst: str) -> dict[str, torch.Tensor]:
    return {f"{dst}.weight": pool.take(f"{src}/gamma"), f"{dst}.bias": pool.take(f"{src}/beta")}


def _linear(pool: _VariablePool, src: str, dst: str) -> dict[str, torch.Tensor]:
    return {f"{dst}.weight": pool.take(f"{src}/weight"), f"{dst}.bias": pool.take(f"{src}/bias")}


def _ffn(pool: _VariablePool, src: str, dst: str) -> dict[str, torch.Tensor]:
    return {
        **_norm(pool, f"{src}/layer_norm", f"{dst}.mlp_norm"),
        **_linear(pool, f"{src}/linear_0", f"{dst}.mlp.fc1"),
        **_linear(pool, f"{src}/linear_1", f"{dst}.mlp.fc2"),
    }


def _fused_qkv(pool: _VariablePool, src: str, dst: str, width: int) -> dict[str, torch.Tensor]:
    # CTranslate2 fuses q, k, v into linear_0 (3D rows) and gives k a zero bias slot.
    weight, bias = pool.take(f"{src}/linear_0/weight"), pool.take(f"{src}/linear_0/bias")
    _require_zero(bias[width : 2 * width], f"{src}/linear_0/bias[{width}:{2 * width}]", pool.model)
    out = _linear(pool, f"{src}/linear_1", f"{dst}.out")
    return {
        f"{dst}.q.weight": weight[:width], f"{dst}.q.bias": bias[:width],
        f"{dst}.k.weight": weight[width : 2 * width],
        f"{dst}.v.weight": weight[2 * width :], f"{dst}.v.bias": bias[2 * width :],
        **out,
    }


def _require_zero(values: torch.Tensor, what: str, model: Ct2Model) -> None:
    if torch.count_nonzero(values):
        raise EdgevoiceError(f"{what} of the CTranslate2 {model.spec} is not zero; Whisper's key projection has no bias")


def _require_equal(a: np.ndarray, b: np.ndarray, name_a: str, name_b: str) -> None:
    if a.shape != b.shape or not np.array_equal(a, b):
        raise EdgevoiceError(f"'{name_a}' differs from '{name_b}', but Whisper ties them; the file is not a plain Whisper")


def _count_layers(variables: dict[str, np.ndarray], side: str) -> int:
    n = 0
    while f"{side}/layer_{n}/ffn/linear_0/weight" in variables:
        n += 1
    return n


def _require_whisper(model: Ct2Model) -> Ct2Model:
    if model.spec != "WhisperSpec":
        raise EdgevoiceError(f"the CTranslate2 model is a {model.spec}, not a WhisperSpec; pass a faster-whisper model")
    return model
