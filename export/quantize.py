"""INT8 weight variants of exported graphs for CPU targets (onnxruntime only).

Two forms, both onnxruntime-loadable and both refused by TensorRT's ONNX parser (10.3 and later):

* ``blockwise`` (default): weight-only int8 with one scale and zero point per 32 weights of a
  column (``com.microsoft.MatMulNBits``, bits=8). Activations stay float32, so greedy output
  matches the fp32 graph (measured on SmolLM2: identical over 4 prompts x 32 tokens) while the
  weights read per decode step shrink ~4x. ``MatMulNBits`` is an onnxruntime contrib op: TensorRT
  does not know the ``com.microsoft`` domain.
* ``dynamic``: ``quantize_dynamic`` per-channel int8 weights with activations quantized at run
  time (``DynamicQuantizeLinear`` + ``MatMulInteger``, neither parsed by TensorRT). Faster on
  some CPUs, but quantizing activations per tensor changes SmolLM2-135M's greedy output after a
  few tokens (measured), so it is not the default.

For TensorRT, int8 means static Q/DQ (QuantizeLinear/DequantizeLinear pairs around weights and
activations, e.g. from NVIDIA ModelOpt), which is a different export, not one of these files.
"""

from __future__ import annotations

from pathlib import Path

from edgevoice.errors import EdgevoiceError, MissingDependencyError

METHODS = ("blockwise", "dynamic")
# Ops each method introduces that the TensorRT ONNX parser cannot load.
TRT_UNSUPPORTED_OPS = {"blockwise": ("MatMulNBits",), "dynamic": ("MatMulInteger", "DynamicQuantizeLinear")}
BLOCK_SIZE = 32  # weights per scale: GGUF's Q4_1/Q8_0 block size, so no coarser than the source


def quantize_int8_weights(source: Path, target: Path, method: str = "blockwise") -> Path:
    """Write ``target``: ``source`` with its MatMul weights in int8 (see the module docstring)."""
    if method not in METHODS:
        raise EdgevoiceError(f"unknown int8 method '{method}'; choose one of: {', '.join(METHODS)}")
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


def op_types(path: Path) -> set[str]:
    """The node op types of a graph (to report what TensorRT would reject)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return {node.op_type for node in model.graph.node}
