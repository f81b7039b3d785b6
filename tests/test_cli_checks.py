"""Fast CLI checks in-process (typer's CliRunner): bad input is refused before any engine loads,
and long commands report their stages where a user or a log can see them."""

from __future__ import annotations

import re
import time
from pathlib import Path

import numpy as np
import pytest
import soundfile
from typer.testing import CliRunner

from edgevoice.cli.main import app
from edgevoice.errors import EdgevoiceError
from edgevoice.manifest import Manifest

QUESTION = str(Path(__file__).resolve().parents[1] / "examples" / "question.wav")


@pytest.fixture
def no_engines(monkeypatch):
    """Fail the test if talk gets as far as loading engines."""
    import edgevoice.runtime.agent as agent_module

    def refuse(*args, **kwargs):
        raise AssertionError("talk loaded engines before validating its input")

    monkeypatch.setattr(agent_module, "Agent", refuse)


def talk(*args: str):
    start = time.monotonic()
    result = CliRunner().invoke(app, ["talk", "--package", "engines/cpu", *args])
    return result, time.monotonic() - start


def assert_one_line_error(result, *needles: str) -> None:
    assert isinstance(result.exception, EdgevoiceError), result.exception
    message = str(result.exception)
    assert "\n" not in message
    for needle in needles:
        assert needle in message, message


def test_missing_output_folder_fails_at_once(no_engines):
    result, elapsed = talk("--input", QUESTION, "--output", "/missing/dir/o.wav")
    assert_one_line_error(result, "/missing/dir", "does not exist", "--output")
    assert elapsed < 1.0


def test_truncated_wav_is_one_line(no_engines, tmp_path):
    path = tmp_path / "cut.wav"
    soundfile.write(str(path), np.zeros(16000, np.float32), 16000, subtype="PCM_16")
    path.write_bytes(path.read_bytes()[:16000])  # the header still promises one second
    result, _ = talk("--input", str(path), "--output", str(tmp_path / "o.wav"))
    assert_one_line_error(result, "truncated", "1.00 s", "0.50 s")


def test_samples_far_outside_full_scale_are_refused(no_engines, tmp_path):
    path = tmp_path / "loud.wav"
    soundfile.write(str(path), np.full(16000, 300.0, np.float32), 16000, subtype="FLOAT")  # int values as float
    result, _ = talk("--input", str(path), "--output", str(tmp_path / "o.wav"))
    assert_one_line_error(result, "peaks at 300", "[-1, 1]")


@pytest.mark.parametrize("args, needles", [
    (["--input", "nowhere.wav", "--output", "o.wav"], ["nowhere.wav", "not found"]),
    (["--input", QUESTION, "--output", "{tmp}"], ["is a directory"]),
    (["--input", QUESTION, "--output", "{tmp}/o.xyz"], ["unknown audio format"]),
    (["--input", QUESTION, "--output", "{tmp}/o.wav", "--events", "/missing/e.jsonl"], ["--events", "does not exist"]),
    (["--input", QUESTION, "--output", "{tmp}/o.wav", "--device", "tpu"], ["--device tpu"]),
    (["--input", QUESTION, "--output", "{tmp}/o.wav", "--backend", "torch"], ["--backend torch"]),
])
def test_bad_options_are_refused_before_engines_load(no_engines, tmp_path, args, needles):
    result, _ = talk(*[a.format(tmp=tmp_path) for a in args])
    assert_one_line_error(result, *needles)


def test_cuda_without_a_gpu_is_refused_before_engines_load(no_engines, tmp_path):
    from edgevoice.backends.cuda import cuda_device_count

    if cuda_device_count():
        pytest.skip("this machine has a GPU")
    result, _ = talk("--input", QUESTION, "--output", str(tmp_path / "o.wav"), "--device", "cuda")
    assert_one_line_error(result, "--device cuda needs an NVIDIA GPU", "--backend ort --device cpu")


# --- export: stages and the closing hint ----------------------------------------------------


def fake_export(target_trt: str | None, recipe: str = "cascade"):
    def export_package(model, target, out, progress=None, **_):
        for stage in ("loading cascade weights", "vad: exporting ONNX (fp32)",
                      "vad: op check vs TensorRT ONNX parser support list", "vad: parity torch vs onnxruntime"):
            progress(stage)
        return Manifest(schema_version=1, edgevoice_version="0", recipe=recipe, config={},
                        target={"name": target, "tensorrt_version": target_trt}, export_command="",
                        components={}, files={}, directory=Path(out))

    return export_package


def run_export(monkeypatch, tmp_path, target: str, trt: str | None, model: str = "cascade"):
    import edgevoice.export

    monkeypatch.setattr(edgevoice.export, "export_package", fake_export(trt, model))
    result = CliRunner().invoke(app, ["export", "--model", model, "--target", target, "--out", str(tmp_path / "pkg")])
    assert result.exit_code == 0, result.output
    return result


def test_export_prints_timestamped_stages_without_a_terminal(monkeypatch, tmp_path):
    result = run_export(monkeypatch, tmp_path, "cpu", None)
    lines = result.stderr.splitlines()
    assert len(lines) == 4
    for line, stage in zip(lines, ("loading cascade weights", "vad: exporting ONNX", "vad: op check vs TensorRT",
                                   "vad: parity torch vs onnxruntime")):
        assert re.match(r"\d\d:\d\d:\d\d \+\d+\.\ds ", line) and stage in line, line


def test_export_hint_fits_the_target(monkeypatch, tmp_path):
    cpu = run_export(monkeypatch, tmp_path, "cpu", None).stdout
    assert f"ready for `edgevoice talk --package {tmp_path / 'pkg'}`" in cpu and "edgevoice build" not in cpu
    gpu = run_export(monkeypatch, tmp_path, "jetson-orin", "10.3").stdout
    assert f"next: `edgevoice build {tmp_path / 'pkg'}` on the target GPU" in gpu
    vad = run_export(monkeypatch, tmp_path, "cpu", None, model="silero-vad").stdout
    assert "ready for `edgevoice vad AUDIO --package" in vad
