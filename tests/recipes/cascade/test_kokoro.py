"""The Kokoro import: part assembly and its hash, the float rewrite (TensorRT 10.3, exactness of
each rewrite), agreement of the float graph with the shipped int8 one, voice data checks."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict

import numpy as np
import onnx
import onnxruntime as ort
import pytest
from edgevoice.export.trt_check import check_trt_compatibility
from onnx import TensorProto, helper, numpy_helper

from edgevoice.errors import EdgevoiceError
from edgevoice.manifest import Component
from edgevoice.recipes.cascade.kokoro import (
    MAX_PHONEMES,
    PARITY_TOLERANCE,
    build_kokoro_component,
    kokoro_feeds,
    run_ort,
    spectral_noise_to_signal,
)
from edgevoice.recipes.cascade.kokoro_graph import OPSET, rewrite_ops, stft_basis
from edgevoice.recipes.cascade.voices import VOICES, voice_choice
from edgevoice.weights.kokoro import (
    ASSEMBLED_NAME,
    assemble_model,
    expected_sha256,
    file_sha256,
    load_vocab,
    load_voices,
    part_paths,
    voice_styles,
)

# Three English sentences as espeak-ng 1.51 (en-us) phonemizes them, already mapped to Kokoro's
# symbols (runtime/cascade/kokoro.py): fixed here so the graph tests do not depend on the phonemizer.
SENTENCES = [
    "ðə kwˈɪk bɹˈWn fˈɑks ʤˈʌmps ˌOvəɹ ðə lˈAzi dˈɑɡ.",
    "plˈiz tˈɜɹn ɔnðə kˈɪʧən lˈIts.",
    "I wʊd lˈIk ə kˈʌp ʌv kˈɔfi, plˈiz.",
]


@pytest.fixture(scope="module")
def workdir(tmp_path_factory):
    return tmp_path_factory.mktemp("kokoro")


@pytest.fixture(scope="module")
def original(workdir):
    return assemble_model(workdir / "int8")


@pytest.fixture(scope="module")
def component(workdir):
    return build_kokoro_component(workdir / "package", verify=True)


@pytest.fixture(scope="module")
def vocab():
    return load_vocab()


@pytest.fixture(scope="module")
def styles():
    return voice_styles("jf_alpha")


# --- assembly ------------------------------------------------------------------------------------

def test_assembled_parts_have_the_published_hash(original):
    assert original.name == ASSEMBLED_NAME
    assert file_sha256(original) == expected_sha256()
    assert original.stat().st_size == sum(p.stat().st_size for p in part_paths())
    # A second call reuses the checked file instead of writing 92 MB again.
    mtime = original.stat().st_mtime_ns
    assert assemble_model(original.parent) == original and original.stat().st_mtime_ns == mtime


def test_a_corrupt_part_is_refused_and_nothing_is_left_behind(tmp_path):
    parts = []
    for i, part in enumerate(part_paths()):
        parts.append(tmp_path / f"part{i}.bin")
        shutil.copyfile(part, parts[-1])
    with open(parts[2], "r+b") as f:  # flip one byte in the middle of part 3
        f.seek(1000)
        byte = f.read(1)
        f.seek(1000)
        f.write(bytes([byte[0] ^ 0xFF]))
    with pytest.raises(EdgevoiceError, match="SHA-256.*reinstall"):
        assemble_model(tmp_path / "out", parts=parts)
    assert not (tmp_path / "out" / ASSEMBLED_NAME).exists()
    with pytest.raises(EdgevoiceError, match="missing"):
        assemble_model(tmp_path / "out", parts=[*parts[:3], tmp_path / "absent.bin"])


# --- the float graph -----------------------------------------------------------------------------

def test_float_graph_is_valid_opset_20_without_quantized_or_custom_ops(component):
    model = onnx.load(str(component.onnx_path))
    onnx.checker.check_model(model, full_check=True)
    assert [(o.domain, o.version) for o in model.opset_import] == [("", OPSET)]
    ops = {n.op_type for n in model.graph.node}
    assert not ops & {"DynamicQuantizeLinear", "MatMulInteger", "ConvInteger", "DequantizeLinear", "STFT"}
    assert all(n.domain in ("", "ai.onnx") for n in model.graph.node)
    assert not {t.data_type for t in model.graph.initializer} & {TensorProto.INT8, TensorProto.UINT8}
    assert [i.name for i in model.graph.input] == ["tokens", "style", "speed"]
    metadata = {p.key: p.value for p in model.metadata_props}
    assert metadata["component"] == "tts" and metadata["sample_rate"] == "24000"


def test_float_graph_passes_the_tensorrt_10_3_check(component, original):
    assert not check_trt_compatibility(original, "10.3").ok  # the shipped int8 graph does not
    result = check_trt_compatibility(component.onnx_path, "10.3")
    assert result.ok, result.summary()
    assert {w.op for w in result.warnings} <= {"NonZero"}  # duration expansion, data-dependent


def test_manifest_entry_ships_the_style_table_and_says_kokoro(component):
    entry = component.manifest_entry()
    assert entry.name == "tts" and entry.files == ("tts_styles.npz",)
    assert entry.input("tokens").shape == (1, "tokens") and entry.output("audio").shape == ("samples",)
    assert entry.stream["engine"] == "kokoro" and entry.stream["sample_rate"] == 24000
    assert entry.stream["vocab"]["A"] == 24 and entry.stream["max_phonemes"] == MAX_PHONEMES
    assert "Apache-2.0" in entry.license and "GPL" in entry.license
    with np.load(component.files["tts_styles.npz"], allow_pickle=False) as archive:
        np.testing.assert_array_equal(archive["styles"], voice_styles("jf_alpha"))
    assert Component.from_dict(json.loads(json.dumps(asdict(entry)))) == entry


def _one_node_model(node, inputs, outputs, initializers=(), custom=False):
    graph = helper.make_graph([node], "g", inputs, outputs, list(initializers))
    opsets = [helper.make_opsetid("", OPSET)] + ([helper.make_opsetid("com.microsoft", 1)] if custom else [])
    return helper.make_model(graph, opset_imports=opsets, ir_version=9)


def _run(model, feeds):
    return ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, feeds)


def _value(name, shape):
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def test_stft_as_a_convolution_matches_onnx_stft(original):
    # The vocoder's own STFT settings: hop 5, 20-point Hann window, one-sided.
    stft = next(n for n in onnx.load(str(original)).graph.node if n.op_type == "STFT")
    consts = {t.name: t for t in onnx.load(str(original)).graph.initializer if t.name in stft.input}
    model = _one_node_model(helper.make_node("STFT", ["x", *stft.input[1:]], ["y"], onesided=1),
                            [_value("x", [1, "L"])], [_value("y", None)], consts.values())
    x = {"x": np.random.default_rng(0).standard_normal((1, 1000), dtype=np.float32)}
    reference, ours = _run(model, x)[0], _run(rewrite_ops(model, ("STFT",)), x)[0]
    assert ours.shape == reference.shape == (1, 197, 11, 2)
    np.testing.assert_allclose(ours, reference, atol=1e-4)
    basis = stft_basis(np.ones(4, np.float32))[:, 0]  # (2K, N): K = 3 cos rows, then 3 -sin rows
    np.testing.assert_allclose(basis, [[1, 1, 1, 1], [1, 0, -1, 0], [1, -1, 1, -1],
                                       [0, 0, 0, 0], [0, -1, 0, 1], [0, 0, 0, 0]], atol=1e-6)


@pytest.mark.parametrize("op, node, shapes, extra", [
    ("FastGelu", helper.make_node("FastGelu", ["x", "b"], ["y"], domain="com.microsoft"), {"x": [2, 5, 8]}, {"b": (8,)}),
    ("SkipLayerNormalization", helper.make_node("SkipLayerNormalization", ["x", "s", "g", "b"], ["y"],
                                                domain="com.microsoft", epsilon=1e-12),
     {"x": [2, 5, 8], "s": [2, 5, 8]}, {"g": (8,), "b": (8,)}),
    ("FusedMatMul", helper.make_node("FusedMatMul", ["x", "w"], ["y"], domain="com.microsoft", transA=1, alpha=0.5),
     {"x": [2, 6, 5], "w": [2, 6, 3]}, {}),
])
def test_onnxruntime_fusions_are_rewritten_exactly(op, node, shapes, extra):
    rng = np.random.default_rng(1)
    inits = [numpy_helper.from_array(rng.standard_normal(shape).astype(np.float32), name) for name, shape in extra.items()]
    model = _one_node_model(node, [_value(n, s) for n, s in shapes.items()], [_value("y", None)], inits, custom=True)
    feeds = {n: rng.standard_normal(s).astype(np.float32) for n, s in shapes.items()}
    rewritten = rewrite_ops(model, (op,))
    assert {n.op_type for n in rewritten.graph.node}.isdisjoint({op})
    np.testing.assert_allclose(_run(rewritten, feeds)[0], _run(model, feeds)[0], atol=1e-5, rtol=1e-5)


def test_dequantized_lstm_agrees_with_the_quantized_one(original):
    # The text encoder's bidirectional LSTM, on random input: only activation rounding differs.
    model = onnx.load(str(original))
    lstm = next(n for n in model.graph.node if n.op_type == "DynamicQuantizeLSTM")
    inits = [t for t in model.graph.initializer if t.name in lstm.input]
    node = helper.make_node("DynamicQuantizeLSTM", ["x", *lstm.input[1:]], ["y"], domain="com.microsoft")
    node.attribute.extend(lstm.attribute)
    small = _one_node_model(node, [_value("x", ["T", 1, 512])], [_value("y", None)], inits, custom=True)
    x = {"x": np.random.default_rng(2).standard_normal((30, 1, 512)).astype(np.float32)}
    reference, ours = _run(small, x)[0], _run(rewrite_ops(small, ("DynamicQuantizeLSTM",)), x)[0]
    assert ours.shape == reference.shape == (30, 2, 1, 256)
    # Measured: 1.5 % relative RMS; a wrong W/R layout or gate order gives ~100 %.
    assert np.sqrt(np.mean((ours - reference) ** 2) / np.mean(reference**2)) < 0.05


@pytest.mark.slow
def test_float_graph_agrees_with_the_int8_graph(component, original, vocab, styles):
    # Spectra, not samples: the harmonic source integrates F0, so the small F0 change from
    # dropping activation rounding turns into a phase drift (sample SNR is ~0 dB while both
    # sound alike; tiny.en gets 92 % of the words of five sentences from each graph, see
    # tests/runtime/cascade/test_kokoro_voice.py).
    # Measured (3 sentences): spectral noise-to-signal 0.08-0.16, lengths equal within 1 %.
    assert component.parity["float_vs_int8_spectral_nsr"] < PARITY_TOLERANCE
    for phonemes in SENTENCES:
        feeds = kokoro_feeds(phonemes, vocab, styles)
        reference, ours = run_ort(original, feeds), run_ort(component.onnx_path, feeds)
        assert abs(len(ours) - len(reference)) <= 0.02 * len(reference)
        assert spectral_noise_to_signal(reference, ours) < PARITY_TOLERANCE
        assert 0.05 < np.max(np.abs(ours)) <= 1.0


# --- voice data and choices ----------------------------------------------------------------------

def test_voices_and_vocab_facts(vocab):
    voices = load_voices()
    assert sorted(voices) == ["jf_alpha", "jf_gongitsune", "jf_nezumi", "jf_tebukuro", "jm_kumo"]
    assert all(v.shape == (510, 256) and v.dtype == np.float32 for v in voices.values())
    assert vocab["ʤ"] == 82 and " " in vocab and 0 not in vocab.values()
    with pytest.raises(EdgevoiceError, match="no Kokoro voice 'af_heart'.*jf_alpha"):
        voice_styles("af_heart")


def test_broken_voice_data_is_refused(tmp_path):
    np.savez(tmp_path / "short.npz", jf_alpha=np.zeros((20, 1, 256), np.float32))
    with pytest.raises(EdgevoiceError, match="expected float32 \\(510, 1, 256\\)"):
        load_voices(tmp_path / "short.npz")
    (tmp_path / "vocab.json").write_text(json.dumps({"vocab": {"ab": 3}}))
    with pytest.raises(EdgevoiceError, match="not one character"):
        load_vocab(tmp_path / "vocab.json")
    (tmp_path / "pad.json").write_text(json.dumps({"vocab": {"a": 0}}))
    with pytest.raises(EdgevoiceError, match="1..177"):
        load_vocab(tmp_path / "pad.json")


def test_feeds_refuse_unmapped_ipa(vocab, styles):
    with pytest.raises(EdgevoiceError, match="not Kokoro symbols"):
        kokoro_feeds("ɬænˈɛli", vocab, styles)  # espeak's "ɬ" must be mapped to "l" first
    feeds = kokoro_feeds("həlˈO", vocab, styles)
    assert feeds["tokens"].tolist() == [[0, 50, 83, 54, 156, 31, 0]]
    np.testing.assert_array_equal(feeds["style"][0], styles[5])


def test_voice_choices():
    assert set(VOICES) == {"joe", "kokoro"}
    assert voice_choice("kokoro").engine == "kokoro" and voice_choice("joe").engine == "piper"
    assert "Apache-2.0" in voice_choice("kokoro").license and "Blizzard" in voice_choice("joe").license
    assert len(voice_choice("kokoro").weight_packages) == 5
    with pytest.raises(EdgevoiceError, match="unknown voice 'bob'; choose one of: joe, kokoro"):
        voice_choice("bob")
