"""The command line as a user meets it: real subprocesses, exit codes, one-line errors."""

from __future__ import annotations

import json
from pathlib import Path
import subprocess
import sys

import numpy as np
import pytest
import soundfile

from edgevoice.export import export_package


def run(*args: str, cwd=None) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgevoice.cli.main", *args], capture_output=True, text=True, cwd=cwd, timeout=600)


def assert_user_error(result: subprocess.CompletedProcess, *needles: str) -> None:
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    for needle in needles:
        assert needle in lines[0], lines[0]


@pytest.fixture(scope="module")
def package(tmp_path_factory):
    return export_package(model="silero-vad", target="cpu", out=tmp_path_factory.mktemp("pkg")).directory


def wav(path, samples, rate):
    soundfile.write(str(path), samples, rate)
    return str(path)


def test_help_lists_commands():
    result = run("--help")
    assert result.returncode == 0
    for command in ("export", "build", "inspect", "vad", "doctor", "devices"):
        assert command in result.stdout


def test_export_inspect_vad(tmp_path, speech_16k):
    out = tmp_path / "vad"
    result = run("export", "--model", "silero-vad", "--target", "jetson-orin", "--out", str(out), "--precision", "fp32",
                 "--verify")
    assert result.returncode == 0, result.stderr
    assert "vad" in result.stdout and "10.3 OK" in result.stdout
    assert "op check vs TensorRT 10.3 ONNX parser support list: a static table" in result.stdout
    assert f"next: `edgevoice build {out}` on the target GPU" in result.stdout
    assert "vad: parity torch vs onnxruntime" in result.stderr  # stages are logged when not on a terminal
    described = json.loads(run("inspect", str(out), "--json").stdout)
    assert described["recipe"] == "silero-vad" and described["components"]["vad"]["opset"] == 20
    assert max(described["components"]["vad"]["parity"].values()) <= 1e-4
    segments = run("vad", wav(tmp_path / "s.wav", speech_16k, 16000), "--package", str(out), "--json")
    assert segments.returncode == 0, segments.stderr
    assert len(json.loads(segments.stdout)) >= 2


def test_export_user_errors(tmp_path):
    assert_user_error(run("export", "--model", "nope", "--out", str(tmp_path)), "unknown model 'nope'")
    assert_user_error(run("export", "--target", "jetson-tx2", "--out", str(tmp_path)), "unknown target", "jetson-orin-nano")
    blocker = tmp_path / "file"
    blocker.write_text("x")
    assert_user_error(run("export", "--out", str(blocker / "sub")), "cannot write to output directory")


def test_inspect_tampered_package(package, tmp_path):
    import shutil

    copy = tmp_path / "pkg"
    shutil.copytree(package, copy)
    data = bytearray((copy / "vad.onnx").read_bytes())
    data[500] ^= 0xFF
    (copy / "vad.onnx").write_bytes(bytes(data))
    assert_user_error(run("inspect", str(copy)), "vad.onnx", "sha256", "edgevoice export")


@pytest.mark.parametrize(
    "samples, rate, needle",
    [
        (np.zeros(16000, np.float32), 44100, "44100 Hz but the model takes 16000 Hz"),
        (np.zeros((16000, 2), np.float32), 16000, "2 channels"),
        (np.zeros(0, np.float32), 16000, "empty"),
    ],
)
def test_vad_bad_audio(package, tmp_path, samples, rate, needle):
    assert_user_error(run("vad", wav(tmp_path / "a.wav", samples, rate), "--package", str(package)), needle)


def test_vad_nan_audio(package, tmp_path):
    samples = np.zeros(16000, np.float32)
    samples[100] = np.nan
    path = tmp_path / "nan.wav"
    soundfile.write(str(path), samples, 16000, subtype="FLOAT")  # float WAV keeps the NaN
    assert_user_error(run("vad", str(path), "--package", str(package)), "NaN or infinite")


def test_vad_missing_file_and_bad_options(package, tmp_path):
    assert_user_error(run("vad", str(tmp_path / "none.wav"), "--package", str(package)), "not found")
    speech = wav(tmp_path / "z.wav", np.zeros(16000, np.float32), 16000)
    assert_user_error(run("vad", speech, "--package", str(package), "--threshold", "2"), "threshold")
    assert_user_error(run("vad", speech, "--package", str(tmp_path)), "not an engine package")


def test_build_without_gpu_is_one_line(package):
    from edgevoice.backends.cuda import cuda_device_count, tensorrt_version

    if cuda_device_count() and tensorrt_version():
        pytest.skip("this machine can build engines; the no-GPU message is not reachable here")
    assert_user_error(run("build", str(package)), "edgevoice build" if not cuda_device_count() else "TensorRT")


def test_doctor_json():
    result = run("doctor", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    assert "CPUExecutionProvider" in report["onnxruntime"]["providers"]
    assert report["python"].count(".") == 2
    assert run("doctor").returncode == 0


def test_devices_runs():
    # CI machines have PortAudio but no sound card: the command must still answer, not crash.
    result = run("devices", "--json")
    if result.returncode == 0:
        assert isinstance(json.loads(result.stdout), list)
    else:
        assert_user_error(result, "PortAudio")


def test_talk_refuses_a_package_it_cannot_run(package, tmp_path):
    """A package of another recipe, or engines for a backend this machine lacks: one line, exit 1."""
    question = str(Path(__file__).resolve().parents[1] / "examples" / "question.wav")
    other = run("talk", "--package", str(package), "--input", question, "--output", str(tmp_path / "r.wav"))
    assert_user_error(other, "holds recipe 'silero-vad'")
    trt = run("talk", "--package", str(package), "--backend", "trt", "--input", question, "--output", str(tmp_path / "r.wav"))
    assert_user_error(trt)
