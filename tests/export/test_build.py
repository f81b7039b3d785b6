"""`build_package`'s bookkeeping, with the TensorRT build itself replaced (it needs a GPU)."""

from __future__ import annotations

import dataclasses

import pytest

from edgevoice.errors import PackageError
from edgevoice.export import build as build_module
from edgevoice.export import export_package
from edgevoice.manifest import read_manifest, write_manifest


@pytest.fixture(scope="module")
def vad_package(tmp_path_factory):
    return export_package(model="silero-vad", target="jetson-orin", out=tmp_path_factory.mktemp("vad")).directory


def fake_build(spec):
    """What a real build leaves behind: the engine and the timing cache."""
    spec.engine_path.write_bytes(b"engine")
    spec.timing_cache_path.write_bytes(b"cache")
    return {"tensorrt_version": "10.3.0", "compute_capability": "8.7", "device_name": "Orin"}


def test_a_package_without_components_is_refused_with_the_fix(vad_package, monkeypatch):
    manifest = read_manifest(vad_package)
    write_manifest(dataclasses.replace(manifest, components={}))
    monkeypatch.setattr(build_module, "require_tensorrt_and_gpu", lambda: None)
    with pytest.raises(PackageError, match="has no components to build") as info:
        build_module.build_package(vad_package)
    assert "--model silero-vad" in str(info.value) and f"--out {vad_package}" in str(info.value)
    write_manifest(manifest)  # restore for the next test


def test_engines_and_the_timing_cache_are_recorded(vad_package, monkeypatch):
    monkeypatch.setattr(build_module, "require_tensorrt_and_gpu", lambda: None)
    monkeypatch.setattr(build_module, "build_engine", fake_build)
    seen = []
    built = build_module.build_package(vad_package, progress=seen.append)
    assert built.component("vad").engine.compute_capability == "8.7"
    precision = built.component("vad").precision  # the target's default: fp16 on the Orin
    assert precision == "fp16" and {f"vad.{precision}.plan", "timing.cache"} <= set(built.files)
    assert seen == ["vad: building TensorRT engine (this can take minutes)"]
