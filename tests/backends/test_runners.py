"""Runner validation, state streaming on onnxruntime, the comparator, and the TensorRT runner's gate."""

from __future__ import annotations

import numpy as np
import pytest

from edgevoice.backends import open_runner
from edgevoice.backends.cuda import cuda_device_count
from edgevoice.backends.ort import choose_providers
from edgevoice.compare import compare_outputs
from edgevoice.errors import EdgevoiceError
from edgevoice.export import export_package


@pytest.fixture(scope="module")
def manifest(tmp_path_factory):
    return export_package(model="silero-vad", target="jetson-orin-nx", out=tmp_path_factory.mktemp("pkg"))


@pytest.fixture(scope="module")
def runner(manifest):
    return open_runner(manifest, "vad")


def feeds(batch=1):
    return {
        "chunk": np.zeros((batch, 512), np.float32),
        "context": np.zeros((batch, 64), np.float32),
        "lstm": np.zeros((2, batch, 128), np.float32),
    }


def test_infer_shapes(runner):
    out = runner.infer(feeds(2))
    assert out["prob"].shape == (2, 1) and out["lstm_out"].shape == (2, 2, 128)


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda f: f.pop("context"), "do not match"),
        (lambda f: f.update(chunk=f["chunk"].astype(np.float64)), "dtype float64, expected float32"),
        (lambda f: f.update(chunk=np.zeros((1, 511), np.float32)), "expected \\(batch, 512\\)"),
        (lambda f: f.update(context=np.zeros((2, 64), np.float32)), "dim 'batch'=2 but another input has batch=1"),
    ],
)
def test_infer_validation(runner, change, message):
    f = feeds()
    change(f)
    with pytest.raises(EdgevoiceError, match=message):
        runner.infer(f)


def test_batch_beyond_exported_range(runner):
    with pytest.raises(EdgevoiceError, match="outside the exported range 1..2"):
        runner.infer(feeds(3))  # Orin NX profile: max_batch 2


def test_stream_keeps_state_and_rolls_back(runner):
    rng = np.random.default_rng(0)
    chunks = [rng.standard_normal((1, 512)).astype(np.float32) * 0.1 for _ in range(6)]
    stream = runner.stream()
    for c in chunks[:3]:
        stream({"chunk": c})
    saved = stream.snapshot()
    first = [stream({"chunk": c})["prob"] for c in chunks[3:]]
    stream.restore(saved)
    again = [stream({"chunk": c})["prob"] for c in chunks[3:]]
    assert all(np.array_equal(a, b) for a, b in zip(first, again))
    stream.reset()
    assert not np.any(stream.state["lstm"])


def test_providers():
    assert choose_providers(["CPUExecutionProvider"], "cpu") == ["CPUExecutionProvider"]
    assert choose_providers(["CUDAExecutionProvider", "CPUExecutionProvider"], "auto")[0] == "CUDAExecutionProvider"
    with pytest.raises(EdgevoiceError, match="onnxruntime-gpu"):
        choose_providers(["CPUExecutionProvider"], "cuda")


def test_unknown_backend(manifest):
    with pytest.raises(EdgevoiceError, match="choose one of: ort, trt"):
        open_runner(manifest, "vad", backend="openvino")


def test_trt_backend_without_gpu_is_a_user_error(manifest):
    if cuda_device_count():
        pytest.skip("a GPU is present: this checks the message on machines without one")
    with pytest.raises(EdgevoiceError, match="needs an NVIDIA GPU"):
        open_runner(manifest, "vad", backend="trt")


def test_compare_outputs():
    ref = {"y": np.array([1.0, 2.0]), "audio": np.array([0.5, -0.5])}
    result = compare_outputs(ref, {"y": np.array([1.0, 2.00005]), "audio": np.array([0.5, -0.4])}, atol=1e-4,
                             per_output={"audio": 0.2}, audio_outputs=("audio",))
    assert result.ok and result.max_errors()["y"] == pytest.approx(5e-5)
    snr = {o.name: o.snr_db for o in result.outputs}["audio"]
    assert 10 < snr < 30
    assert not compare_outputs(ref, {"y": ref["y"] + 1, "audio": ref["audio"]}).ok
    with pytest.raises(ValueError, match="outputs differ"):
        compare_outputs(ref, {"y": ref["y"]})
