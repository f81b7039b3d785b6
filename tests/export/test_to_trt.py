"""TensorRT build helpers: everything that must work without TensorRT, plus one real build (GPU only)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from edgevoice.errors import EdgevoiceError
from edgevoice.export.to_trt import (
    EngineBuildSpec,
    build_engine,
    cuda_device_count,
    require_tensorrt_and_gpu,
    tensorrt_version,
    trtexec_command,
)


def sample_spec(**overrides) -> EngineBuildSpec:
    values = dict(
        onnx_path=Path("/models/encoder.onnx"),
        engine_path=Path("/engines/my encoder.plan"),
        profiles=({"x": ((1, 80), (1, 512), (1, 1024)), "cache": ((1, 4, 8), (1, 4, 8), (1, 4, 8))},),
        workspace_mb=512,
        builder_optimization_level=3,
        timing_cache_path=Path("/cache/orin.cache"),
    )
    values.update(overrides)
    return EngineBuildSpec(**values)


def test_import_does_not_import_tensorrt():
    # A fresh interpreter: other tests in this process may have imported things already.
    code = "import sys, edgevoice.export.to_trt; print('tensorrt' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"


def test_cuda_device_count_is_an_int():
    count = cuda_device_count()
    assert isinstance(count, int) and count >= 0


def test_require_without_gpu_is_one_line_user_error(monkeypatch):
    from edgevoice.export import to_trt

    monkeypatch.setattr(to_trt, "cuda_device_count", lambda: 0)
    with pytest.raises(EdgevoiceError) as err:
        require_tensorrt_and_gpu()
    message = str(err.value)
    assert "\n" not in message and "no CUDA GPU" in message


def test_require_without_tensorrt_names_the_install(monkeypatch):
    from edgevoice.export import to_trt

    monkeypatch.setattr(to_trt, "cuda_device_count", lambda: 1)
    monkeypatch.setitem(sys.modules, "tensorrt", None)  # makes `import tensorrt` raise ImportError
    with pytest.raises(EdgevoiceError) as err:
        require_tensorrt_and_gpu()
    message = str(err.value)
    assert "\n" not in message and "python3-libnvinfer" in message and "pip install tensorrt" in message


def test_require_here_raises_when_either_is_missing():
    if cuda_device_count() and tensorrt_version():
        pytest.skip("this machine has a GPU and TensorRT")
    with pytest.raises(EdgevoiceError) as err:
        require_tensorrt_and_gpu()
    assert "\n" not in str(err.value)


def test_trtexec_command_flags():
    cmd = trtexec_command(sample_spec(), trtexec="/usr/src/tensorrt/bin/trtexec")
    assert cmd.startswith("/usr/src/tensorrt/bin/trtexec --onnx=/models/encoder.onnx ")
    assert "--saveEngine='/engines/my encoder.plan'" in cmd
    assert "--stronglyTyped" in cmd
    assert "--minShapes=x:1x80,cache:1x4x8" in cmd
    assert "--optShapes=x:1x512,cache:1x4x8" in cmd
    assert "--maxShapes=x:1x1024,cache:1x4x8" in cmd
    assert "--memPoolSize=workspace:512M" in cmd
    assert "--builderOptimizationLevel=3" in cmd
    assert "--timingCacheFile=/cache/orin.cache" in cmd
    assert cmd.endswith("--skipInference")
    assert "DLA" not in cmd and "--fp16" not in cmd


def test_trtexec_command_minimal_and_dla():
    plain = trtexec_command(sample_spec(profiles=(), timing_cache_path=None))
    assert "Shapes" not in plain and "timingCache" not in plain
    dla = trtexec_command(sample_spec(dla_core=0, strongly_typed=False))
    assert "--useDLACore=0 --allowGPUFallback --fp16" in dla and "--stronglyTyped" not in dla


def test_spec_coerces_paths():
    spec = EngineBuildSpec(onnx_path="a.onnx", engine_path="a.plan", timing_cache_path="t.cache")
    assert isinstance(spec.onnx_path, Path) and isinstance(spec.timing_cache_path, Path)
    assert spec.strongly_typed and spec.dla_core is None


def one_layer_onnx(path: Path) -> None:
    w = numpy_helper.from_array(np.eye(8, dtype=np.float32), "w")
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["h"]), helper.make_node("Relu", ["h"], ["y"])], "one_layer",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["batch", 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["batch", 8])], initializer=[w])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by the parsers bundled with TensorRT 8.6 and 10.x
    onnx.save(model, str(path))


@pytest.mark.trt
def test_build_tiny_engine(tmp_path):
    if cuda_device_count() == 0:
        pytest.skip("needs TensorRT and a CUDA GPU: no CUDA GPU found")
    if tensorrt_version() is None:
        pytest.skip("needs TensorRT and a CUDA GPU: the tensorrt Python package is not installed")
    onnx_path = tmp_path / "one_layer.onnx"
    one_layer_onnx(onnx_path)
    spec = EngineBuildSpec(onnx_path=onnx_path, engine_path=tmp_path / "out" / "one_layer.plan",
                           profiles=({"x": ((1, 8), (2, 8), (4, 8))},), workspace_mb=256,
                           builder_optimization_level=0, timing_cache_path=tmp_path / "timing.cache")
    info = build_engine(spec)
    assert spec.engine_path.stat().st_size == info["engine_bytes"] > 0
    assert spec.timing_cache_path.is_file()
    assert info["tensorrt_version"] == tensorrt_version()
    assert info["compute_capability"] is None or "." in info["compute_capability"]
    # A second build reuses the timing cache it just wrote.
    assert build_engine(spec)["engine_bytes"] > 0
