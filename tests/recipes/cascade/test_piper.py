"""The Piper voice import: graph surgery, TensorRT lint, parity with the shipped graph, config checks."""

from __future__ import annotations

import json
from dataclasses import asdict

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from edgevoice.export.trt_check import check_trt_compatibility

from edgevoice.errors import EdgevoiceError
from edgevoice.manifest import Component
from edgevoice.recipes.cascade.piper import (
    DP_CHANNELS,
    OPSET,
    PRIOR_CHANNELS,
    build_piper_component,
    phoneme_ids_for,
    rewrite_piper_graph,
    zero_noise_parity,
)
from edgevoice.weights.piper import joe_voice_paths, load_piper_config, parse_piper_config

# "həlˈoʊ wˈɜːld." = "Hello world." as espeak-ng 1.51 writes it: fixed here so the graph tests do
# not depend on the phonemizer (the runtime tests cover that).
HELLO_PHONEMES = "həlˈoʊ wˈɜːld."


@pytest.fixture(scope="module")
def voice_files():
    return joe_voice_paths()


@pytest.fixture(scope="module")
def config(voice_files):
    return load_piper_config(voice_files[1])


@pytest.fixture(scope="module")
def component(voice_files, tmp_path_factory):
    return build_piper_component(tmp_path_factory.mktemp("piper"), *voice_files, verify=True)


@pytest.fixture(scope="module")
def session(component):
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    return ort.InferenceSession(str(component.onnx_path), options, providers=["CPUExecutionProvider"])


def feeds(ids: np.ndarray, seed: int, frames: int, scales=(0.667, 1.0, 0.8)) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {
        "input": ids,
        "input_lengths": np.array([ids.shape[1]], dtype=np.int64),
        "scales": np.array(scales, dtype=np.float32),
        "noise_dp": rng.standard_normal((1, DP_CHANNELS, ids.shape[1]), dtype=np.float32),
        "noise_z": rng.standard_normal((1, PRIOR_CHANNELS, frames), dtype=np.float32),
    }


# --- the rewritten graph ---------------------------------------------------------------------

def test_rewritten_graph_is_valid_opset_20_without_random_ops(component):
    model = onnx.load(str(component.onnx_path))
    onnx.checker.check_model(model, full_check=True)
    assert {o.version for o in model.opset_import if o.domain in ("", "ai.onnx")} == {OPSET}
    ops = {n.op_type for n in model.graph.node}
    assert not ops & {"RandomNormalLike", "RandomNormal", "RandomUniformLike", "RandomUniform"}
    assert [i.name for i in model.graph.input] == ["input", "input_lengths", "scales", "noise_dp", "noise_z"]
    metadata = {p.key: p.value for p in model.metadata_props}
    assert metadata["component"] == "tts" and metadata["sample_rate"] == "22050"


def test_rewritten_graph_passes_the_tensorrt_10_3_check(component):
    result = check_trt_compatibility(component.onnx_path, "10.3")
    assert result.ok, result.summary()
    # The duration expansion is data-dependent; that stays a warning, and only that.
    assert {w.op for w in result.warnings} <= {"NonZero"}


def test_manifest_entry_describes_the_graph_and_survives_json(component):
    entry = component.manifest_entry()
    assert entry.name == "tts" and entry.opset == OPSET and entry.state == {}
    assert entry.input("noise_z").shape == ("batch", PRIOR_CHANNELS, "noise_frames")
    assert entry.input("input").dtype == "int64"
    assert entry.output("output").shape == ("batch", 1, 1, "samples")
    assert entry.stream["sample_rate"] == 22050 and entry.stream["espeak_voice"] == "en-us"
    assert "Blizzard" in entry.license and "GPL" in entry.license
    again = Component.from_dict(json.loads(json.dumps(asdict(entry))))
    assert again == entry


def test_zero_noise_output_matches_the_original_voice(component, voice_files, config):
    # Measured while building, and again here with other words.
    assert component.parity["zero_noise_vs_original"] < 1e-4
    error = zero_noise_parity(voice_files[0], component.onnx_path, config, phonemes=HELLO_PHONEMES)
    assert error < 1e-4


