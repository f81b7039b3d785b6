"""`edgevoice serve --backend trt`: what it checks before loading anything, and its session cap.

The TensorRT path itself needs a GPU and TensorRT; here only the refusals and the bookkeeping run.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pytest
from edgevoice.cli.serve_cmd import DEFAULT_MAX_SESSIONS, session_cap
from edgevoice.export import export_package

from edgevoice.errors import EdgevoiceError
from edgevoice.manifest import EngineInfo, file_record, read_manifest, write_manifest
from edgevoice.serve import server as server_module
from edgevoice.serve.server import Server, check_backend


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    """A small package (Silero VAD): the checks read its manifest and must fail before any engine loads."""
    return export_package(model="silero-vad", target="cpu", out=tmp_path_factory.mktemp("vad")).directory


def serve(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgevoice.cli.main", "serve", *args],
                          capture_output=True, text=True, timeout=300, check=False)


def test_serve_backend_trt_without_tensorrt_fails_in_one_line(package):
    result = serve("--package", str(package), "--backend", "trt")
    assert result.returncode == 1, result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: --backend trt needs "), result.stderr
    assert "Traceback" not in result.stderr + result.stdout and "loading" not in result.stdout
    # Unbuilt engines are missing on every machine; TensorRT and a GPU only where they are absent.
    assert "TensorRT engines for vad" in lines[0] and "edgevoice build" in lines[0] and "--backend ort" in lines[0]


def test_only_what_is_missing_is_named(package, monkeypatch):
    """A GPU machine with cuda-python but no TensorRT hears about TensorRT and the engines, nothing else."""
    monkeypatch.setattr("edgevoice.backends.cuda.cuda_device_count", lambda: 1)
    monkeypatch.setattr(server_module, "_importable", lambda module: module != "tensorrt")
    with pytest.raises(EdgevoiceError) as raised:
        check_backend("trt", package)
    message = str(raised.value)
    assert "TensorRT (the tensorrt Python package" in message and "python3-libnvinfer" in message
    assert "GPU" not in message and "cuda-python" not in message and "\n" not in message
    monkeypatch.setattr(server_module, "_importable", lambda module: False)
    with pytest.raises(EdgevoiceError, match="cuda-python"):
        check_backend("trt", package)


def test_the_server_refuses_before_loading_and_other_backends_are_named(package):
    # A VAD package is not one serve runs: reaching the load would fail with another message.
    with pytest.raises(EdgevoiceError, match="^--backend trt needs "):
        Server(package, backend="trt")
    with pytest.raises(EdgevoiceError, match="choose ort or trt"):
        check_backend("torch", package)
    assert check_backend("ort", package) == "ort"


def with_built_engine(directory, held: int):
    """The package as `edgevoice build` leaves it: an engine per component, the sessions held recorded."""
    manifest = read_manifest(directory)
    components, files = {}, dict(manifest.files)
    for name, component in manifest.components.items():
        engine = directory / f"{name}.fp32.plan"
        engine.write_bytes(b"engine")
        files[engine.name] = file_record(engine)
        components[name] = dataclasses.replace(component, engine=EngineInfo(
            file=engine.name, tensorrt_version="10.3.0", compute_capability="8.7", device_name="Orin",
            build_flags={"batch": [1, 1, 2], "sessions_held": held}))
    write_manifest(dataclasses.replace(manifest, components=components, files=files))
    return read_manifest(directory)


def test_max_sessions_comes_from_the_built_range_where_it_is_smaller(package, tmp_path):
    import shutil

    built = tmp_path / "built"
    shutil.copytree(package, built)
    assert read_manifest(built).sessions_held is None
    assert session_cap(built, "trt", None) == DEFAULT_MAX_SESSIONS  # nothing recorded: the default
    assert with_built_engine(built, held=2).sessions_held == 2
    assert session_cap(built, "trt", None) == 2 and session_cap(built, "trt", 1) == 1
    with pytest.raises(EdgevoiceError, match="--max-sessions 3 is more than the 2 conversations"):
        session_cap(built, "trt", 3)
    assert session_cap(built, "ort", None) == DEFAULT_MAX_SESSIONS  # onnxruntime keeps sessions in host memory
    with_built_engine(built, held=40)
    assert session_cap(built, "trt", None) == DEFAULT_MAX_SESSIONS and session_cap(built, "trt", 40) == 40
