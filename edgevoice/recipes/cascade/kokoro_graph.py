"""Graph surgery that turns the shipped dynamic-int8 Kokoro graph into a float one TensorRT parses.

``kokoro-v1.0.int8.onnx`` was quantized with onnxruntime's dynamic quantizer and then saved after
onnxruntime's graph optimizer, so it holds two kinds of ops TensorRT 10.3 cannot parse:

- quantization: every float MatMul/Conv became ``DynamicQuantizeLinear`` (activations to uint8 at
  run time) -> ``MatMulInteger``/``ConvInteger`` (int32) -> ``Cast`` -> ``Mul`` by
  (activation scale x weight scale), the conv bias re-quantized at run time; the LSTMs became
  ``com.microsoft::DynamicQuantizeLSTM``; embeddings are int8 tables read by ``Gather`` and then
  ``DequantizeLinear``.
- onnxruntime fusions: ``com.microsoft`` FastGelu, SkipLayerNormalization, FusedMatMul.

Each is replaced by the float op it stands for, with the weight dequantized offline to a float32
initializer, ``(w_int8 - zero_point) * scale``. Dropping the activation quantization removes the
rounding of activations to 8 bits, so the float graph is *closer* to the original float Kokoro
than the int8 graph is; the two differ by that quantization noise (measured in recipes/cascade/kokoro.py).

One more op TensorRT 10.3 lacks (STFT arrives in 10.5): the vocoder takes an STFT of its harmonic
source. A real STFT with a fixed window is a strided 1-D convolution with a windowed-DFT basis
(cos rows for the real part, -sin rows for the imaginary part), which TensorRT runs natively.
The inverse STFT of this export is already a ConvTranspose, so nothing else is needed.
"""

from __future__ import annotations

import numpy as np
import onnx
from onnx import helper, numpy_helper

from edgevoice.errors import EdgevoiceError
from edgevoice.recipes.onnx_surgery import prune_dead_nodes

OPSET = 20
_NEW = "/edgevoice/float/"  # prefix of every tensor this rewrite creates


class _Graph:
    """Producer/consumer/initializer lookups over a GraphProto, plus the rewrite bookkeeping."""

    def __init__(self, graph: onnx.GraphProto):
        self.graph = graph
        self.inits = {t.name: t for t in graph.initializer}
        self.producer = {o: n for n in graph.node for o in n.output}
        self.consumers: dict[str, list[onnx.NodeProto]] = {}
        for node in graph.node:
            for name in node.input:
                self.consumers.setdefault(name, []).append(node)
        self.replacements: dict[int, list[onnx.NodeProto]] = {}  # id(old node) -> new nodes in its place
        self.new_inits: list[onnx.TensorProto] = []
        self.dequantized: dict[tuple, str] = {}  # (op, quantized weight, zp, scale) -> float initializer

    def array(self, name: str) -> np.ndarray:
        if name not in self.inits:
            raise EdgevoiceError(f"expected a constant weight '{name}' in the Kokoro graph; this export is not one we know")
        return numpy_helper.to_array(self.inits[name])

    def only_consumer(self, name: str, op_type: str) -> onnx.NodeProto:
        found = self.consumers.get(name, [])
        if len(found) != 1 or found[0].op_type != op_type:
            ops = [n.op_type for n in found]
            raise EdgevoiceError(f"'{name}' feeds {ops}, expected one {op_type}; this quantized pattern is not one we know")
        return found[0]

    def float_init(self, key: tuple, name: str, make) -> str:
        """A dequantized weight, made once: ALBERT reuses one layer's weights for all 12 layers."""
        if key not in self.dequantized:
            self.dequantized[key] = self.add_init(name, make())
        return self.dequantized[key]

    def add_init(self, name: str, value: np.ndarray) -> str:
        self.new_inits.append(numpy_helper.from_array(np.ascontiguousarray(value), _NEW + name))
        return _NEW + name

    def replace(self, old: onnx.NodeProto, new: list[onnx.NodeProto]) -> None:
        self.replacements[id(old)] = new

    def remove(self, *nodes: onnx.NodeProto) -> None:
        """Drop nodes whose work a replacement took over (their outputs now come from it)."""
        for node in nodes:
            self.replacements[id(node)] = []

    def commit(self) -> None:
        """Splice the replacements in place (topological order is kept), then drop dead nodes."""
        nodes = []
        for node in self.graph.node:
            nodes.extend(self.replacements.get(id(node), [node]))
        del self.graph.node[:]
        self.graph.node.extend(nodes)
        self.graph.initializer.extend(self.new_inits)
        prune_dead_nodes(self.graph)


