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
"""

from __future__ import annotations

from pathlib import Path

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
