"""The end-of-turn model's host side on a tiny graph with the ``turn`` component's contract.

The graph is prob = sigmoid(K * mean of the window's last TAIL samples): it only looks at the end
of the window, so it tells left padding (the newest audio at the end) from right padding and
keeping the last 8 s from keeping the first.
"""

from __future__ import annotations

import math
import time
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from edgevoice.errors import EdgevoiceError
from edgevoice.manifest import (
    SCHEMA_VERSION,
    Component,
    DimRange,
    Manifest,
    TensorSpec,
    file_record,
    read_manifest,
    write_manifest,
)
from edgevoice.runtime.cascade.turn import (
    EndOfTurnModel,
    EndOfTurnScorer,
    last_window,
    missing_model_notice,
)
from edgevoice.runtime.turns import ScoreRequest

WINDOW = 128000  # 8 s at 16 kHz, as exported
TAIL = 1600  # the graph's view: the last 100 ms
K = 4.0


def tail_graph(path: Path) -> None:
    nodes = [
        helper.make_node("Slice", ["audio", "starts", "ends", "axes"], ["tail"]),
        helper.make_node("ReduceMean", ["tail"], ["mean"], axes=[1], keepdims=1),
        helper.make_node("Mul", ["mean", "k"], ["logit"]),
        helper.make_node("Sigmoid", ["logit"], ["prob"]),
    ]
    constants = [
        helper.make_tensor("starts", TensorProto.INT64, [1], [-TAIL]),
        helper.make_tensor("ends", TensorProto.INT64, [1], [WINDOW]),
        helper.make_tensor("axes", TensorProto.INT64, [1], [1]),
        helper.make_tensor("k", TensorProto.FLOAT, [], [K]),
    ]
    graph = helper.make_graph(
        nodes, "turn", [helper.make_tensor_value_info("audio", TensorProto.FLOAT, ["batch", WINDOW])],
        [helper.make_tensor_value_info("prob", TensorProto.FLOAT, ["batch", 1])], constants,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.checker.check_model(model)
    onnx.save(model, str(path))


def package(out: Path, with_turn: bool) -> Manifest:
    """A cascade package holding only the ``turn`` component (or nothing, as an old export would)."""
    components, files = {}, {}
    if with_turn:
        tail_graph(out / "turn.onnx")
        components["turn"] = Component(
            name="turn", onnx="turn.onnx", opset=17, precision="fp32",
            inputs=(TensorSpec("audio", "float32", ("batch", WINDOW)),),
            outputs=(TensorSpec("prob", "float32", ("batch", 1)),),
            dynamic_dims={"batch": DimRange(1, 1, 4)}, state={}, initial_state={},
            stream={"sample_rate": 16000, "window_samples": WINDOW}, license="test",
        )
        files["turn.onnx"] = file_record(out / "turn.onnx")
    write_manifest(Manifest(
        schema_version=SCHEMA_VERSION, edgevoice_version="test", recipe="cascade", config={},
        target={"name": "cpu"}, export_command="pytest (turn)", components=components, files=files, directory=out,
    ))
    return read_manifest(out, recipe="cascade")


@pytest.fixture(scope="module")
def model(tmp_path_factory) -> EndOfTurnModel:
    found = EndOfTurnModel.from_manifest(package(tmp_path_factory.mktemp("turn"), with_turn=True))
    assert found is not None
    return found


def expected(tail_mean: float) -> float:
    return 1.0 / (1.0 + math.exp(-K * tail_mean))


def test_window_facts_come_from_the_manifest(model):
    assert (model.sample_rate, model.window_samples) == (16000, WINDOW)


def test_short_audio_is_padded_at_the_start(model):
    audio = np.full(800, 0.5, np.float32)  # 50 ms: half of the graph's view once left-padded
    assert model.probability(audio) == pytest.approx(expected(0.25), abs=1e-5)
    window = last_window(audio, WINDOW)
    assert window.shape == (WINDOW,) and not window[:-800].any() and (window[-800:] == 0.5).all()


def test_long_audio_keeps_the_last_window(model):
    audio = np.concatenate([np.full(10 * 16000, -0.5, np.float32), np.full(2 * TAIL, 0.5, np.float32)])
    assert model.probability(audio) == pytest.approx(expected(0.5), abs=1e-5)
    assert np.array_equal(last_window(audio, WINDOW), audio[-WINDOW:])


def test_empty_audio_scores_silence(model):
    assert model.probability(np.zeros(0, np.float32)) == pytest.approx(0.5, abs=1e-6)


def test_nonfinite_audio_is_refused(model):
    with pytest.raises(EdgevoiceError, match="NaN"):
        model.probability(np.array([0.1, np.nan], np.float32))


def test_a_package_without_the_component_has_no_model(tmp_path):
    manifest = package(tmp_path, with_turn=False)
    assert EndOfTurnModel.from_manifest(manifest) is None
    notice = missing_model_notice(manifest, 600.0)
    assert "no end-of-turn model" in notice and f"edgevoice export --model cascade --target cpu --out {tmp_path}" in notice


@pytest.mark.parametrize("threaded", [False, True])
def test_the_scorer_returns_each_request_with_its_score(model, threaded):
    failures = []
    scorer = EndOfTurnScorer(model, threaded, lambda stage, exc: failures.append(exc))
    first, second = ScoreRequest(1.0, 224.0), ScoreRequest(1.0, 544.0)
    scorer.submit(first, np.full(TAIL, 0.5, np.float32))
    scorer.submit(second, np.zeros(TAIL, np.float32))
    deadline, done = time.monotonic() + 10.0, []
    while len(done) < 2 and time.monotonic() < deadline:
        done += scorer.finished()
        time.sleep(0.005)
    scorer.stop()
    assert not failures
    assert [request for request, _ in done] == [first, second]
    assert done[0][1] == pytest.approx(expected(0.5), abs=1e-5) and done[1][1] == pytest.approx(0.5, abs=1e-6)
    assert scorer.idle


def test_a_failing_score_is_reported_not_raised(model):
    failures = []
    scorer = EndOfTurnScorer(model, False, lambda stage, exc: failures.append((stage, exc)))
    scorer.submit(ScoreRequest(1.0, 224.0), np.array([np.inf], np.float32))
    assert [stage for stage, _ in failures] == ["turn"] and scorer.finished() == []
