"""Load-time fusion of a GGUF's integer codes into onnxruntime's 4-bit kernels.

A graph exported with ``llm_weights="gguf"`` keeps each quantized weight as the file's codes in
standard ops only, which pass the TensorRT 10.3 static op check (TensorRT itself has never built
such a graph) and which any ONNX runtime reads (``edgevoice.export.quantize.weights_block_codes``)::

    B = Reshape(Mul(DequantizeLinear(codes int8 (blocks, 32, out)), scale (blocks, 1, out)), (in, out))

Run as written, onnxruntime would rebuild every float B on every call (slower than float weights).
So the onnxruntime backend rewrites each ``MatMul(x, B)`` into onnxruntime's ``MatMulNBits``
(a contrib op: it exists only in this in-memory graph, never in a package) before the session
starts. 4-bit codes (-8..7) become one ``MatMulNBits`` with bits=4 (stored nibble = code + 8, the
op's default zero point 8). 8-bit codes (Q8_0: the tied embedding / LM head) are split exactly as
``code = 16 * high + low`` into two 4-bit products, because the op's 8-bit kernel ran SmolLM2's
decode at ~10 tok/s against ~47 for float weights (measured, BENCHMARKS.md 2026-12-06).
``accuracy_level=1`` keeps the activations float32, so greedy output stays the float graph's;
level 4 (int8 activations) was faster and changed it.
"""

from __future__ import annotations

import numpy as np

BLOCK = 32
ACCURACY_FLOAT32 = 1  # MatMulNBits' accuracy_level: float32 activations


def fuse_block_weights(model) -> int:
    """Rewrite ``model`` (onnx ModelProto) in place; returns how many MatMuls now run MatMulNBits."""
    from onnx import helper, numpy_helper

    graph = model.graph
    initializers = {t.name: t for t in graph.initializer}
    producers = {out: node for node in graph.node for out in node.output}
    readers: dict[str, int] = {}
    for node in graph.node:
        for name in node.input:
            readers[name] = readers.get(name, 0) + 1
    nodes, added, dropped, fused = [], [], set(), 0
    for node in graph.node:
        found = _codes_behind(node, producers, initializers, readers) if node.op_type == "MatMul" else None
        if found is None:
            nodes.append(node)
            continue
        codes, scale, chain = found
        nodes += _nbits_nodes(node, codes, scale, added)
        dropped |= {id(n) for n in chain}
        fused += 1
    if not fused:
        return 0
    nodes = [n for n in nodes if id(n) not in dropped]
    used = {name for node in nodes for name in node.input}
    kept = [t for t in graph.initializer if t.name in used]
    del graph.initializer[:]
    graph.initializer.extend(kept + [numpy_helper.from_array(a, n) for n, a in added])
    del graph.node[:]
    graph.node.extend(nodes)
    if not any(o.domain == "com.microsoft" for o in model.opset_import):
        model.opset_import.append(helper.make_opsetid("com.microsoft", 1))
    return fused


def _codes_behind(matmul, producers: dict, initializers: dict, readers: dict):
    """(codes (blocks, 32, out) int8, scale (blocks, out), the three nodes) if B is the codes pattern."""
    from onnx import numpy_helper

    reshape = producers.get(matmul.input[1])
    mul = producers.get(reshape.input[0]) if reshape is not None and reshape.op_type == "Reshape" else None
    dq = producers.get(mul.input[0]) if mul is not None and mul.op_type == "Mul" else None
    if dq is None or dq.op_type != "DequantizeLinear":
        return None
    if any(readers.get(name) != 1 for name in (matmul.input[1], mul.output[0], dq.output[0])):
        return None  # the rebuilt weight is read elsewhere too: leave it as it is
    names = [dq.input[0], mul.input[1], *dq.input[1:]]
    if any(name not in initializers for name in names):
        return None
    codes, scale = (numpy_helper.to_array(initializers[n]) for n in names[:2])
    unit = numpy_helper.to_array(initializers[names[2]])
    zero = numpy_helper.to_array(initializers[names[3]]) if len(names) > 3 else np.zeros((), np.int8)
    if codes.dtype != np.int8 or codes.ndim != 3 or codes.shape[1] != BLOCK or unit.size != 1 or float(unit) != 1.0 \
            or zero.size != 1 or int(zero) != 0 or scale.shape != (codes.shape[0], 1, codes.shape[2]):
        return None
    return codes, scale[:, 0, :].astype(np.float32), (reshape, mul, dq)


def _nbits_nodes(matmul, codes: np.ndarray, scale: np.ndarray, added: list) -> list:
    """MatMulNBits node(s) computing ``matmul``'s output from the codes; initializers go to ``added``."""
    from onnx import helper

    blocks, _, out_features = codes.shape
    base = f"{matmul.output[0]}_nbits"
    by_row = codes.transpose(2, 0, 1).astype(np.int16)  # (out, blocks, 32): MatMulNBits' B is transposed
    if by_row.min() >= -8 and by_row.max() <= 7:
        parts = [("", by_row + 8, scale, None)]  # default zero point 8: weight = scale * (nibble - 8)
    else:  # 8-bit: code = 16 * high + low, high in -8..7 (zero point 8), low in 0..15 (zero point 0)
        high, low = np.floor_divide(by_row, 16), np.mod(by_row, 16)
        zeros = np.zeros(out_features * ((blocks + 1) // 2), np.uint8)
        parts = [("_high", high + 8, 16.0 * scale, None), ("_low", low, scale, zeros)]
    nodes, outputs = [], []
    for suffix, nibbles, part_scale, zero_points in parts:
        name = f"{base}{suffix}"
        inputs = [matmul.input[0], f"{name}_b", f"{name}_scales"]
        added += [(f"{name}_b", _pack(nibbles)), (f"{name}_scales", np.ascontiguousarray(part_scale.T).reshape(-1))]
        if zero_points is not None:
            inputs.append(f"{name}_zero")
            added.append((f"{name}_zero", zero_points))
        outputs.append(name if len(parts) > 1 else matmul.output[0])
        nodes.append(helper.make_node("MatMulNBits", inputs, [outputs[-1]], name=name, domain="com.microsoft",
                                      K=blocks * BLOCK, N=out_features, bits=4, block_size=BLOCK,
                                      accuracy_level=ACCURACY_FLOAT32))
    if len(parts) > 1:
        nodes.append(helper.make_node("Add", outputs, list(matmul.output), name=f"{base}_add"))
    return nodes


def _pack(nibbles: np.ndarray) -> np.ndarray:
    """(out, blocks, 32) values 0..15 -> (out, blocks, 16) uint8: input 2i in the low nibble, 2i + 1 high."""
    pairs = nibbles.astype(np.uint8).reshape(*nibbles.shape[:2], BLOCK // 2, 2)
    return (pairs[..., 0] | (pairs[..., 1] << 4)).astype(np.uint8)
