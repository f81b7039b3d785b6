"""`export_package` end to end on Silero VAD: files, manifest, ONNX contract, checks, parity."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from edgevoice.errors import EdgevoiceError
from edgevoice.export import export_package
from edgevoice.export.trt_check import check_trt_compatibility
from edgevoice.manifest import read_manifest
from edgevoice.recipes.silero_vad import upstream_probabilities
from edgevoice.runtime import VadPipeline


@pytest.fixture(scope="module")
def jetson_package(tmp_path_factory):
    return export_package(model="silero-vad", target="jetson-orin", out=tmp_path_factory.mktemp("vad"), precision="fp32",
                          verify=True)


@pytest.fixture(scope="module")
def fp16_package(tmp_path_factory):
    out = tmp_path_factory.mktemp("vad16")
    return export_package(model="silero-vad", target="rtx-4090", out=out, precision="fp16", verify=True)


def test_package_files_and_manifest(jetson_package):
    directory = jetson_package.directory
    assert sorted(p.name for p in directory.iterdir()) == ["build.sh", "manifest.json", "vad.onnx"]
    manifest = read_manifest(directory, recipe="silero-vad")
    assert manifest.target["name"] == "jetson-orin-agx"
    vad = manifest.component("vad")
    assert [t.name for t in vad.inputs] == ["chunk", "context", "lstm"]
    assert [t.name for t in vad.outputs] == ["prob", "context_out", "lstm_out"]
    assert vad.inputs[0].shape == ("batch", 512) and vad.inputs[2].shape == (2, "batch", 128)
    assert vad.state == {"context_out": "context", "lstm_out": "lstm"}
    assert vad.dynamic_dims["batch"].max == 4  # the AGX profile's max_batch
    assert vad.stream == {"sample_rate": 16000, "chunk_samples": 512, "context_samples": 64}
    assert "MIT" in vad.license


def test_parity_and_upstream_within_1e4(jetson_package):
    vad = jetson_package.component("vad")
    assert set(vad.parity) == {"prob", "context_out", "lstm_out"}
    assert max(vad.parity.values()) <= 1e-4
    upstream = jetson_package.config["upstream"]["vad"]
    assert upstream["prob_max_abs"] <= 1e-4 and upstream["limits"] == {"prob_max_abs": 1e-4}
    assert "TorchScript" in upstream["against"]


def test_onnx_graph_contract(jetson_package):
    path = jetson_package.path("vad.onnx")
    onnx.checker.check_model(str(path), full_check=True)
    model = onnx.load(str(path))
    assert model.opset_import[0].version == 20
    meta = {p.key: p.value for p in model.metadata_props}
    assert meta["component"] == "vad" and json.loads(meta["state"]) == {"context_out": "context", "lstm_out": "lstm"}
    assert check_trt_compatibility(model, "10.3").ok
    assert "op check vs TensorRT 10.3 ONNX parser support list: OK" in jetson_package.component("vad").trt_check["10.3"]


def test_packaged_graph_matches_upstream_on_speech(jetson_package, speech_16k):
    probs = VadPipeline(jetson_package.directory).probabilities(speech_16k, 16000)
    usable = len(speech_16k) // 512
    assert np.max(np.abs(probs[:usable] - upstream_probabilities(speech_16k, 16000))) <= 1e-4


def test_segments_of_two_sentences(jetson_package, speech_16k):
    segments = VadPipeline(jetson_package.directory).segments(speech_16k, 16000)
    assert len(segments) >= 2
    assert segments[0].start >= 0.3  # 0.5 s of leading silence
    assert segments[-1].end <= len(speech_16k) / 16000 - 0.3


def test_fp16_variant_is_baked_into_the_graph(fp16_package):
    model = onnx.load(str(fp16_package.path("vad.onnx")))
    types = {init.data_type for init in model.graph.initializer}
    assert onnx.TensorProto.FLOAT16 in types
    vad = fp16_package.component("vad")
    assert vad.precision == "fp16" and vad.inputs[0].dtype == "float32"  # I/O stays float32
    assert vad.parity["prob"] < 1e-2
    assert set(vad.trt_check) == {"10.3", "11.4"}


def test_fp16_refused_on_cpu_target(tmp_path):
    with pytest.raises(EdgevoiceError, match="does not support precision 'fp16'"):
        export_package(model="silero-vad", target="cpu", out=tmp_path, precision="fp16")


def test_unknown_model_and_target(tmp_path):
    with pytest.raises(EdgevoiceError, match="unknown model 'whisper-huge'; known models: cascade, freeze-omni, silero-vad, tiny, vocalnet, vocalnet-tiny"):
        export_package(model="whisper-huge", target="cpu", out=tmp_path)
    with pytest.raises(EdgevoiceError, match="unknown target 'jetson-tx2'.*jetson-orin-nano"):
        export_package(model="silero-vad", target="jetson-tx2", out=tmp_path)


def test_unwritable_output_dir(tmp_path):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    with pytest.raises(EdgevoiceError, match="cannot write to output directory"):
        export_package(model="silero-vad", target="cpu", out=blocker / "pkg")


def test_up_to_date_package_is_kept(tmp_path):
    first = export_package(model="silero-vad", target="cpu", out=tmp_path)
    stamp = (tmp_path / "vad.onnx").stat().st_mtime_ns
    stages = []
    again = export_package(model="silero-vad", target="cpu", out=tmp_path, progress=stages.append)
    assert stages == ["the package is up to date"] and again.components == first.components
    assert (tmp_path / "vad.onnx").stat().st_mtime_ns == stamp
    verified = export_package(model="silero-vad", target="cpu", out=tmp_path, verify=True)  # not verified before
    assert verified.component("vad").parity
    export_package(model="silero-vad", target="cpu", out=tmp_path, force=True, progress=stages.append)
    assert len(stages) > 2


def test_a_package_exported_by_other_graph_code_is_exported_again(tmp_path):
    # Same version, recipe and options, but the graphs came from other code (an interface may differ).
    from dataclasses import replace

    from edgevoice.export.package import graph_source_digest

    from edgevoice.manifest import write_manifest

    first = export_package(model="silero-vad", target="cpu", out=tmp_path)
    assert first.config["graph_source"] == graph_source_digest()
    write_manifest(replace(first, config={**first.config, "graph_source": "0" * 16}))
    stages = []
    again = export_package(model="silero-vad", target="cpu", out=tmp_path, progress=stages.append)
    assert "the package is up to date" not in stages and again.config["graph_source"] == graph_source_digest()


def test_voice_option_is_checked_before_any_work(tmp_path):
    with pytest.raises(EdgevoiceError, match="--voice applies to the cascade"):
        export_package(model="silero-vad", target="cpu", out=tmp_path, voice="kokoro")
    with pytest.raises(EdgevoiceError, match="unknown voice 'alto'; choose one of: joe, kokoro"):
        export_package(model="cascade", target="cpu", out=tmp_path, voice="alto")
    assert not any(tmp_path.iterdir())


def test_gpu_targets_default_to_their_precision(tmp_path):
    # The profile's default_precision is the default: fp16 on the GPU targets, fp32 on the CPU.
    gpu = export_package(model="silero-vad", target="jetson-orin", out=tmp_path / "gpu")
    assert gpu.component("vad").precision == "fp16"
    assert "--precision fp16" in gpu.export_command
    cpu = export_package(model="silero-vad", target="cpu", out=tmp_path / "cpu")
    assert cpu.component("vad").precision == "fp32"


def test_precisions_the_hardware_runs_but_export_does_not_write_are_refused(tmp_path):
    with pytest.raises(EdgevoiceError, match="precision 'int8' cannot be exported yet .*choose --precision fp16 or fp32"):
        export_package(model="silero-vad", target="jetson-orin", out=tmp_path, precision="int8")


def test_a_package_missing_a_component_the_recipe_now_makes_is_not_up_to_date(tmp_path):
    from dataclasses import replace

    from edgevoice.export.package import _same_components
    from edgevoice.recipes import expected_components

    assert expected_components("cascade")[:2] == ("vad", "turn")
    assert expected_components("freeze-omni") is None  # its graphs depend on the checkpoint
    vad_only = export_package(model="silero-vad", target="cpu", out=tmp_path)
    assert _same_components(vad_only, "silero-vad")
    assert not _same_components(replace(vad_only, recipe="cascade"), "cascade")
