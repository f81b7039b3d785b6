"""Package verification: one changed byte anywhere, a missing file or component, a foreign schema
or recipe, and mismatched engines are each refused with a message naming the file and the fix."""

from __future__ import annotations

import dataclasses
import json
import shutil

import pytest

from edgevoice.errors import PackageError
from edgevoice.export import export_package
from edgevoice.manifest import EngineInfo, check_engine, read_manifest, recreate_command, write_manifest


@pytest.fixture(scope="module")
def pristine(tmp_path_factory):
    return export_package(model="silero-vad", target="cpu", out=tmp_path_factory.mktemp("pristine")).directory


@pytest.fixture
def package(pristine, tmp_path):
    copy = tmp_path / "pkg"
    shutil.copytree(pristine, copy)
    return copy


def flip_byte(path, offset):
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name", ["vad.onnx", "build.sh", "manifest.json"])
@pytest.mark.parametrize("where", [0, 101, -2])
def test_one_changed_byte_is_refused(package, name, where):
    flip_byte(package / name, where)
    with pytest.raises(PackageError, match=r"(vad\.onnx|build\.sh|manifest\.json).*(re-run|re-create)"):
        read_manifest(package)


def test_error_names_the_file_and_the_export_command(package):
    flip_byte(package / "vad.onnx", 1000)
    with pytest.raises(PackageError) as info:
        read_manifest(package)
    message = str(info.value)
    assert str(package / "vad.onnx") in message
    assert "edgevoice export --model silero-vad --target cpu" in message
    assert "\n" not in message


def test_truncated_file(package):
    path = package / "vad.onnx"
    path.write_bytes(path.read_bytes()[:-10])
    with pytest.raises(PackageError, match="truncated"):
        read_manifest(package)


def test_missing_file(package):
    (package / "vad.onnx").unlink()
    with pytest.raises(PackageError, match="vad.onnx is missing"):
        read_manifest(package)


def test_missing_component(package):
    manifest = read_manifest(package)
    with pytest.raises(PackageError, match="no component 'encoder'.*it has: vad"):
        manifest.require_components(["vad", "encoder"])


def test_unknown_schema_version(package):
    manifest = read_manifest(package)
    text = manifest.to_json().replace('"schema_version": 1', '"schema_version": 99')
    (package / "manifest.json").write_text(text)
    _rehash(package)
    with pytest.raises(PackageError, match="schema version 99 is not supported"):
        read_manifest(package)


def test_other_recipe(package):
    with pytest.raises(PackageError, match="holds recipe 'silero-vad', not 'cascade'"):
        read_manifest(package, recipe="cascade")


def test_not_a_package(tmp_path):
    with pytest.raises(PackageError, match="not an engine package.*edgevoice export"):
        read_manifest(tmp_path)


def test_garbage_manifest(package):
    (package / "manifest.json").write_text("{not json")
    with pytest.raises(PackageError, match="not valid JSON"):
        read_manifest(package)


def test_rewritten_manifest_verifies(package):
    manifest = read_manifest(package)
    write_manifest(manifest)
    assert read_manifest(package).components == manifest.components


def test_engine_checks(package):
    manifest = read_manifest(package)
    vad = manifest.component("vad")
    fix = f"edgevoice build {package}"
    with pytest.raises(PackageError, match="no TensorRT engine yet"):
        check_engine(vad, "10.3.0", "8.7", fix)
    built = dataclasses.replace(vad, engine=EngineInfo("vad.fp16.plan", "10.3.0.30", "8.7", "Orin"))
    check_engine(built, "10.3.0", "8.7", fix)
    with pytest.raises(PackageError, match="built with TensorRT 10.3.0.30 but this machine has TensorRT 11.4.0"):
        check_engine(built, "11.4.0", "8.7", fix)
    with pytest.raises(PackageError, match="compute capability 8.7 .* this GPU is 8.9; rebuild it here with `edgevoice build"):
        check_engine(built, "10.3.1", "8.9", fix)


def _rehash(package):
    """Re-seal a hand-edited manifest so only the edit under test is wrong."""
    import hashlib

    path = package / "manifest.json"
    data = json.loads(path.read_text())
    text = path.read_text().replace(data["manifest_sha256"], "0" * 64)
    path.write_text(text.replace("0" * 64, hashlib.sha256(text.encode()).hexdigest(), 1))


def test_fix_command_names_the_directory_the_user_passed(package, pristine):
    """A copied package's fix-it command re-exports into the copy, not the folder it came from."""
    flip_byte(package / "vad.onnx", 1000)
    with pytest.raises(PackageError) as info:
        read_manifest(package)
    message = str(info.value)
    assert f"--out {package}" in message and f"--out {pristine}" not in message
    assert "--model silero-vad" in message


def test_fix_command_of_a_manifest_that_is_not_json(package):
    path = package / "manifest.json"
    path.write_text(path.read_text()[:-40])  # cut mid-object: no longer JSON, the recipe still readable
    with pytest.raises(PackageError, match="not valid JSON") as info:
        read_manifest(package)
    assert f"edgevoice export --model silero-vad --out {package}" in str(info.value)


def test_recreate_command_keeps_options_and_fills_in_model_and_out():
    recorded = "edgevoice export --model cascade --target cpu --out /old/place --precision fp32 --verify"
    assert recreate_command(recorded, "cascade", "engines/cpu") == (
        "edgevoice export --model cascade --target cpu --out engines/cpu --precision fp32 --verify")
    assert recreate_command(None, "tiny", "pkg") == "edgevoice export --model tiny --out pkg"
    assert recreate_command("edgevoice export --out", None, "my dir") == "edgevoice export --model MODEL --out 'my dir'"