def float_weight(quantized: np.ndarray, zero_point: np.ndarray, scale: np.ndarray, channel_axis: int) -> np.ndarray:
    """(q - zp) * scale in float32; per-channel zp/scale are laid along ``channel_axis`` of ``q``."""
    shape = [1] * quantized.ndim
    if np.ndim(zero_point) or np.ndim(scale):
        shape[channel_axis] = -1
    zp = np.asarray(zero_point, dtype=np.float32).reshape(shape if np.ndim(zero_point) else ())
    sc = np.asarray(scale, dtype=np.float32).reshape(shape if np.ndim(scale) else ())
    return ((quantized.astype(np.float32) - zp) * sc).astype(np.float32)


# --- quantized ops -------------------------------------------------------------------------------

def _activation(g: _Graph, quantized_input: str) -> str:
    """The float tensor a DynamicQuantizeLinear turned into ``quantized_input``."""
    node = g.producer.get(quantized_input)
    if node is None or node.op_type != "DynamicQuantizeLinear":
        raise EdgevoiceError(f"'{quantized_input}' does not come from DynamicQuantizeLinear; unknown quantized pattern")
    return node.input[0]


def _weight_scale(g: _Graph, rescale: onnx.NodeProto, int_output: str) -> np.ndarray:
    """The weight's scale: the constant factor of the Mul(activation scale, weight scale)."""
    scale_name = next(i for i in rescale.input if i != int_output)
    product = g.producer.get(scale_name)
    if product is None or product.op_type != "Mul":
        raise EdgevoiceError(f"'{scale_name}' is not a product of scales; unknown quantized pattern")
    constant = [i for i in product.input if i in g.inits]
    if len(constant) != 1:
        raise EdgevoiceError(f"cannot tell the weight scale among {list(product.input)}; unknown quantized pattern")
    return g.array(constant[0])


def _float_bias(g: _Graph, quantized_bias: str) -> str:
    """The float bias behind Reshape(Cast(Floor(Div(bias, scale)))): the run-time bias requantization."""
    name = quantized_bias
    for _ in range(6):
        if name in g.inits and g.inits[name].data_type == onnx.TensorProto.FLOAT:
            return name
        node = g.producer.get(name)
        if node is None:
            break
        name = node.input[0]
    raise EdgevoiceError(f"cannot find the float bias behind '{quantized_bias}'; unknown quantized pattern")


def rewrite_matmul_integer(g: _Graph, node: onnx.NodeProto, index: int) -> None:
    """MatMulInteger -> Cast -> Mul(scales)  =>  MatMul(x, W_float)."""
    cast = g.only_consumer(node.output[0], "Cast")
    rescale = g.only_consumer(cast.output[0], "Mul")
    scale = _weight_scale(g, rescale, cast.output[0])
    # (K, N) int8, zero point (N,) per output column
    w_name = g.float_init(("MatMul", node.input[1], node.input[3], scale.tobytes()), f"matmul{index}.weight",
                          lambda: float_weight(g.array(node.input[1]), g.array(node.input[3]), scale, channel_axis=1))
    g.replace(node, [helper.make_node("MatMul", [_activation(g, node.input[0]), w_name], [rescale.output[0]],
                                      name=f"{_NEW}matmul{index}")])
    g.remove(cast, rescale)  # the float MatMul now writes the rescaled output itself


