"""Shared fixtures: real speech from espeak-ng, the shared fixtures folder, isolated caches."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED_FIXTURES = REPO.parent / "shared" / "fixtures"


@pytest.fixture(autouse=True, scope="session")
def _isolated_caches(tmp_path_factory):
    # onnxruntime and espeak-ng write under ~/.cache and ~/.config; keep test runs out of $HOME.
    mp = pytest.MonkeyPatch()
    mp.setenv("XDG_CACHE_HOME", str(tmp_path_factory.mktemp("cache")))
    yield
    mp.undo()


def espeak(text: str, sample_rate: int = 16000) -> np.ndarray:
    """``text`` spoken by espeak-ng, resampled by sox to ``sample_rate``, as float32 mono."""
    import soundfile

    for tool in ("espeak-ng", "sox"):
        if shutil.which(tool) is None:
            raise RuntimeError(f"{tool} is needed for speech fixtures: sudo apt install espeak-ng sox")
    raw = subprocess.run(["espeak-ng", "-v", "en-us", "--stdout", text], check=True, capture_output=True).stdout
    wav = subprocess.run(
        ["sox", "-t", "wav", "-", "-t", "wav", "-r", str(sample_rate), "-c", "1", "-b", "16", "-"],
        input=raw, check=True, capture_output=True,
    ).stdout
    import io

    samples, rate = soundfile.read(io.BytesIO(wav), dtype="float32")
    assert rate == sample_rate
    return samples


def room_response(delay_seconds: float, seed: int = 1, gain: float = 0.5) -> np.ndarray:
    """A speaker-to-mic path at 16 kHz: ``delay_seconds`` of silence, then a 100 ms room (random
    taps under a 20 ms exponential decay) with ``gain`` as its energy."""
    rng = np.random.default_rng(seed)
    taps = int(0.1 * 16000)
    response = rng.standard_normal(taps) * np.exp(-np.arange(taps) / (0.02 * 16000))
    response *= gain / np.sqrt(np.sum(response**2))
    return np.concatenate([np.zeros(int(delay_seconds * 16000)), response]).astype(np.float32)


@pytest.fixture(scope="session")
def speech_16k() -> np.ndarray:
    """About 6 s: silence, two spoken sentences with a pause, silence."""
    silence = np.zeros(8000, dtype=np.float32)
    a = espeak("The quick brown fox jumps over the lazy dog.")
    b = espeak("Please turn on the kitchen lights.")
    return np.concatenate([silence, a, silence, silence, b, silence])


@pytest.fixture(scope="session")
def fixture_recording() -> tuple[np.ndarray, int]:
    """The recording in the shared fixtures (16 kHz mono)."""
    import soundfile

    path = SHARED_FIXTURES / "freeze_omni_small" / "input.wav"
    samples, rate = soundfile.read(str(path), dtype="float32")
    return samples, rate


@pytest.fixture(scope="session")
def cascade_package():
    """The cascade exported for the CPU target where the README's main command puts it.

    After the README's command (CI runs it first) the package is up to date and kept as it is;
    on a fresh checkout this exports it (a few minutes).
    """
    from edgevoice.export import export_package

    return export_package(model="cascade", target="cpu", out=REPO / "engines" / "cpu")


@pytest.fixture(scope="session")
def cpu_conversation(cascade_package, tmp_path_factory) -> dict:
    """`edgevoice talk --input examples/conversation.wav` on the CPU package, run once for every test
    that reads it: the ``--json`` report, and the paths of what it said and its events."""
    import json
    import sys

    out = tmp_path_factory.mktemp("cpu_conversation")
    said, events = out / "said.wav", out / "events.jsonl"
    cmd = [sys.executable, "-m", "edgevoice.cli.main", "talk", "--package", str(cascade_package.directory),
           "--input", str(REPO / "examples" / "conversation.wav"), "--output", str(said), "--events", str(events),
           "--json"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=900, check=False)
    assert result.returncode == 0, result.stderr
    return {"report": json.loads(result.stdout), "said": said, "events": events}


@pytest.fixture(scope="session")
def tiny_package():
    """The `tiny` package where `edgevoice export --model tiny --target cpu` puts it (about 1 min the
    first time). A package from before the recipe gained its Silero VAD gate or the server's
    first-packet plan is exported again."""
    from edgevoice.export import export_package

    from edgevoice.manifest import read_manifest

    out = REPO / "engines" / "tiny-cpu"
    try:
        manifest = read_manifest(out)
        stale = "vad" not in manifest.components or "live" not in manifest.config.get("codec", {})
    except Exception:  # noqa: BLE001 - missing or broken: export_package reports what it does
        stale = False
    return export_package(model="tiny", target="cpu", out=out, force=stale)


def seal_package(component, out: Path, recipe: str) -> Path:
    """A one-component engine package around an imported component already written into ``out``."""
    from edgevoice.manifest import SCHEMA_VERSION, Manifest, file_record, write_manifest

    entry = component.manifest_entry()
    manifest = Manifest(
        schema_version=SCHEMA_VERSION, edgevoice_version="test", recipe=recipe, config={}, target={"name": "cpu"},
        export_command=f"pytest ({recipe})", components={entry.name: entry},
        files={name: file_record(out / name) for name in (entry.onnx, *entry.files)}, directory=out,
    )
    write_manifest(manifest)
    return out
