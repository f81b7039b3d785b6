"""The static TensorRT lint on small hand-built graphs, plus one real torch.onnx (dynamo) export."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgevoice.errors import EdgevoiceError
from edgevoice.export import trt_check
from edgevoice.export.trt_check import (
    TrtCheckResult,
    TrtIssue,
    check_trt_compatibility,
    load_table,
    parse_version,
)

FLOAT = TensorProto.FLOAT


def make_model(nodes, inputs, outputs, initializers=(), opset=20, extra_opsets=()):
    graph = helper.make_graph(list(nodes), "g", list(inputs), list(outputs), initializer=list(initializers))
    imports = [helper.make_opsetid("", opset), *(helper.make_opsetid(d, v) for d, v in extra_opsets)]
    return helper.make_model(graph, opset_imports=imports)


def vi(name, dtype=FLOAT, shape=(1, 4)):
    return helper.make_tensor_value_info(name, dtype, list(shape) if shape is not None else None)


def const(name, values, dtype=np.int64):
    return numpy_helper.from_array(np.asarray(values, dtype=dtype), name)


def clean_model(opset=20):
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
        helper.make_node("Relu", ["h"], ["y"], name="relu"),
    ]
    return make_model(nodes, [vi("x")], [vi("y")], [w], opset=opset)


def error_text(result: TrtCheckResult) -> str:
    return " | ".join(i.describe() for i in result.errors)


def test_table_is_data_with_source():
    table_path = Path(trt_check.__file__).parent / "data" / "trt_onnx_ops.json"  # shipped as package data
    table = json.loads(table_path.read_text(encoding="utf-8"))
    assert "onnx-tensorrt" in table["source"] and "operators.md" in table["source"]
    assert table["ops"]["Attention"] == {"since_trt": "10.14"}
    assert table["ops"]["BitShift"] == {"supported": False}
    assert table["ops"]["Gelu"] == {"since_trt": "10.0"}
    assert all(isinstance(r["why"], str) for rules in table["restrictions"].values() for r in rules)
    assert table == load_table()


def test_parse_version():
    assert parse_version("10.3") == (10, 3, 0)
    assert parse_version("10.3.0.30-1+cuda12.5") == (10, 3, 0)
    assert parse_version("11") > parse_version("10.15")
    with pytest.raises(EdgevoiceError):
        parse_version("latest")


def test_clean_model_passes():
    result = check_trt_compatibility(clean_model(), "10.3")
    assert result.ok, result.summary()
    assert result.opset == 20
    assert result.summary() == "op check vs TensorRT 10.3 ONNX parser support list: OK (2 nodes, 0 warnings)"


def test_path_input_and_missing_file(tmp_path):
    path = tmp_path / "m.onnx"
    onnx.save(clean_model(), str(path))
    assert check_trt_compatibility(path, "10.3").ok
    assert check_trt_compatibility(str(path), "10.3").ok
    with pytest.raises(EdgevoiceError, match="not found"):
        check_trt_compatibility(tmp_path / "missing.onnx")


@pytest.mark.parametrize("op", ["BitShift", "Unique"])
def test_unsupported_op_fails(op):
    attrs = {"direction": "LEFT"} if op == "BitShift" else {}
    ins = ["a", "a"] if op == "BitShift" else ["a"]
    dtype = TensorProto.UINT8 if op == "BitShift" else FLOAT
    node = helper.make_node(op, ins, ["b"], name="bad", **attrs)
    model = make_model([node], [vi("a", dtype)], [vi("b", dtype, None)])
    result = check_trt_compatibility(model, "10.3")
    assert not result.ok
    assert any(i.op == op and op in i.message and i.node == "bad" for i in result.errors)
    assert op in result.summary() and "error" in result.summary()


def test_unknown_op_fails():
    model = make_model([helper.make_node("NotAnOnnxOp", ["x"], ["y"])], [vi("x")], [vi("y")])
    assert "NotAnOnnxOp" in error_text(check_trt_compatibility(model, "10.3"))


def test_opset_range_per_version():
    assert not check_trt_compatibility(clean_model(opset=21), "10.3").ok
    result = check_trt_compatibility(clean_model(opset=23), "10.3")
    assert "opset 23" in error_text(result)
    assert check_trt_compatibility(clean_model(opset=23), "11.4").ok
    assert check_trt_compatibility(clean_model(opset=17), "8.6").ok
    assert not check_trt_compatibility(clean_model(opset=18), "8.6").ok


def test_attention_is_version_gated():
    shape = (1, 2, 8, 16)
    node = helper.make_node("Attention", ["q", "k", "v"], ["y"], name="attn")
    model = make_model([node], [vi("q", shape=shape), vi("k", shape=shape), vi("v", shape=shape)],
                       [vi("y", shape=shape)], opset=23)
    at_103 = check_trt_compatibility(model, "10.3")
    assert any(i.op == "Attention" and "10.14" in i.message for i in at_103.errors)
    assert check_trt_compatibility(model, "10.15").ok


def test_attention_needs_4d_inputs():
    shape = (1, 8, 32)
    node = helper.make_node("Attention", ["q", "k", "v"], ["y"], q_num_heads=2, kv_num_heads=2)
    model = make_model([node], [vi("q", shape=shape), vi("k", shape=shape), vi("v", shape=shape)],
                       [vi("y", shape=shape)], opset=23)
    assert "rank 3" in error_text(check_trt_compatibility(model, "11.4"))


def test_custom_domain_fails():
    node = helper.make_node("FusedMatMul", ["x", "x"], ["y"], domain="com.microsoft", name="fmm")
    model = make_model([node], [vi("x", shape=(4, 4))], [vi("y", shape=(4, 4))], extra_opsets=[("com.microsoft", 1)])
    result = check_trt_compatibility(model, "10.3")
    assert "com.microsoft" in error_text(result)


def test_local_function_body_is_checked():
    body = [helper.make_node("BitShift", ["a", "a"], ["b"], direction="LEFT")]
    func = helper.make_function("local", "Shifty", ["a"], ["b"], body, [helper.make_opsetid("", 20)])
    node = helper.make_node("Shifty", ["x"], ["y"], domain="local")
    model = make_model([node], [vi("x", TensorProto.UINT8)], [vi("y", TensorProto.UINT8)],
                       extra_opsets=[("local", 1)])
    model.functions.append(func)
    text = error_text(check_trt_compatibility(model, "10.3"))
    assert "BitShift" in text and "custom-domain" not in text


def test_reduce_axes_must_be_constant():
    dynamic = helper.make_node("ReduceMean", ["x", "axes"], ["y"], name="rm")
    model = make_model([dynamic], [vi("x"), vi("axes", TensorProto.INT64, (1,))], [vi("y", shape=None)])
    result = check_trt_compatibility(model, "11.4")
    assert any(i.op == "ReduceMean" and "axes" in i.message for i in result.errors)

    from_init = make_model([dynamic], [vi("x")], [vi("y", shape=None)], [const("axes", [1])])
    assert check_trt_compatibility(from_init, "10.3").ok
    from_node = make_model([helper.make_node("Constant", [], ["axes"], value_ints=[1]), dynamic],
                           [vi("x")], [vi("y", shape=None)])
    assert check_trt_compatibility(from_node, "10.3").ok


def test_squeeze_dynamic_axes_gated_on_10_7():
    node = helper.make_node("Squeeze", ["x", "axes"], ["y"])
    model = make_model([node], [vi("x", shape=(1, 4)), vi("axes", TensorProto.INT64, (1,))], [vi("y", shape=None)])
    assert not check_trt_compatibility(model, "10.3").ok
    assert check_trt_compatibility(model, "10.7").ok


def test_topk_restrictions():
    def topk(k, **attrs):
        node = helper.make_node("TopK", ["x", "k"], ["v", "i"], name="topk", **attrs)
        return make_model([node], [vi("x", shape=(1, 5000))],
                          [vi("v", shape=None), vi("i", TensorProto.INT64, None)], [const("k", [k])])

    assert check_trt_compatibility(topk(3), "10.3").ok
    unsorted = check_trt_compatibility(topk(3, sorted=0), "10.3")
    assert any("sorted" in i.message for i in unsorted.errors)
    assert "4000" in error_text(check_trt_compatibility(topk(4000), "10.3"))


def test_string_input_fails_and_double_warns():
    node = helper.make_node("Identity", ["s"], ["t"])
    strings = make_model([node], [vi("s", TensorProto.STRING)], [vi("t", TensorProto.STRING)])
    assert "STRING" in error_text(check_trt_compatibility(strings, "10.3"))

    doubles = make_model([node], [vi("s", TensorProto.DOUBLE)], [vi("t", TensorProto.DOUBLE)])
    result = check_trt_compatibility(doubles, "10.3")
    assert result.ok and result.warnings and "DOUBLE" in result.warnings[0].message


def test_uint8_only_as_graph_io():
    io_ok = make_model([helper.make_node("Cast", ["x"], ["y"], to=FLOAT)], [vi("x", TensorProto.UINT8)], [vi("y")])
    assert check_trt_compatibility(io_ok, "10.3").ok
    inner = make_model([helper.make_node("Cast", ["x"], ["u"], to=TensorProto.UINT8),
                        helper.make_node("Cast", ["u"], ["y"], to=FLOAT)], [vi("x")], [vi("y")])
    assert "UINT8" in error_text(check_trt_compatibility(inner, "10.3"))


def test_op_inside_if_subgraph_is_checked():
    then_g = helper.make_graph([helper.make_node("Unique", ["x"], ["u"], name="uniq")], "then", [], [vi("u", shape=None)])
    else_g = helper.make_graph([helper.make_node("Identity", ["x"], ["e"])], "else", [], [vi("e", shape=None)])
    node = helper.make_node("If", ["c"], ["y"], name="branch", then_branch=then_g, else_branch=else_g)
    model = make_model([node], [vi("c", TensorProto.BOOL, ()), vi("x")], [vi("y", shape=None)])
    result = check_trt_compatibility(model, "10.3")
    hits = [i for i in result.errors if i.op == "Unique"]
    assert hits and hits[0].node.startswith("branch/")
    assert result.node_count == 3


def test_if_branch_rank_mismatch():
    then_g = helper.make_graph([helper.make_node("Identity", ["x"], ["a"])], "then", [], [vi("a", shape=(1, 4))])
    else_g = helper.make_graph([helper.make_node("Identity", ["z"], ["b"])], "else", [], [vi("b", shape=(4,))])
    node = helper.make_node("If", ["c"], ["y"], then_branch=then_g, else_branch=else_g)
    model = make_model([node], [vi("c", TensorProto.BOOL, ()), vi("x"), vi("z", shape=(4,))], [vi("y", shape=None)])
    assert "rank" in error_text(check_trt_compatibility(model, "10.3"))


def test_misc_restrictions():
    maxpool = helper.make_node("MaxPool", ["x"], ["y", "idx"], kernel_shape=[2])
    model = make_model([maxpool], [vi("x", shape=(1, 1, 8))], [vi("y", shape=None), vi("idx", TensorProto.INT64, None)])
    assert "Indices" in error_text(check_trt_compatibility(model, "10.3"))

    zp = make_model([helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["y"])], [vi("q", TensorProto.INT8)],
                    [vi("y")], [const("s", 0.1, np.float32), const("zp", 3, np.int8)])
    assert "zero" in error_text(check_trt_compatibility(zp, "10.3"))

    resize = helper.make_node("Resize", ["x", "", "sc"], ["y"], mode="cubic")
    model = make_model([resize], [vi("x", shape=(1, 1, 4, 4))], [vi("y", shape=None)],
                       [const("sc", [1, 1, 2, 2], np.float32)])
    assert "cubic" in error_text(check_trt_compatibility(model, "10.3"))

    dropout = helper.make_node("Dropout", ["x", "", "train"], ["y"])
    model = make_model([dropout], [vi("x"), vi("train", TensorProto.BOOL, ())], [vi("y")])
    assert "training_mode" in error_text(check_trt_compatibility(model, "10.3"))


def test_summary_lists_errors():
    result = TrtCheckResult("10.3", 20, (TrtIssue("bar", "Foo", "not supported", "error"),
                                         TrtIssue("baz", "Foo", "not supported", "error")))
    assert result.summary() == "op check vs TensorRT 10.3 ONNX parser support list: 2 errors — Foo (node bar): not supported; Foo (node baz): not supported"


def test_too_old_trt_version_is_a_user_error():
    with pytest.raises(EdgevoiceError, match="older"):
        check_trt_compatibility(clean_model(), "8.5")


def test_real_dynamo_export_passes(tmp_path):
    torch = pytest.importorskip("torch")
    pytest.importorskip("onnxscript")

    class Tiny(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.conv = torch.nn.Conv1d(4, 8, kernel_size=3, padding=1)
            self.w_ih = torch.nn.Parameter(torch.randn(8, 32) * 0.1)
            self.w_hh = torch.nn.Parameter(torch.randn(8, 32) * 0.1)

        def forward(self, x: torch.Tensor, h: torch.Tensor, c: torch.Tensor):
            feat = self.conv(x).mean(dim=-1)  # (B, 8)
            gates = feat @ self.w_ih + h @ self.w_hh
            i, f, g, o = gates.chunk(4, dim=-1)
            c_new = torch.sigmoid(f) * c + torch.sigmoid(i) * torch.tanh(g)
            return torch.sigmoid(o) * torch.tanh(c_new), c_new

    path = tmp_path / "tiny.onnx"
    args = (torch.randn(1, 4, 16), torch.zeros(1, 8), torch.zeros(1, 8))
    torch.onnx.export(Tiny().eval(), args, str(path), dynamo=True, opset_version=20,
                      input_names=["x", "h", "c"], output_names=["h_out", "c_out"])
    result = check_trt_compatibility(path, "10.3")
    assert result.opset == 20
    assert result.ok, result.summary()
