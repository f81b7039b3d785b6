"""A GGUF file's quantized weights as integer codes, block by block, for graphs that keep them.

llama.cpp stores each row of a weight in blocks of 32 inputs: Q4_0 and Q8_0 as ``scale * code``,
Q4_1 as ``scale * code + minimum``, with fp16 scales and minimums. The loader dequantizes them to
float32 for the torch module (``gguf.llm_state_from_gguf``); this module reads the same blocks as
``BlockCodes`` so that the exporter can write the weights as the file has them, 4 or 8 bits each,
instead of float32 (``llm_weights="gguf"``), and the runtime can run integer kernels on them.

Codes are int8 in one convention for every type: ``weight = scale * code (+ offset)`` per block,
4-bit types recentred to -8..7 (Q4_1's offset absorbs the +8: ``minimum + 8 * scale``). Each
``BlockCodes`` carries the fingerprint of the float32 weight the torch module holds, so the
exporter finds the graph initializer it replaces by value, whatever the graph exporter named it.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from edgevoice.models.llm import LlmConfig
from edgevoice.weights.llm.gguf import GgufFile, dequantize, hf_name, unpermute_rotary

BLOCK = 32  # inputs per block in Q4_0, Q4_1 and Q8_0
_BLOCK_BYTES = {"Q4_0": 18, "Q4_1": 20, "Q8_0": 34}  # fp16 scale (+ fp16 minimum) + the codes


@dataclass(frozen=True)
class BlockCodes:
    """One weight (out_features, in_features) as ``scale * codes (+ offset)`` per block of 32 inputs."""

    name: str  # Hugging Face parameter name
    codes: np.ndarray  # (out, in) int8: -8..7 for 4-bit types, -128..127 for Q8_0
    scale: np.ndarray  # (out, in // 32) float32
    offset: np.ndarray | None  # (out, in // 32) float32, Q4_1 only
    fingerprint: str  # of the float32 weight, transposed (in, out): as a MatMul's B initializer holds it

    @property
    def bits(self) -> int:
        return 4 if self.codes.min() >= -8 and self.codes.max() <= 7 else 8

    def dequantized(self) -> np.ndarray:
        """(out, in) float32: equal to the loader's weight up to one rounding of Q4_1's offset."""
        weight = np.repeat(self.scale, BLOCK, axis=1) * self.codes.astype(np.float32)
        return weight + np.repeat(self.offset, BLOCK, axis=1) if self.offset is not None else weight


def fingerprint(matmul_b: np.ndarray) -> str:
    """Names a float32 (in, out) weight by its bytes: how the exporter finds a graph's copy of it."""
    return hashlib.sha1(np.ascontiguousarray(matmul_b, dtype=np.float32).tobytes()).hexdigest()


def block_codes(file: GgufFile, config: LlmConfig) -> list[BlockCodes]:
    """Every Q4_0, Q4_1 and Q8_0 weight of ``file``, rows in the torch module's order."""
    source = file.path.name
    found = []
    for tensor in file.reader.tensors:
        kind = tensor.tensor_type.name
        if kind not in _BLOCK_BYTES or len(tensor.shape) != 2:
            continue
        codes, scale, offset = decode_blocks(np.asarray(tensor.data), kind, rows=int(tensor.shape[1]))
        weight = dequantize(tensor, source)
        heads = _rotary_heads(file, tensor.name, config)
        if heads is not None:  # the loader un-permutes these rows; the codes follow them
            weight, codes, scale = (unpermute_rotary(a, heads) for a in (weight, codes, scale))
            offset = unpermute_rotary(offset, heads) if offset is not None else None
        found.append(BlockCodes(hf_name(tensor.name, source), codes, scale, offset, fingerprint(weight.T)))
    return found


def decode_blocks(data: np.ndarray, kind: str, rows: int) -> tuple[np.ndarray, np.ndarray, np.ndarray | None]:
    """(codes (rows, in) int8, scale (rows, blocks), offset or None) of a tensor's raw blocks."""
    blocks = data.reshape(-1, _BLOCK_BYTES[kind])  # (rows * blocks_per_row, bytes)
    per_row = blocks.shape[0] // rows
    scale = blocks[:, 0:2].copy().view(np.float16).astype(np.float32).reshape(rows, per_row)
    if kind == "Q8_0":
        return blocks[:, 2:].copy().view(np.int8).reshape(rows, -1), scale, None
    start = 4 if kind == "Q4_1" else 2
    packed = blocks[:, start:]  # (n, 16): byte j holds input j (low nibble) and input j + 16 (high)
    nibbles = np.concatenate([packed & 0x0F, packed >> 4], axis=1).astype(np.int8) - 8  # (n, 32)
    codes = nibbles.reshape(rows, -1)
    if kind == "Q4_0":  # weight = scale * (nibble - 8)
        return codes, scale, None
    minimum = blocks[:, 2:4].copy().view(np.float16).astype(np.float32).reshape(rows, per_row)
    return codes, scale, minimum + 8.0 * scale  # scale * nibble + minimum = scale * (nibble - 8) + offset


def _rotary_heads(file: GgufFile, name: str, config: LlmConfig) -> int | None:
    if file.architecture != "llama":
        return None
    if name.endswith("attn_q.weight"):
        return config.heads
    return config.kv_heads if name.endswith("attn_k.weight") else None
