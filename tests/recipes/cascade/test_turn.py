"""The turn component: strict import of the shipped int8 weights, parity with pipecat's own path
on real speech, the TensorRT op check, and what the cascade recipe records."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest
import torch
from conftest import espeak
from edgevoice.export.to_onnx import export_onnx, with_precision
from edgevoice.export.trt_check import check_trt_compatibility
from edgevoice.export.verify import parity
from onnx import numpy_helper

from edgevoice.errors import EdgevoiceError
from edgevoice.models.smart_turn import SmartTurn
from edgevoice.recipes.cascade.recipe import WEIGHT_PACKAGES
from edgevoice.recipes.cascade.turn import (
    FLOAT_REFERENCE_ATOL,
    INT8_REFERENCE_ATOL,
    LICENSE,
    check_turn_parity,
    last_window,
    turn_component,
    turn_parity,
)
from edgevoice.weights.smart_turn import (
    dequantize,
    load_smart_turn,
    read_upstream_state,
    shipped_onnx_path,
)

TRAILING_SILENCE = np.zeros(3200, dtype=np.float32)  # 200 ms, as a VAD hands over a finished phrase


@pytest.fixture(scope="module")
def component():
    return turn_component()


@pytest.fixture(scope="module")
def clips() -> dict[str, np.ndarray]:
    # sox dithers by default; the int8 reference swings by 0.25 with the dither draw, so draw none.
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("SOX_OPTS", "-D")
        return {
            "complete": np.concatenate([espeak("What is the capital of France?"), TRAILING_SILENCE]),
            "unfinished": np.concatenate([espeak("I would like to know"), TRAILING_SILENCE]),
        }


@pytest.fixture(scope="module")
def exported(component, tmp_path_factory) -> dict[str, tuple[Path, object]]:
    out = tmp_path_factory.mktemp("turn")
    graphs = {}
    for precision in ("fp32", "fp16"):
        path = out / f"turn_{precision}.onnx"
        graphs[precision] = (path, export_onnx(with_precision(component, precision), path, precision, max_batch=2))
    return graphs


@pytest.fixture(scope="module")
def shipped() -> onnx.ModelProto:
    return onnx.load(str(shipped_onnx_path()))


def edited_copy(model: onnx.ModelProto, out: Path, edit) -> Path:
    """The shipped graph with ``edit(graph)`` applied, written to ``out``."""
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    edit(copy.graph)
    onnx.save(copy, str(out))
    return out


def replace_initializer(graph, name: str, value: np.ndarray) -> None:
    [old] = [t for t in graph.initializer if t.name == name]
    graph.initializer.remove(old)
    graph.initializer.append(numpy_helper.from_array(value, name))


# --- weights -----------------------------------------------------------------------------------


def test_every_weight_is_placed(component):
    state = read_upstream_state(shipped_onnx_path())
    assert len(state) == len(SmartTurn().state_dict()) == 79  # of 324 initializers: the rest is calibration and plumbing
    assert all(t.dtype == torch.float32 for t in state.values())
    # The anonymous MatMul weights were named from the graph, the bias-less key projection too.
    assert state["inner.encoder.layers.3.self_attn.k_proj.weight"].shape == (384, 384)
    assert state["inner.pool_attention.2.weight"].shape == (1, 256)


def test_dequantize_per_tensor_and_per_axis():
    q = np.array([[-128, 0, 127], [10, 20, 30]], dtype=np.int8)
    per_tensor = dequantize(q, np.array(0.5, np.float32), np.array(2, np.int8), axis=1)
    assert np.allclose(per_tensor, (q.astype(np.float32) - 2) * 0.5)
    scales, zeros = np.array([1.0, 0.5, 0.25], np.float32), np.array([0, 1, -1], np.int8)
    per_column = dequantize(q, scales, zeros, axis=1)
    assert np.allclose(per_column, (q.astype(np.float32) - zeros) * scales)
    per_row = dequantize(q, np.array([2.0, 3.0], np.float32), None, axis=0)
    assert np.allclose(per_row, q.astype(np.float32) * np.array([[2.0], [3.0]]))


def test_a_missing_weight_is_named(shipped, tmp_path):
    def drop_bias(graph):
        [bias] = [t for t in graph.initializer if t.name == "inner.encoder.layers.2.fc1.bias"]
        graph.initializer.remove(bias)

    with pytest.raises(EdgevoiceError, match=r"missing \['encoder\.layers\.2\.mlp\.fc1\.bias'\]"):
        load_smart_turn(edited_copy(shipped, tmp_path / "missing.onnx", drop_bias))


def test_an_extra_weight_is_named(shipped, tmp_path):
    def add_weight(graph):
        graph.initializer.append(numpy_helper.from_array(np.zeros(8, np.float32), "inner.encoder.extra.weight"))

    with pytest.raises(EdgevoiceError, match=r"'inner\.encoder\.extra\.weight'"):
        load_smart_turn(edited_copy(shipped, tmp_path / "extra.onnx", add_weight))


def test_an_unknown_initializer_is_named(shipped, tmp_path):
    def add_tensor(graph):
        graph.initializer.append(numpy_helper.from_array(np.ones(16, np.float32), "mystery_table"))

    with pytest.raises(EdgevoiceError, match=r"\['mystery_table'\].*used by nothing"):
        read_upstream_state(edited_copy(shipped, tmp_path / "unknown.onnx", add_tensor))


def test_a_misshaped_weight_is_named(shipped, tmp_path):
    def shrink(graph):
        replace_initializer(graph, "inner.classifier.1.weight", np.ones(128, np.float32))

    with pytest.raises(EdgevoiceError, match=r"'classifier\.norm\.weight'.*\(128,\), expected \(256,\)"):
        load_smart_turn(edited_copy(shipped, tmp_path / "shape.onnx", shrink))


def test_a_missing_package_says_what_to_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "pipecat" else real(name, *a))
    with pytest.raises(EdgevoiceError, match=r"pip install --no-deps 'pipecat-ai==1\.14\.0'"):
        shipped_onnx_path()


# --- parity with pipecat -------------------------------------------------------------------------


def test_parity_with_the_shipped_graph_on_speech(component, clips, exported):
    results = {r.clip: r for r in turn_parity(component.module, clips, exported["fp32"][0])}
    complete, unfinished = results["complete"], results["unfinished"]
    for r in results.values():
        assert r.to_float_reference() <= FLOAT_REFERENCE_ATOL, r  # the port: same weights, float math
        assert r.to_int8_reference() <= INT8_REFERENCE_ATOL, r  # pipecat's int8 path, as it runs
    # Both paths hear the question as finished and the fragment as not.
    for ours, theirs in ((complete.ours_torch, complete.shipped), (unfinished.ours_torch, unfinished.shipped)):
        assert (ours > 0.5) == (theirs > 0.5)
    assert complete.ours_onnx > 0.9 and unfinished.ours_onnx < 0.1
    assert complete.shipped > 0.5 > unfinished.shipped
    check_turn_parity(list(results.values()))


def test_parity_check_names_the_clip():
    from edgevoice.recipes.cascade.turn import TurnParity

    off = TurnParity(clip="question", shipped=0.9, shipped_float=0.95, ours_torch=0.90, ours_onnx=None)
    with pytest.raises(EdgevoiceError, match="clip 'question'"):
        check_turn_parity([off])


def test_host_window_keeps_the_end_and_pads_the_start():
    short = np.arange(1, 4, dtype=np.float32)
    window = last_window(short, 8)
    assert window.tolist() == [0, 0, 0, 0, 0, 1, 2, 3]
    assert last_window(np.arange(10, dtype=np.float32), 4).tolist() == [6, 7, 8, 9]


# --- export ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_graph_passes_the_tensorrt_op_check(exported, precision):
    path, _ = exported[precision]
    result = check_trt_compatibility(path, "10.3")
    assert result.ok, result.summary()
    assert not {n.op_type for n in onnx.load(str(path)).graph.node} & {"QuantizeLinear", "DequantizeLinear"}


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_verify_parity_torch_vs_onnxruntime(component, exported, precision):
    path, entry = exported[precision]
    comparison = parity(with_precision(component, precision), entry, path)
    assert comparison.ok, comparison.summary()


def test_manifest_facts_and_recipe_entries(component, exported):
    _, entry = exported["fp32"]
    assert entry.stream["sample_rate"] == 16000 and entry.stream["window_samples"] == 128000
    assert entry.stream["pad_side"] == "left" and entry.stream["keep"] == "last"
    assert entry.license == LICENSE == "Smart Turn v3.2 (pipecat-ai 1.14.0), BSD-2-Clause"
    assert WEIGHT_PACKAGES["turn"] == "pipecat-ai==1.14.0"
    feeds = component.parity_feeds()
    assert [f["audio"].shape for f in feeds] == [(1, 128000)] * 2 and feeds[0]["audio"][0, 0] == 0.0
