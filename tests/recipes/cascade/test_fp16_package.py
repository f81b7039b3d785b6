"""The cascade as a Jetson user exports it: fp16 by the target's default, every graph through the
TensorRT 10.3 op check, and a whole recorded conversation through it on onnxruntime's CPU provider
with the same words as the fp32 CPU package.

TensorRT is not on this machine, so the engines themselves are never built here; onnxruntime runs
the fp16 graphs as they are, which is what ``edgevoice build`` hands TensorRT.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from edgevoice.manifest import read_manifest

REPO = Path(__file__).resolve().parents[3]
CONVERSATION = REPO / "examples" / "conversation.wav"
VOICE_STAYS_FP32 = {"tts"}  # Piper's imported graph: its fp16 conversion is not validated (README)


def edgevoice(*args: str) -> subprocess.CompletedProcess:
    result = subprocess.run([sys.executable, "-m", "edgevoice.cli.main", *args], check=False,
                            capture_output=True, text=True, cwd=REPO, timeout=900)
    assert result.returncode == 0, f"edgevoice {' '.join(args)} failed:\n{result.stderr[-3000:]}"
    return result


def talk(package: Path, out: Path) -> dict:
    """`edgevoice talk` through the recorded conversation on onnxruntime CPU, its --json report."""
    said = out / f"{package.name}_said.wav"
    result = edgevoice("talk", "--package", str(package), "--input", str(CONVERSATION), "--output", str(said),
                       "--json", "--backend", "ort", "--device", "cpu")
    return json.loads(result.stdout)


@pytest.fixture(scope="module")
def jetson_package(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("jetson") / "pkg"
    edgevoice("export", "--model", "cascade", "--target", "jetson-orin", "--out", str(out))
    return out


def test_the_jetson_export_is_fp16_and_passes_the_op_check(jetson_package):
    manifest = read_manifest(jetson_package)
    assert manifest.target["tensorrt_version"] == "10.3"
    precisions = {name: c.precision for name, c in manifest.components.items()}
    assert {name for name, p in precisions.items() if p == "fp32"} == VOICE_STAYS_FP32, precisions
    assert all(p == "fp16" for name, p in precisions.items() if name not in VOICE_STAYS_FP32), precisions
    for name, component in manifest.components.items():
        assert ": OK" in component.trt_check["10.3"], (name, component.trt_check)


def test_the_fp16_package_holds_the_same_conversation_as_the_cpu_one(jetson_package, cpu_conversation, tmp_path):
    fp16, fp32 = talk(jetson_package, tmp_path), cpu_conversation["report"]
    assert len(fp32["turns"]) == 3, fp32["turns"]  # the recording: a question, a barge-in, a new question
    assert [t["transcript"] for t in fp16["turns"]] == [t["transcript"] for t in fp32["turns"]]
    assert [t["interrupted"] for t in fp16["turns"]] == [t["interrupted"] for t in fp32["turns"]]
    # Greedy decoding in fp16 may part from fp32 late in a long reply; the first sentence is what
    # the user hears first and must not change.
    first_sentence = [t["reply"].split(".")[0] for t in fp16["turns"]]
    assert first_sentence == [t["reply"].split(".")[0] for t in fp32["turns"]]
    assert all(t["reply"].strip() for t in fp16["turns"])
    assert fp16["summary"]["nonfinite_samples"] == 0
