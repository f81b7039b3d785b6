"""End-of-turn detection as a component of the cascade recipe: ``turn`` (Smart Turn v3.2).

    audio (B, 128000): the last 8 s of the turn at 16 kHz -> prob (B, 1): P(the turn is complete)

Weights come from the int8 ONNX graph shipped in ``pipecat-ai`` (see ``edgevoice.weights.smart_turn``);
our graph is float and takes raw audio (the log-mel front end is inside, see
``edgevoice.models.smart_turn``). The host cuts the window as pipecat's analyzer does: the last
8 s of the turn, zeros *before* the audio when there is less (``last_window``).

Parity. The reference is pipecat's own path: its numpy feature extractor, then the shipped int8
graph on onnxruntime with all optimizations, as its analyzer runs it. ``turn_parity`` also runs the
same shipped graph with its activation QuantizeLinear/DequantizeLinear pairs bypassed and without
onnxruntime's optimizations: same weights, float activations, exactly the function our module
computes. Measured on espeak speech (18 clips, 0 to 0.5 s of trailing silence):

* vs the shipped graph with float activations: <= 1.3e-6 on the probability, torch and our ONNX
  alike (our in-graph features agree with pipecat's to 1.5e-5). ``FLOAT_REFERENCE_ATOL`` = 1e-4:
  this checks the port itself, on any audio.
* vs the shipped int8 graph: 0.008 ("What is the capital of France?") and 0.084 ("I would like to
  know"), each + 200 ms of silence, undithered. ``INT8_REFERENCE_ATOL`` = 0.25, and only on
  clear-cut clips. Why so loose: the shipped graph rounds every activation to 8 bits with one
  scale per tensor, and its probability is that rounding's, not the weights': redrawing sox's
  16-bit dither on "I would like to know" moves it from 0.023 to 0.28 (80 draws) while ours moves
  by 1e-3. On ambiguous clips the two differ by up to 0.43 ("My name is" + 200 ms: int8 0.46,
  ours 0.035), so decisions near the threshold can differ from pipecat's. Our float graph is the
  smoother of the two; matching the int8 decisions would need the shipped activation scales as
  Q/DQ nodes in our graph.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from types import ModuleType

import numpy as np
import onnx
import torch

from edgevoice.errors import EdgevoiceError
from edgevoice.models.smart_turn import SmartTurn
from edgevoice.recipes.base import RecipeComponent
from edgevoice.recipes.cascade.whisper import speech_like_signal
from edgevoice.runtime.cascade.turn import last_window  # the runtime's cut: export feeds what the runtime will
from edgevoice.weights.packages import package_file
from edgevoice.weights.smart_turn import REQUIREMENT, load_smart_turn, shipped_onnx_path

COMPONENT_NAME = "turn"
LICENSE = "Smart Turn v3.2 (pipecat-ai 1.14.0), BSD-2-Clause"
FLOAT_REFERENCE_ATOL = 1e-4  # ours vs the shipped graph with float activations (see the module docstring)
INT8_REFERENCE_ATOL = 0.25  # ours vs the shipped int8 graph, on clear-cut clips only
PIPECAT_FEATURES = "audio/turn/smart_turn/_whisper_features.py"  # pipecat's numpy extractor
VERIFY_SECONDS = (3.0, 9.0)  # --verify feeds: one short (left-padded) and one cut window
# fp32 torch vs onnxruntime: the encoder's sums reorder (~1e-6 on the probability). fp16 runs the
# encoder in half precision; the probability is a sigmoid, so its error stays below ~1e-2.
PARITY_TOLERANCE = {"fp32": (1e-4, 0.0), "fp16": (2e-2, 0.0)}


def stream_facts(model: SmartTurn) -> dict:
    """What the runtime needs to feed the graph and read its answer (recorded in the manifest)."""
    c = model.config
    return {
        "sample_rate": c.sample_rate,
        "window_samples": c.window_samples,
        "window_seconds": c.window_seconds,
        "keep": "last",  # longer turns: the last window_samples
        "pad_side": "left",  # shorter turns: zeros before the audio, never after
        "pcm": "float32 in [-1, 1] (int16 / 32768)",
        "output": "prob",  # sigmoid already applied in the graph
        "threshold": 0.5,  # pipecat calls the turn complete above this
    }


@lru_cache(maxsize=1)
def pipecat_feature_module() -> ModuleType:
    """pipecat's feature extractor, loaded by file path: importing ``pipecat`` pulls deps we skip."""
    path = package_file("pipecat", PIPECAT_FEATURES, REQUIREMENT)
    spec = importlib.util.spec_from_file_location("edgevoice_pipecat_whisper_features", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def pipecat_features(window: np.ndarray) -> np.ndarray:
    """(80, 800) log-mel features of one window, computed by pipecat's own code."""
    return pipecat_feature_module().compute_whisper_log_mel_features(window, do_normalize=True)


def without_activation_quantization(model: onnx.ModelProto) -> onnx.ModelProto:
    """The shipped graph with every activation QuantizeLinear -> DequantizeLinear pair bypassed.

    Weight DequantizeLinear nodes stay: the result computes with the dequantized weights in float,
    the function our module implements.
    """
    graph = onnx.ModelProto()
    graph.CopyFrom(model)
    initializers = {t.name for t in graph.graph.initializer}
    quantized_from = {n.output[0]: n.input[0] for n in graph.graph.node if n.op_type == "QuantizeLinear"}
    bypass = {n.output[0]: quantized_from[n.input[0]] for n in graph.graph.node
              if n.op_type == "DequantizeLinear" and n.input[0] in quantized_from}
    kept = [n for n in graph.graph.node if n.op_type != "QuantizeLinear" and n.output[0] not in bypass]
    for node in kept:
        for i, name in enumerate(node.input):
            node.input[i] = bypass.get(name, name)
    if any(n.op_type == "DequantizeLinear" and n.input[0] not in initializers for n in kept):
        raise EdgevoiceError("the shipped Smart Turn graph has a DequantizeLinear without its QuantizeLinear; is it v3.2?")
    del graph.graph.node[:]
    graph.graph.node.extend(kept)
    used = {name for node in kept for name in node.input}
    calibration = [t for t in graph.graph.initializer if t.name not in used]  # the bypassed scales
    for tensor in calibration:
        graph.graph.initializer.remove(tensor)
    return graph


def _ort_session(model: onnx.ModelProto | Path, optimize: bool = True):
    """An onnxruntime CPU session; ``optimize=False`` runs the graph's ops as written.

    The float reference needs it: with all optimizations on, onnxruntime turns a MatMul behind a
    weight DequantizeLinear into an integer MatMul with dynamically quantized activations (up to
    8e-3 off on the probability). pipecat runs the shipped graph with all of them, as we do.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    if not optimize:
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    source = model.SerializeToString() if isinstance(model, onnx.ModelProto) else str(model)
    return ort.InferenceSession(source, options, providers=["CPUExecutionProvider"])


@dataclass(frozen=True)
class TurnParity:
    """Probabilities of one clip from each path; the max abs differences are what parity checks."""

    clip: str
    shipped: float  # pipecat's path: its features, the shipped int8 graph
    shipped_float: float  # its features, the shipped graph with float activations
    ours_torch: float  # raw audio through our module
    ours_onnx: float | None  # raw audio through our exported graph on onnxruntime, when given

    def to_float_reference(self) -> float:
        ours = [self.ours_torch] + ([self.ours_onnx] if self.ours_onnx is not None else [])
        return max(abs(p - self.shipped_float) for p in ours)

    def to_int8_reference(self) -> float:
        ours = [self.ours_torch] + ([self.ours_onnx] if self.ours_onnx is not None else [])
        return max(abs(p - self.shipped) for p in ours)


def turn_parity(model: SmartTurn, clips: dict[str, np.ndarray], our_onnx: Path | None = None) -> list[TurnParity]:
    """Each clip (16 kHz float audio of a turn) through pipecat's path and through ours."""
    shipped_model = onnx.load(str(shipped_onnx_path()))
    shipped = _ort_session(shipped_model)
    shipped_float = _ort_session(without_activation_quantization(shipped_model), optimize=False)
    ours_onnx = _ort_session(our_onnx) if our_onnx is not None else None
    results = []
    for name, audio in clips.items():
        window = last_window(audio, model.config.window_samples)[None]  # (1, window)
        features = {"input_features": pipecat_features(window[0])[None]}  # (1, 80, 800)
        with torch.no_grad():
            torch_prob = float(model(torch.from_numpy(window))[0, 0])
        onnx_prob = float(ours_onnx.run(None, {"audio": window})[0][0, 0]) if ours_onnx is not None else None
        results.append(TurnParity(
            clip=name,
            shipped=float(shipped.run(None, features)[0][0, 0]),
            shipped_float=float(shipped_float.run(None, features)[0][0, 0]),
            ours_torch=torch_prob,
            ours_onnx=onnx_prob,
        ))
    return results


def check_turn_parity(results: list[TurnParity]) -> None:
    """Raise if any clip misses the float-reference tolerance (the check that holds on any audio)."""
    worst = max(results, key=TurnParity.to_float_reference)
    if not worst.to_float_reference() <= FLOAT_REFERENCE_ATOL:
        raise EdgevoiceError(
            f"turn: on clip '{worst.clip}' our Smart Turn gives {worst.ours_torch:.4f} but the shipped graph "
            f"(float activations) gives {worst.shipped_float:.4f} (> {FLOAT_REFERENCE_ATOL:g} apart); "
            f"reinstall {REQUIREMENT} — another version has other weights"
        )


def turn_component(path: Path | None = None) -> RecipeComponent:
    """The ``turn`` component with the shipped v3.2 weights (or those of the graph at ``path``)."""
    model = load_smart_turn(path)
    window = model.config.window_samples

    def parity_feeds() -> list[dict[str, np.ndarray]]:
        signals = [speech_like_signal(seconds, model.config.sample_rate, seed=i) for i, seconds in enumerate(VERIFY_SECONDS)]
        return [{"audio": last_window(signal, window)[None]} for signal in signals]

    return RecipeComponent(COMPONENT_NAME, model, stream_facts(model), LICENSE, parity_feeds, dict(PARITY_TOLERANCE))
