"""INT8 weight variants of exported graphs.

One form TensorRT loads, ``channel`` (``weights_int8_dq``): every float weight initializer of a
MatMul (optionally also Gemm/Gather tables) becomes an int8 initializer with one float scale per
output channel and zero point 0 (TensorRT quantization is symmetric) behind a standard
``DequantizeLinear``; activations stay float. Only standard opset-20 ops, so the TensorRT 10.3 op check passes; the weights shrink ~4x.
onnxruntime (1.32, ENABLE_EXTENDED and up) fuses each DequantizeLinear -> MatMul into its own
``MatMulNBits`` (bits=8, accuracy_level 4: int8 activations per block) at load, so the file stays
standard while the CPU runs integer kernels; ENABLE_BASIC leaves the DequantizeLinear running every
step (~3 tok/s). Numbers in BENCHMARKS.md (2026-12-04). The cascade applies it at export to its
one ``llm`` graph (``llm_weights="int8"``), so prefill chunks and decode steps read the same int8
weights: 223 MB in the package, where the two graphs of older packages carried them twice.

Two more forms, both onnxruntime-loadable and both refused by TensorRT's ONNX parser (10.3 and later):

* ``blockwise`` (default): weight-only int8 with one scale and zero point per 32 weights of a
  column (``com.microsoft.MatMulNBits``, bits=8). Activations stay float32, so greedy output
  matches the fp32 graph (measured on SmolLM2: identical over 4 prompts x 32 tokens) while the
  weights read per decode step shrink ~4x. ``MatMulNBits`` is an onnxruntime contrib op: TensorRT
  does not know the ``com.microsoft`` domain.
* ``dynamic``: ``quantize_dynamic`` per-channel int8 weights with activations quantized at run
  time (``DynamicQuantizeLinear`` + ``MatMulInteger``, neither parsed by TensorRT). Faster on
  some CPUs, but quantizing activations per tensor changes SmolLM2-135M's greedy output after a
  few tokens (measured), so it is not the default.

Int8 activations on TensorRT (static QuantizeLinear/DequantizeLinear pairs around activations
too, e.g. from NVIDIA ModelOpt) is a different export, not one of these files.

A GGUF's own blocks (``weights_block_codes``, ``llm_weights="gguf"``) are not a re-quantization:
the file's 4/8-bit codes and fp16 scales are written as they are (int8 codes, a per-block scale
and Q4_1's per-block offset, standard ops only), and the onnxruntime backend fuses them into
4-bit ``MatMulNBits`` at load, in memory (``edgevoice.backends.ort_blocks``).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgevoice.errors import EdgevoiceError, MissingDependencyError

METHODS = ("blockwise", "dynamic", "channel")
# Ops each method introduces that the TensorRT ONNX parser cannot load.
TRT_UNSUPPORTED_OPS = {"blockwise": ("MatMulNBits",), "dynamic": ("MatMulInteger", "DynamicQuantizeLinear"), "channel": ()}
BLOCK_SIZE = 32  # weights per scale: GGUF's Q4_1/Q8_0 block size, so no coarser than the source


def quantize_int8_weights(source: Path, target: Path, method: str = "blockwise") -> Path:
    """Write ``target``: ``source`` with its MatMul weights in int8 (see the module docstring)."""
    if method not in METHODS:
        raise EdgevoiceError(f"unknown int8 method '{method}'; choose one of: {', '.join(METHODS)}")
    if method == "channel":
        import onnx

        model = onnx.load(str(source))
        weights_int8_dq(model)
        target.parent.mkdir(parents=True, exist_ok=True)
        onnx.save(model, str(target))
        return target
    try:
        import onnx
        from onnxruntime.quantization import QuantType, quantize_dynamic
        from onnxruntime.quantization import matmul_nbits_quantizer as nbits
        from onnxruntime.quantization.quant_utils import QuantFormat
    except ImportError as exc:
        raise MissingDependencyError.for_module("onnxruntime", "ort", "int8 quantization") from exc
    target.parent.mkdir(parents=True, exist_ok=True)
    if method == "dynamic":
        quantize_dynamic(
            model_input=str(source),
            model_output=str(target),
            weight_type=QuantType.QInt8,
            per_channel=True,
            op_types_to_quantize=["MatMul", "Gemm"],
            extra_options={"MatMulConstBOnly": True},
        )
        return target
    config = nbits.DefaultWeightOnlyQuantConfig(
        block_size=BLOCK_SIZE, is_symmetric=False, bits=8, quant_format=QuantFormat.QOperator, op_types_to_quantize=("MatMul",)
    )
    quantizer = nbits.MatMulNBitsQuantizer(onnx.load(str(source)), algo_config=config)
    quantizer.process()
    quantizer.model.save_model_to_file(str(target), use_external_data_format=False)
    return target


# Which axis of a weight input is the output channel: MatMul's B is (in, out); Gemm with
# transB and a Gather table (also the tied LM head's Gemm) are (out, in) / (rows, features).
def _channel_axis(node, index: int) -> int | None:
    if node.op_type == "MatMul" and index == 1:
        return 1
    if node.op_type == "Gemm" and index == 1:
        trans_b = next((a.i for a in node.attribute if a.name == "transB"), 0)
        return 0 if trans_b else 1
    if node.op_type == "Gather" and index == 0:
        axis = next((a.i for a in node.attribute if a.name == "axis"), 0)
        return 0 if axis == 0 else None
    return None


# Linear weights only by default: SmolLM2's tied embedding/LM head table read through a
# DequantizeLinear changed greedy output as often and cost onnxruntime a 113 MB dequantize per
# step (decode ~24 tok/s vs ~30 with it left float, 2 threads; measured 2026-12-04).
INT8_WEIGHT_OPS = ("MatMul",)


def weights_int8_dq(model, op_types: tuple[str, ...] = INT8_WEIGHT_OPS, min_elements: int = 4096) -> int:
    """Rewrite ``model`` in place: float 2-D weights -> int8 + per-channel DequantizeLinear; returns the count.

    A weight is quantized only when every reader agrees on its channel axis (the tied embedding
    is read by Gather and by the head's Gemm(transB=1): both axis 0). Small tensors stay float.
    """
    import numpy as np
    from onnx import TensorProto

    graph = model.graph
    readers: dict[str, list] = {}
    for node in graph.node:
        for index, name in enumerate(node.input):
            readers.setdefault(name, []).append(_channel_axis(node, index) if node.op_type in op_types else None)
    kept, added = [], []
    for tensor in graph.initializer:
        axes = set(readers.get(tensor.name, [None]))
        if tensor.data_type != TensorProto.FLOAT or len(tensor.dims) != 2 or len(axes) != 1 or None in axes \
                or np.prod(tensor.dims) < min_elements:
            kept.append(tensor)
            continue
        added.append(_dequantized(tensor, axes.pop(), kept))
    del graph.initializer[:]
    graph.initializer.extend(kept)
    nodes = added + list(graph.node)  # DQ nodes read only initializers: first keeps the order topological
    del graph.node[:]
    graph.node.extend(nodes)
    return len(added)


def _dequantized(tensor, axis: int, initializers: list):
    """Append ``tensor``'s int8 values, scales and zero points; return the DequantizeLinear rebuilding it."""
    import numpy as np
    from onnx import helper, numpy_helper

    weight = numpy_helper.to_array(tensor).astype(np.float32)
    # Symmetric: max |w| of a channel maps to 127 (TensorRT needs zero point 0).
    scale = np.abs(weight).max(axis=1 - axis) / 127.0
    scale = np.where(scale > 0, scale, 1.0).astype(np.float32)
    shaped = scale[None, :] if axis == 1 else scale[:, None]
    q = np.clip(np.rint(weight / shaped), -127, 127).astype(np.int8)
    names = [f"{tensor.name}_int8", f"{tensor.name}_scale", f"{tensor.name}_zero"]
    initializers += [numpy_helper.from_array(q, names[0]), numpy_helper.from_array(scale, names[1]),
                     numpy_helper.from_array(np.zeros(scale.shape, np.int8), names[2])]
    return helper.make_node("DequantizeLinear", names, [tensor.name], name=f"{tensor.name}_dq", axis=axis)


def op_types(path: Path) -> set[str]:
    """The node op types of a graph (to report what TensorRT would reject)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {node.op_type for node in model.graph.node}


# --- a GGUF's own blocks (llm_weights="gguf") --------------------------------------------------


def weights_block_codes(model, codes) -> int:
    """Rewrite ``model`` in place: each MatMul weight that is one of ``codes`` (``BlockCodes``, matched
    by value) becomes the GGUF's integer codes; returns how many. Standard opset-20 ops only:

        B = Reshape(Mul(DequantizeLinear(codes int8 (blocks, 32, out)), scale (blocks, 1, out)), (in, out))
        y = MatMul(x, B) [+ MatMul(ReduceSum(Reshape(x, (..., blocks, 32)), -1), offset (blocks, out))]

    The second term is Q4_1's per-block offset: the sum of a block's inputs times its offset. Plain
    onnxruntime rebuilds B on every call; the onnxruntime backend fuses each B into ``MatMulNBits``
    at load (``edgevoice.backends.ort_blocks``), where the 4-bit codes are read as they are. The
    graph passes the TensorRT 10.3 static op check; TensorRT has never built it (it should fold B
    to float weights at build time).
    """
    from onnx import numpy_helper

    by_print = {c.fingerprint: c for c in codes}
    initializers = {t.name: t for t in model.graph.initializer}
    producers = {out: node for node in model.graph.node for out in node.output}
    shapes = _value_shapes(model)
    nodes, added, replaced, orphans = [], [], 0, set()
    for node in model.graph.node:
        found = _block_weight(node, initializers, producers, by_print) if node.op_type == "MatMul" else None
        x_shape, y_shape = shapes.get(node.input[0]), shapes.get(node.output[0])
        if found is None or x_shape is None or y_shape is None or len(x_shape) not in (2, 3):
            nodes.append(node)
            continue
        block, transpose = found
        nodes += _block_matmul(node, block, len(x_shape), added)
        _state_shapes(model, node, block, x_shape, y_shape)
        replaced += 1
        if transpose is not None:
            orphans.add(transpose.output[0])
    readers = {name for node in nodes for name in node.input}
    nodes = [n for n in nodes if not (n.op_type == "Transpose" and n.output[0] in orphans and n.output[0] not in readers)]
    used = {name for node in nodes for name in node.input}
    kept = [t for t in model.graph.initializer if t.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(kept + [numpy_helper.from_array(a, n) for n, a in added])
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    return replaced


def _block_weight(node, initializers: dict, producers: dict, by_print: dict):
    """(BlockCodes, the Transpose it came through or None) of a MatMul's B, if B is one of the codes."""
    from onnx import numpy_helper

    from edgevoice.weights.llm.gguf_blocks import fingerprint

    name, transpose = node.input[1], None
    if name not in initializers and name in producers and producers[name].op_type == "Transpose":
        transpose = producers[name]  # the tied LM head reads the embedding table through a Transpose
        perm = next((list(a.ints) for a in transpose.attribute if a.name == "perm"), [1, 0])
        if perm != [1, 0] or transpose.input[0] not in initializers:
            return None
        name = transpose.input[0]
    if name not in initializers or len(initializers[name].dims) != 2:
        return None
    values = numpy_helper.to_array(initializers[name])
    if values.dtype != np.float32:
        return None
    block = by_print.get(fingerprint(values.T if transpose is not None else values))
    return (block, transpose) if block is not None else None


def _block_matmul(node, block, rank: int, added: list) -> list:
    """The nodes that replace MatMul ``node`` (its output name kept); their initializers go to ``added``."""
    from onnx import helper

    from edgevoice.weights.llm.gguf_blocks import BLOCK

    out_features, in_features = block.codes.shape
    blocks = in_features // BLOCK
    base = _gguf_name(node)
    added += [
        (f"{base}_codes", np.ascontiguousarray(block.codes.T.reshape(blocks, BLOCK, out_features))),  # (blocks, 32, out)
        (f"{base}_unit", np.array(1.0, np.float32)),
        (f"{base}_zero", np.array(0, np.int8)),
        (f"{base}_scale", np.ascontiguousarray(block.scale.T.reshape(blocks, 1, out_features))),
        (f"{base}_shape", np.array([in_features, out_features], np.int64)),
    ]
    weight = f"{base}_weight"
    nodes = [
        helper.make_node("DequantizeLinear", [f"{base}_codes", f"{base}_unit", f"{base}_zero"], [f"{base}_float"],
                         name=f"{base}_dq"),
        helper.make_node("Mul", [f"{base}_float", f"{base}_scale"], [f"{base}_scaled"], name=f"{base}_mul"),
        helper.make_node("Reshape", [f"{base}_scaled", f"{base}_shape"], [weight], name=f"{base}_reshape"),
    ]
    if block.offset is None:
        return nodes + [helper.make_node("MatMul", [node.input[0], weight], list(node.output), name=node.name)]
    # Q4_1: + sum over each block of inputs x its offset; x is (B, T, in) or (T, in).
    added += [(f"{base}_xshape", np.array([0] * (rank - 1) + [blocks, BLOCK], np.int64)),
              (f"{base}_axes", np.array([-1], np.int64)),
              (f"{base}_offset", np.ascontiguousarray(block.offset.T))]  # (blocks, out)
    return nodes + [
        helper.make_node("MatMul", [node.input[0], weight], [f"{base}_main"], name=node.name),
        helper.make_node("Reshape", [node.input[0], f"{base}_xshape"], [f"{base}_xblocks"], name=f"{base}_xreshape"),
        helper.make_node("ReduceSum", [f"{base}_xblocks", f"{base}_axes"], [f"{base}_xsums"], keepdims=0,
                         name=f"{base}_xsum"),
        helper.make_node("MatMul", [f"{base}_xsums", f"{base}_offset"], [f"{base}_shift"], name=f"{base}_offsets"),
        helper.make_node("Add", [f"{base}_main", f"{base}_shift"], list(node.output), name=f"{base}_add"),
    ]


def _gguf_name(node) -> str:
    """Prefix of the tensors and nodes that replace MatMul ``node``."""
    return f"{node.name or node.output[0]}_gguf"


def _value_shapes(model) -> dict[str, list]:
    """Shape (dim values or names) of every value the graph states or onnx infers."""
    import onnx

    graph = onnx.shape_inference.infer_shapes(model).graph
    return {v.name: [d.dim_value if d.HasField("dim_value") else d.dim_param for d in v.type.tensor_type.shape.dim]
            for v in (*graph.value_info, *graph.input, *graph.output) if v.type.tensor_type.HasField("shape")}


def _state_shapes(model, node, block, x_shape: list, y_shape: list) -> None:
    """value_info for the new tensors, so shape-reading tools (the planner) still count the MatMuls."""
    from onnx import TensorProto, helper

    from edgevoice.weights.llm.gguf_blocks import BLOCK

    out_features, in_features = block.codes.shape
    base = _gguf_name(node)
    shapes = {f"{base}_weight": [in_features, out_features]}
    if block.offset is not None:
        shapes |= {f"{base}_main": y_shape, f"{base}_shift": y_shape, f"{base}_xsums": x_shape[:-1] + [in_features // BLOCK]}
    model.graph.value_info.extend(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)
                                  for name, shape in shapes.items())