def test_same_noise_same_audio_other_noise_other_audio(session, config):
    ids = phoneme_ids_for(HELLO_PHONEMES, config)
    first = session.run(["output"], feeds(ids, seed=1, frames=400))[0]
    again = session.run(["output"], feeds(ids, seed=1, frames=400))[0]
    other = session.run(["output"], feeds(ids, seed=2, frames=400))[0]
    assert first.shape[:3] == (1, 1, 1) and first.shape[3] > 22050 // 2  # "Hello world." > 0.5 s
    np.testing.assert_array_equal(first, again)
    n = min(first.shape[3], other.shape[3])
    assert np.max(np.abs(first[..., :n] - other[..., :n])) > 1e-2


def test_short_prior_noise_wraps_around_instead_of_failing(session, config):
    ids = phoneme_ids_for(HELLO_PHONEMES, config)
    # Durations without noise (noise_w=0) so the frame count is the same in both runs.
    scales = (0.667, 1.0, 0.0)
    short = feeds(ids, seed=3, frames=7, scales=scales)
    frames = session.run(["output"], short)[0].shape[3] // 256
    tiled = dict(short, noise_z=np.tile(short["noise_z"], (1, 1, frames // 7 + 1)))
    np.testing.assert_allclose(session.run(["output"], short)[0], session.run(["output"], tiled)[0], atol=1e-6)


def test_a_graph_without_random_ops_is_refused():
    graph = onnx.helper.make_graph(
        [onnx.helper.make_node("Identity", ["x"], ["y"])], "g",
        [onnx.helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1])],
        [onnx.helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [1])],
    )
    model = onnx.helper.make_model(graph, opset_imports=[onnx.helper.make_opsetid("", 20)])
    with pytest.raises(EdgevoiceError, match="random ops of a Piper VITS graph"):
        rewrite_piper_graph(model)


# --- the voice config ------------------------------------------------------------------------

def test_joe_config_facts(config):
    assert config.sample_rate == 22050
    assert config.espeak_voice == "en-us"
    assert config.scales.as_list() == [0.667, 1.0, 0.8]
    assert config.phoneme_id_map["_"] == [0] and config.phoneme_id_map["^"] == [1] and config.phoneme_id_map["$"] == [2]


@pytest.fixture
def raw_config(voice_files):
    return json.loads(voice_files[1].read_text())


@pytest.mark.parametrize(
    "breakage, message",
    [
        (lambda c: c.pop("audio"), "'audio' section"),
        (lambda c: c["audio"].update(sample_rate="22050"), "'sample_rate' must be a positive integer"),
        (lambda c: c["espeak"].update(voice="en-us; rm -rf /"), "not a valid espeak-ng voice name"),
        (lambda c: c["phoneme_id_map"].pop("^"), "special symbols"),
        (lambda c: c["phoneme_id_map"].update(a=[999]), "ids must be a non-empty list"),
        (lambda c: c["inference"].update(length_scale=0), "'length_scale' must be above 0"),
        (lambda c: c["inference"].pop("noise_w"), "'noise_w' must be a non-negative number"),
        (lambda c: c.update(num_speakers=4), "multi-speaker"),
        (lambda c: c.update(phoneme_type="text"), "phoneme_type 'text' is not supported"),
    ],
)
def test_broken_configs_are_refused_naming_the_field(raw_config, breakage, message):
    breakage(raw_config)
    with pytest.raises(EdgevoiceError, match=message):
        parse_piper_config(raw_config, "voice.onnx.json")


def test_missing_or_garbled_config_file(tmp_path):
    with pytest.raises(EdgevoiceError, match="not found"):
        load_piper_config(tmp_path / "absent.onnx.json")
    bad = tmp_path / "bad.onnx.json"
    bad.write_text("{not json")
    with pytest.raises(EdgevoiceError, match="not valid JSON"):
        load_piper_config(bad)


def test_corrupt_voice_graph_is_a_clear_error(tmp_path):
    from edgevoice.recipes.cascade.piper import build_piper_component
    from edgevoice.weights.piper import joe_voice_paths

    onnx_path, config_path = joe_voice_paths()
    broken = tmp_path / "voice.onnx"
    broken.write_bytes(onnx_path.read_bytes()[:3_000_000])
    with pytest.raises(EdgevoiceError, match="not a readable ONNX voice.*reinstall"):
        build_piper_component(tmp_path / "out", onnx_path=broken, config_path=config_path)