def rewrite_conv_integer(g: _Graph, node: onnx.NodeProto, index: int) -> None:
    """ConvInteger [-> Add(requantized bias)] -> Cast -> Mul(scales)  =>  Conv(x, W_float[, bias])."""
    follower = g.consumers.get(node.output[0], [None])[0]
    bias = None
    if follower is not None and follower.op_type == "Add":
        bias = _float_bias(g, next(i for i in follower.input if i != node.output[0]))
        int_out = follower.output[0]
    else:
        int_out = node.output[0]
    cast = g.only_consumer(int_out, "Cast")
    rescale = g.only_consumer(cast.output[0], "Mul")
    scale = _weight_scale(g, rescale, cast.output[0])
    # (C_out, C_in/group, *kernel) uint8, one zero point
    w_name = g.float_init(("Conv", node.input[1], node.input[3], scale.tobytes()), f"conv{index}.weight",
                          lambda: float_weight(g.array(node.input[1]), g.array(node.input[3]), scale, channel_axis=0))
    inputs = [_activation(g, node.input[0]), w_name] + ([bias] if bias else [])
    conv = helper.make_node("Conv", inputs, [rescale.output[0]], name=f"{_NEW}conv{index}")
    conv.attribute.extend(a for a in node.attribute)  # kernel_shape, pads, strides, dilations, group
    g.replace(node, [conv])
    g.remove(*([follower] if bias else []), cast, rescale)


def rewrite_dequantized_gather(g: _Graph, node: onnx.NodeProto, index: int) -> None:
    """Gather(int8 table) -> DequantizeLinear  =>  Gather(float table)."""
    gather = g.producer.get(node.input[0])
    if gather is None or gather.op_type != "Gather" or gather.input[0] not in g.inits:
        raise EdgevoiceError(f"DequantizeLinear '{node.name}' does not read a quantized table; unknown pattern")
    table = float_weight(g.array(gather.input[0]), g.array(node.input[2]), g.array(node.input[1]), channel_axis=0)
    new = helper.make_node("Gather", [g.add_init(f"table{index}", table), gather.input[1]], [node.output[0]],
                           name=f"{_NEW}gather{index}")
    new.attribute.extend(gather.attribute)
    g.replace(node, [new])
    g.remove(gather)


def rewrite_quantized_lstm(g: _Graph, node: onnx.NodeProto, index: int) -> None:
    """DynamicQuantizeLSTM => LSTM. Its W/R are (dirs, in, 4H), ONNX LSTM wants (dirs, 4H, in)."""
    x, w_q, r_q, b, seq, h0, c0, p, w_s, w_zp, r_s, r_zp = (list(node.input) + [""] * 12)[:12]
    w = float_weight(g.array(w_q), g.array(w_zp), g.array(w_s), channel_axis=0).transpose(0, 2, 1)
    r = float_weight(g.array(r_q), g.array(r_zp), g.array(r_s), channel_axis=0).transpose(0, 2, 1)
    inputs = [x, g.add_init(f"lstm{index}.W", w), g.add_init(f"lstm{index}.R", r), b, seq, h0, c0, p]
    while inputs and not inputs[-1]:
        inputs.pop()
    lstm = helper.make_node("LSTM", inputs, list(node.output), name=f"{_NEW}lstm{index}")
    lstm.attribute.extend(node.attribute)  # direction, hidden_size, input_forget (same gate order iofc)
    g.replace(node, [lstm])


# --- onnxruntime fusions -------------------------------------------------------------------------

def rewrite_fast_gelu(g: _Graph, node: onnx.NodeProto, index: int) -> None:
    """FastGelu(x, bias) is the tanh-approximated GELU of x + bias: opset 20's Gelu(approximate=tanh)."""
    x = node.input[0]
    new = []
    if len(node.input) > 1 and node.input[1]:
        new.append(helper.make_node("Add", [x, node.input[1]], [f"{_NEW}gelu{index}.in"], name=f"{_NEW}gelu{index}.bias"))
        x = f"{_NEW}gelu{index}.in"
    new.append(helper.make_node("Gelu", [x], [node.output[0]], name=f"{_NEW}gelu{index}", approximate="tanh"))
    g.replace(node, new)


