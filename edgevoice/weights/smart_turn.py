"""Smart Turn v3.2 weights from the int8 ONNX graph that ships in the pipecat-ai wheel.

The graph is a static QDQ quantization (onnxruntime.quantization): every weight is an int8 (bias:
int32) initializer behind a ``DequantizeLinear`` with per-tensor or per-axis scale and zero point;
activations pass through QuantizeLinear/DequantizeLinear pairs whose scales are calibration
constants, not weights. Float weights (LayerNorms, most biases, positions) are plain initializers.

Names: LayerNorm, bias and conv/classifier initializers keep their PyTorch names
(``inner.encoder.*``, ``inner.classifier.*``), but the exporter renamed the encoder's and pooling's
MatMul weights to ``val_N``. Each one is named from the graph: the bias its MatMul's output is
added to (``...q_proj.bias`` -> ``...q_proj.weight``); the key projection has no bias, so it is
the bias-less MatMul that reads the same input as a ``q_proj``.

Strict: every initializer is claimed exactly once, as a weight, an activation-quantization
constant or a small graph constant (a shape, the GELU's sqrt(2)); anything else, and any weight
our module lacks or does not get, is an EdgevoiceError naming the tensor.
"""

from __future__ import annotations

import re
from collections import defaultdict
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import numpy_helper

from edgevoice.errors import EdgevoiceError
from edgevoice.models.smart_turn import SmartTurn, SmartTurnConfig
from edgevoice.weights.packages import package_file
from edgevoice.weights.strict import load_state_strict

REQUIREMENT = "pipecat-ai==1.14.0"
SHIPPED_ONNX = "audio/turn/smart_turn/data/smart-turn-v3.2-cpu.onnx"  # inside the pipecat package
_UPSTREAM_PREFIX = "inner."
# Ops that only reshape, slice or scale activations by a fixed number: their small constant
# inputs are graph plumbing, not weights.
_PLUMBING_OPS = {"Reshape", "Concat", "Slice", "Gather", "Mul", "Div", "Add", "ReduceSum", "Transpose", "Unsqueeze"}
_PLUMBING_MAX_SIZE = 4
# upstream name -> our name; first match wins, \1 etc. refer to the pattern's groups.
_RENAMES = (
    (r"encoder\.conv([12])\.(weight|bias)", r"encoder.conv\1.\2"),
    (r"encoder\.embed_positions\.weight", r"encoder.positions"),
    (r"encoder\.layers\.(\d+)\.self_attn\.([qkv])_proj\.(weight|bias)", r"encoder.layers.\1.attn.\2.\3"),
    (r"encoder\.layers\.(\d+)\.self_attn\.out_proj\.(weight|bias)", r"encoder.layers.\1.attn.out.\2"),
    (r"encoder\.layers\.(\d+)\.self_attn_layer_norm\.(weight|bias)", r"encoder.layers.\1.attn_norm.\2"),
    (r"encoder\.layers\.(\d+)\.final_layer_norm\.(weight|bias)", r"encoder.layers.\1.mlp_norm.\2"),
    (r"encoder\.layers\.(\d+)\.(fc[12])\.(weight|bias)", r"encoder.layers.\1.mlp.\2.\3"),
    (r"encoder\.layer_norm\.(weight|bias)", r"encoder.final_norm.\1"),
    (r"pool_attention\.0\.(weight|bias)", r"pool.hidden.\1"),
    (r"pool_attention\.2\.(weight|bias)", r"pool.score.\1"),
    (r"classifier\.0\.(weight|bias)", r"classifier.hidden.\1"),
    (r"classifier\.1\.(weight|bias)", r"classifier.norm.\1"),
    (r"classifier\.4\.(weight|bias)", r"classifier.narrow.\1"),
    (r"classifier\.6\.(weight|bias)", r"classifier.out.\1"),
)


def shipped_onnx_path() -> Path:
    """The Smart Turn v3.2 graph inside the installed pipecat-ai (found without importing pipecat)."""
    return package_file("pipecat", SHIPPED_ONNX, REQUIREMENT)


def dequantize(quantized: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None, axis: int) -> np.ndarray:
    """DequantizeLinear: (q - zero_point) * scale, per tensor (one scale) or per channel along ``axis``."""
    scale = scale.astype(np.float64)
    zero = np.zeros((), np.int64) if zero_point is None else zero_point.astype(np.int64)
    if scale.size > 1:  # one scale (and zero point) per slice along the quantized axis
        shape = [1] * quantized.ndim
        shape[axis % quantized.ndim] = scale.size
        scale = scale.reshape(shape)
        zero = zero.reshape(shape) if zero.size > 1 else zero
    return ((quantized.astype(np.int64) - zero) * scale).astype(np.float32)


