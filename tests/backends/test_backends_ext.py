"""The torch runner, onnxruntime's IOBinding stream, the runner comparator, and TensorRT where it exists."""

from __future__ import annotations

import numpy as np
import pytest

from edgevoice.backends import open_runner
from edgevoice.backends.base import StatefulStream
from edgevoice.backends.compare import compare_runners, stream_outputs
from edgevoice.backends.ort import OrtOptions, OrtRunner, provider_options
from edgevoice.backends.torch import TorchOptions, TorchRunner
from edgevoice.compare import Tolerance, compare_outputs
from edgevoice.errors import EdgevoiceError


@pytest.fixture(scope="module")
def vad(cascade_package):
    from edgevoice.bench import torch_module

    return cascade_package, cascade_package.component("vad"), torch_module(cascade_package, "vad")


def chunks(n=6, seed=0):
    rng = np.random.default_rng(seed)
    return [{"chunk": (0.1 * rng.standard_normal((1, 512))).astype(np.float32)} for _ in range(n)]


def test_bound_stream_equals_plain_stream_and_rolls_back(vad):
    manifest, component, _ = vad
    runner = OrtRunner(component, manifest.path(component.onnx), options=OrtOptions(io_binding=True))
    bound, plain = runner.stream(), StatefulStream(runner)
    assert type(bound).__name__ == "BoundStream"
    feeds = chunks()
    for f in feeds[:3]:
        assert np.array_equal(bound(f)["prob"], plain(f)["prob"])
    saved = bound.snapshot()
    first = [bound(f)["prob"] for f in feeds[3:]]
    bound.restore(saved)
    assert all(np.array_equal(a, bound(f)["prob"]) for a, f in zip(first, feeds[3:]))
    bound.reset()
    assert not np.any(bound.snapshot()["lstm"])


def test_torch_runner_matches_onnxruntime(vad):
    manifest, component, module = vad
    torch_runner = TorchRunner(component, module)
    ort_runner = open_runner(manifest, "vad")
    result = compare_runners(torch_runner, ort_runner, chunks(), atol=1e-4)
    assert result.ok, result.summary()
    # The torch stream (state held as tensors) gives what the stateless infer path gives.
    stream = torch_runner.stream()
    streamed = np.stack([stream(f)["prob"] for f in chunks()])
    assert np.array_equal(streamed, stream_outputs(torch_runner, chunks())["prob"])


def test_torch_runner_refuses_a_foreign_module(vad, cascade_package):
    from edgevoice.bench import torch_module

    with pytest.raises(EdgevoiceError, match="rebuild the module"):
        TorchRunner(cascade_package.component("vad"), torch_module(cascade_package, "asr_encoder"))
    with pytest.raises(EdgevoiceError, match="needs vad's torch module"):
        open_runner(cascade_package, "vad", backend="torch")


def test_torch_cuda_without_gpu_is_a_user_error(vad):
    import torch

    if torch.cuda.is_available():
        pytest.skip("a GPU is present: this checks the message on machines without one")
    _, component, module = vad
    with pytest.raises(EdgevoiceError, match="torch sees no GPU"):
        TorchRunner(component, module, TorchOptions(device="cuda"))


@pytest.mark.gpu
def test_cuda_graphs_match_eager(vad):
    import torch

    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    _, component, module = vad
    eager = TorchRunner(component, module, TorchOptions(device="cuda", cuda_graphs=False)).stream()
    graphs = TorchRunner(component, module, TorchOptions(device="cuda", cuda_graphs=True)).stream()
    for f in chunks(8):
        np.testing.assert_allclose(graphs(f)["prob"], eager(f)["prob"], atol=1e-5)
    assert graphs.captured_shapes == 1


def test_trt_provider_gets_the_manifest_profile(vad):
    _, component, _ = vad
    configured = provider_options(["TensorrtExecutionProvider", "CPUExecutionProvider"], component, "/tmp/trt-cache")
    name, options = configured[0]
    assert name == "TensorrtExecutionProvider" and options["trt_engine_cache_path"] == "/tmp/trt-cache"
    batch = component.dynamic_dims["batch"].max  # sessions the target holds (export/budget.BatchRange)
    assert options["trt_profile_max_shapes"] == f"chunk:{batch}x512,context:{batch}x64,lstm:2x{batch}x128"
    assert configured[1] == "CPUExecutionProvider"


def test_tolerances_per_output_and_audio_snr():
    ref = {"logits": np.array([30.0, -20.0]), "audio": np.sin(np.linspace(0, 20, 400))}
    test = {"logits": np.array([30.02, -20.0]), "audio": ref["audio"] * 1.01}
    assert not compare_outputs(ref, test, atol=1e-3).ok
    loose = compare_outputs(ref, test, per_output={"logits": Tolerance(1e-3, rtol=1e-3), "audio": Tolerance(1e-3, min_snr_db=30)},
                            audio_outputs=("audio",))
    assert loose.ok, loose.summary()
    strict_snr = compare_outputs(ref, test, per_output={"logits": 0.05, "audio": Tolerance(1e-3, min_snr_db=50)},
                                 audio_outputs=("audio",))
    assert not strict_snr.ok and strict_snr.to_dict()["outputs"][0]["snr_db"] == pytest.approx(40, abs=0.1)


@pytest.mark.trt
def test_trt_stream_matches_onnxruntime(tmp_path):
    pytest.importorskip("tensorrt", reason="TensorRT is not installed on this machine")
    from edgevoice.backends.cuda import cuda_device_count

    if cuda_device_count() == 0:
        pytest.skip("TensorRT is installed but there is no GPU")
    from edgevoice.export import build_package, export_package

    export_package(model="silero-vad", target="rtx-4090", out=tmp_path)  # a package of its own to build in
    built = build_package(tmp_path)
    result = compare_runners(open_runner(built, "vad"), open_runner(built, "vad", backend="trt"), chunks(), atol=1e-3)
    assert result.ok, result.summary()