def rewrite_skip_layer_norm(g: _Graph, node: onnx.NodeProto, index: int) -> None:
    """SkipLayerNormalization(x, skip, gamma, beta[, bias]) = LayerNorm(x + skip [+ bias]) over the last axis."""
    if any(name for name in node.output[1:]):
        raise EdgevoiceError(f"SkipLayerNormalization '{node.name}' uses its extra outputs; not supported")
    x, skip, gamma, beta, bias = (list(node.input) + [""] * 5)[:5]
    epsilon = next((helper.get_attribute_value(a) for a in node.attribute if a.name == "epsilon"), 1e-12)
    summed = f"{_NEW}skipln{index}.sum"
    new = [helper.make_node("Add", [x, skip], [summed], name=f"{_NEW}skipln{index}.add")]
    if bias:
        new.append(helper.make_node("Add", [summed, bias], [summed + "_bias"], name=f"{_NEW}skipln{index}.bias"))
        summed += "_bias"
    new.append(helper.make_node("LayerNormalization", [summed, gamma, beta], [node.output[0]],
                                name=f"{_NEW}skipln{index}", axis=-1, epsilon=epsilon))
    g.replace(node, new)


def rewrite_fused_matmul(g: _Graph, node: onnx.NodeProto, index: int, ranks: dict[str, int]) -> None:
    """FusedMatMul(A, B; transA, transB, alpha) => [Transpose] MatMul [Mul alpha] (last two axes)."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if attrs.get("transBatchA", 0) or attrs.get("transBatchB", 0):
        raise EdgevoiceError(f"FusedMatMul '{node.name}' transposes batch axes; not supported")
    new, operands = [], []
    for name, flag in ((node.input[0], "transA"), (node.input[1], "transB")):
        if attrs.get(flag, 0):
            rank = ranks.get(name)
            if rank is None:
                raise EdgevoiceError(f"FusedMatMul '{node.name}': rank of '{name}' unknown, cannot transpose it")
            perm = list(range(rank - 2)) + [rank - 1, rank - 2]
            out = f"{_NEW}fmm{index}.{flag}"
            new.append(helper.make_node("Transpose", [name], [out], name=out, perm=perm))
            name = out
        operands.append(name)
    alpha = float(attrs.get("alpha", 1.0))
    product = node.output[0] if alpha == 1.0 else f"{_NEW}fmm{index}.product"
    new.append(helper.make_node("MatMul", operands, [product], name=f"{_NEW}fmm{index}"))
    if alpha != 1.0:
        scale = g.add_init(f"fmm{index}.alpha", np.array(alpha, dtype=np.float32))
        new.append(helper.make_node("Mul", [product, scale], [node.output[0]], name=f"{_NEW}fmm{index}.alpha"))
    g.replace(node, new)


def stft_basis(window: np.ndarray) -> np.ndarray:
    """(2K, 1, N) conv weights of a one-sided windowed DFT: K cos rows (real), K -sin rows (imag)."""
    n = window.shape[0]
    bins = n // 2 + 1
    angle = 2.0 * np.pi * np.outer(np.arange(bins), np.arange(n)) / n  # (K, N)
    basis = np.concatenate([np.cos(angle), -np.sin(angle)]) * window[None, :].astype(np.float64)
    return basis[:, None, :].astype(np.float32)


def rewrite_stft(g: _Graph, node: onnx.NodeProto, index: int) -> None:
    """STFT(signal (B, L[, 1]), hop, window (N,), N; onesided) => (B, F, K, 2) from a strided Conv."""
    attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
    if attrs.get("onesided", 1) != 1 or len(node.input) < 3 or not node.input[2]:
        raise EdgevoiceError(f"STFT '{node.name}': only a one-sided STFT with a window is supported")
    hop, window = int(g.array(node.input[1])), g.array(node.input[2]).astype(np.float32)
    if len(node.input) > 3 and node.input[3] and int(g.array(node.input[3])) != window.shape[0]:
        raise EdgevoiceError(f"STFT '{node.name}': frame_length differs from the window length; not supported")
    bins, p = window.shape[0] // 2 + 1, f"{_NEW}stft{index}."
    basis = g.add_init(f"stft{index}.basis", stft_basis(window))
    shape = g.add_init(f"stft{index}.shape", np.array([0, 2, bins, -1], dtype=np.int64))
    signal_shape = g.add_init(f"stft{index}.signal_shape", np.array([0, 1, -1], dtype=np.int64))
    g.replace(node, [
        # (B, L) or (B, L, 1) -> (B, 1, L): this export feeds a 2-D signal, the spec a 3-D one.
        helper.make_node("Reshape", [node.input[0], signal_shape], [p + "signal"], name=p + "signal"),
        helper.make_node("Conv", [p + "signal", basis], [p + "frames"], name=p + "conv",
                         kernel_shape=[window.shape[0]], strides=[hop]),  # (B, 2K, F)
        helper.make_node("Reshape", [p + "frames", shape], [p + "split"], name=p + "split"),  # (B, 2, K, F)
        helper.make_node("Transpose", [p + "split"], [node.output[0]], name=p + "out", perm=[0, 3, 2, 1]),  # (B, F, K, 2)
    ])


# --- driver --------------------------------------------------------------------------------------

QUANTIZED_OPS = ("MatMulInteger", "ConvInteger", "DequantizeLinear", "DynamicQuantizeLSTM")
FUSED_OPS = ("FastGelu", "SkipLayerNormalization", "FusedMatMul", "STFT")  # exact rewrites
_REWRITES = {
    "MatMulInteger": rewrite_matmul_integer,
    "ConvInteger": rewrite_conv_integer,
    "DequantizeLinear": rewrite_dequantized_gather,
    "DynamicQuantizeLSTM": rewrite_quantized_lstm,
    "FastGelu": rewrite_fast_gelu,
    "SkipLayerNormalization": rewrite_skip_layer_norm,
    "STFT": rewrite_stft,
}


def float_kokoro_graph(model: onnx.ModelProto) -> onnx.ModelProto:
    """The float, TensorRT-parsable version of a dynamic-int8 Kokoro graph (``model`` untouched)."""
    model = rewrite_ops(model, QUANTIZED_OPS + FUSED_OPS)
    del model.graph.value_info[:]  # stale: it typed the removed uint8/int32 tensors
    _keep_default_opset_only(model)
    left = sorted({n.op_type for n in model.graph.node if n.domain not in ("", "ai.onnx") or n.op_type in QUANTIZED_OPS})
    if left or any(n.op_type == "DynamicQuantizeLinear" for n in model.graph.node):
        raise EdgevoiceError(f"the float Kokoro graph still has {left or ['DynamicQuantizeLinear']}; this export is not one we know")
    onnx.checker.check_model(model, full_check=False)
    return model


def rewrite_ops(model: onnx.ModelProto, op_types: tuple[str, ...]) -> onnx.ModelProto:
    """A copy of ``model`` with the nodes of ``op_types`` rewritten; the rest (domains too) kept.

    Rewriting only the exact fusions (FUSED_OPS) must leave the output unchanged: the tests use
    that to check those rewrites apart from the (inexact) dequantization.
    """
    model = _copy(model)
    ranks = _ranks(model) if "FusedMatMul" in op_types else {}
    g = _Graph(model.graph)
    for index, node in enumerate(list(model.graph.node)):
        if node.op_type not in op_types:
            continue
        if node.op_type == "FusedMatMul":
            rewrite_fused_matmul(g, node, index, ranks)
        else:
            _REWRITES[node.op_type](g, node, index)
    g.commit()
    return model


def _copy(model: onnx.ModelProto) -> onnx.ModelProto:
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    opset = next((o.version for o in copy.opset_import if o.domain in ("", "ai.onnx")), None)
    if opset != OPSET:
        raise EdgevoiceError(f"the Kokoro graph is opset {opset}, expected {OPSET} (kokoro-v1.0.int8.onnx)")
    return copy


def _ranks(model: onnx.ModelProto) -> dict[str, int]:
    """Tensor ranks from shape inference (needed to transpose FusedMatMul operands)."""
    inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    ranks = {}
    for value in [*inferred.graph.value_info, *inferred.graph.input, *inferred.graph.output]:
        if value.type.tensor_type.HasField("shape"):
            ranks[value.name] = len(value.type.tensor_type.shape.dim)
    return ranks


def _keep_default_opset_only(model: onnx.ModelProto) -> None:
    del model.opset_import[:]
    model.opset_import.append(helper.make_opsetid("", OPSET))