class _ShippedGraph:
    """The graph's initializers and wiring, with the bookkeeping that makes loading strict."""

    def __init__(self, model: onnx.ModelProto, source: str):
        self.source = source
        self.nodes = list(model.graph.node)
        self.arrays = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
        self.consumers: dict[str, list[onnx.NodeProto]] = defaultdict(list)
        for node in self.nodes:
            for name in node.input:
                self.consumers[name].append(node)
        self.claims: dict[str, str] = {}  # initializer -> what it is

    def claim(self, name: str, role: str) -> None:
        """Record what an initializer is; the same initializer as two different things is an error."""
        if self.claims.get(name, role) != role:
            raise EdgevoiceError(
                f"initializer '{name}' in {self.source} is used both as {self.claims[name]} and as {role}; "
                "this is not the Smart Turn v3.2 graph edgevoice knows — install pipecat-ai==1.14.0"
            )
        self.claims[name] = role

    def sole_consumer(self, tensor: str, op_type: str) -> onnx.NodeProto | None:
        found = [n for n in self.consumers.get(tensor, ()) if n.op_type == op_type]
        return found[0] if len(self.consumers.get(tensor, ())) == 1 and found else None

    def past_activation_qdq(self, tensor: str) -> str:
        """Follow a tensor through the activation QuantizeLinear -> DequantizeLinear pairs after it."""
        while (quantize := self.sole_consumer(tensor, "QuantizeLinear")) is not None:
            dequantize_node = self.sole_consumer(quantize.output[0], "DequantizeLinear")
            if dequantize_node is None:
                return tensor
            tensor = dequantize_node.output[0]
        return tensor

    def unclaimed(self) -> list[str]:
        return sorted(set(self.arrays) - set(self.claims))


def _attribute(node: onnx.NodeProto, name: str, default: int) -> int:
    return next((onnx.helper.get_attribute_value(a) for a in node.attribute if a.name == name), default)


def _dequantized_weights(graph: _ShippedGraph) -> dict[str, tuple[np.ndarray, onnx.NodeProto]]:
    """Every weight DequantizeLinear's output: its float value and the node."""
    found = {}
    for node in graph.nodes:
        if node.op_type == "DequantizeLinear" and node.input[0] in graph.arrays:
            inputs = [graph.arrays[name] for name in node.input[1:]]
            scale, zero_point = inputs[0], inputs[1] if len(inputs) > 1 else None
            found[node.output[0]] = (dequantize(graph.arrays[node.input[0]], scale, zero_point, _attribute(node, "axis", 1)), node)
            for name in node.input:
                graph.claim(name, f"the quantized weight {node.output[0]}")
    return found


def _claim_activation_quantization(graph: _ShippedGraph) -> None:
    for node in graph.nodes:
        quantizes_activation = node.op_type == "QuantizeLinear" or (
            node.op_type == "DequantizeLinear" and node.input[0] not in graph.arrays)
        if quantizes_activation:
            for name in node.input[1:]:
                graph.claim(name, "an activation quantization constant")


def _name_matmul_weight(graph: _ShippedGraph, tensor: str) -> str:
    """Upstream name of an anonymous MatMul weight, from the bias added to the MatMul's output."""
    matmul = graph.sole_consumer(tensor, "MatMul")
    if matmul is None or matmul.input[1] != tensor:
        raise EdgevoiceError(
            f"the weight {tensor} in {graph.source} feeds no MatMul as its right operand; "
            "this is not the Smart Turn v3.2 graph edgevoice knows — install pipecat-ai==1.14.0"
        )
    bias = _added_bias(graph, graph.past_activation_qdq(matmul.output[0]))
    if bias is not None:
        return bias[: -len("bias")] + "weight"
    # The key projection has no bias: it reads the same normalized input as its query projection.
    for sibling in graph.consumers[matmul.input[0]]:
        if sibling is not matmul and sibling.op_type == "MatMul":
            sibling_bias = _added_bias(graph, graph.past_activation_qdq(sibling.output[0]))
            if sibling_bias is not None and ".q_proj." in sibling_bias:
                return sibling_bias.replace(".q_proj.bias", ".k_proj.weight")
    raise EdgevoiceError(f"cannot tell which layer the weight {tensor} in {graph.source} belongs to (no bias, no query sibling)")


def _added_bias(graph: _ShippedGraph, tensor: str) -> str | None:
    add = graph.sole_consumer(tensor, "Add")
    if add is None:
        return None
    named = [name for name in add.input if name.startswith(_UPSTREAM_PREFIX) and name.endswith(".bias")]
    return named[0] if named else None


def _upstream_name(graph: _ShippedGraph, output: str, node: onnx.NodeProto, value: np.ndarray) -> tuple[str, np.ndarray]:
    """Upstream name and torch layout of one dequantized weight."""
    if output.startswith(_UPSTREAM_PREFIX) and output.endswith(".bias"):
        return output, value  # conv and classifier biases: the output keeps the name
    named = node.input[0].removesuffix("_quantized")
    if named.startswith(_UPSTREAM_PREFIX):  # conv and Gemm weights keep their names
        gemm = graph.sole_consumer(output, "Gemm")
        transposed = gemm is not None and not _attribute(gemm, "transB", 0)
        return named, value.T if transposed else value
    # MatMul computes x @ W with W (in, out); nn.Linear stores (out, in).
    return _name_matmul_weight(graph, output), value.T


def read_upstream_state(path: Path) -> dict[str, torch.Tensor]:
    """Every weight of the shipped graph as float32, by its upstream PyTorch name, torch layout."""
    graph = _ShippedGraph(onnx.load(str(path)), path.name)
    state: dict[str, torch.Tensor] = {}

    def put(name: str, value: np.ndarray) -> None:
        if name in state:
            raise EdgevoiceError(f"{path.name} holds the weight '{name}' twice; is this the Smart Turn v3.2 graph?")
        state[name] = torch.from_numpy(np.array(value, dtype=np.float32))  # a writable copy

    for output, (value, node) in _dequantized_weights(graph).items():
        put(*_upstream_name(graph, output, node, value))
    _claim_activation_quantization(graph)
    for name in graph.unclaimed():
        value = graph.arrays[name]
        if name.startswith(_UPSTREAM_PREFIX) and value.dtype == np.float32:
            put(name, value)
            graph.claim(name, "a float weight")
        elif _is_plumbing(graph, name):
            graph.claim(name, "a graph constant")
    if leftover := graph.unclaimed():
        consumers = sorted({n.op_type for name in leftover for n in graph.consumers.get(name, ())})
        raise EdgevoiceError(
            f"initializers {leftover} in {path.name} (used by {consumers or 'nothing'}) are no weight of "
            "Smart Turn v3.2 edgevoice knows; install pipecat-ai==1.14.0 or extend edgevoice.weights.smart_turn"
        )
    return state


def _is_plumbing(graph: _ShippedGraph, name: str) -> bool:
    users = graph.consumers.get(name, ())
    return bool(users) and graph.arrays[name].size <= _PLUMBING_MAX_SIZE and all(n.op_type in _PLUMBING_OPS for n in users)


def rename_upstream(state: dict[str, torch.Tensor], source: str) -> dict[str, torch.Tensor]:
    """Upstream names (``inner.encoder.layers.0.fc1.weight``) -> ours (``encoder.layers.0.mlp.fc1.weight``)."""
    renamed: dict[str, torch.Tensor] = {}
    for name, tensor in state.items():
        ours = _our_name(name.removeprefix(_UPSTREAM_PREFIX))
        if ours is None:
            raise EdgevoiceError(f"weight '{name}' in {source} has no place in edgevoice's SmartTurn; is this Smart Turn v3.x?")
        if ours in renamed:
            raise EdgevoiceError(f"weights in {source} fill '{ours}' twice (again from '{name}'); is this Smart Turn v3.x?")
        renamed[ours] = tensor
    return renamed


def _our_name(upstream: str) -> str | None:
    for pattern, replacement in _RENAMES:
        if re.fullmatch(pattern, upstream):
            return re.sub(pattern, replacement, upstream)
    return None


def load_smart_turn(path: Path | None = None, config: SmartTurnConfig | None = None) -> SmartTurn:
    """SmartTurn with the shipped graph's dequantized weights (v3.2 sizes by default), in eval mode."""
    path = Path(path) if path is not None else shipped_onnx_path()
    model = SmartTurn(config or SmartTurnConfig())
    load_state_strict(model, rename_upstream(read_upstream_state(path), path.name), source=path.name)
    return model.eval()
