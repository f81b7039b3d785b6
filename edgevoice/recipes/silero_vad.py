"""The `silero-vad` recipe: one component, Silero VAD v6, weights from the silero-vad package."""

from __future__ import annotations

import numpy as np
import torch

from edgevoice.models.vad import SileroVad, VadConfig
from edgevoice.recipes.base import Recipe, RecipeComponent, UpstreamCheck
from edgevoice.weights.packages import package_file
from edgevoice.weights.strict import load_state_strict
from edgevoice.weights.torchscript import load_torchscript, read_torchscript_state

REQUIREMENT = "silero-vad==6.2.3"
LICENSE = "MIT (Silero VAD 6.2.3, snakers4/silero-vad)"
VERIFY_SECONDS = 4.0  # of generated speech-like audio streamed by --verify


def silero_jit_path():
    # The TorchScript file, not the bundled .safetensors: that one holds another revision.
    return package_file("silero_vad", "data/silero_vad.jit", REQUIREMENT)


def build_silero_vad(sample_rate: int = 16000) -> SileroVad:
    """Silero VAD at 16 or 8 kHz with the upstream TorchScript weights, in eval mode."""
    model = SileroVad(VadConfig(sample_rate=sample_rate))
    prefix = "_model." if sample_rate == 16000 else "_model_8k."
    path = silero_jit_path()
    load_state_strict(model, read_torchscript_state(path, prefix), source=f"{path.name} [{prefix}]")
    return model.eval()


def upstream_probabilities(audio: np.ndarray, sample_rate: int = 16000) -> np.ndarray:
    """Speech probability per chunk from the package's own TorchScript model, streamed chunk by chunk."""
    upstream = load_torchscript(silero_jit_path())
    upstream.reset_states()
    chunk = VadConfig(sample_rate=sample_rate).chunk_samples
    x = torch.from_numpy(np.ascontiguousarray(audio, dtype=np.float32))
    with torch.no_grad():
        probs = [upstream(x[i : i + chunk].unsqueeze(0), sample_rate).item() for i in range(0, len(x) - chunk + 1, chunk)]
    return np.asarray(probs, dtype=np.float32)


def voiced_test_signal(seconds: float, sample_rate: int = 16000, seed: int = 0) -> np.ndarray:
    """Deterministic speech-like audio: noise, then a pitch-gliding harmonic 'vowel', then noise.

    Used where no recording is at hand (export --verify); the tests also use real speech.
    """
    rng = np.random.default_rng(seed)
    n = int(seconds * sample_rate)
    t = np.arange(n) / sample_rate
    pitch = 120 + 40 * np.sin(2 * np.pi * 0.7 * t)
    phase = 2 * np.pi * np.cumsum(pitch) / sample_rate
    voice = sum(np.sin(k * phase) / k for k in range(1, 12)) * (0.5 + 0.5 * np.sin(2 * np.pi * 3 * t))
    envelope = ((t > 0.25 * seconds) & (t < 0.75 * seconds)).astype(np.float64)
    audio = 0.25 * voice * envelope + 0.01 * rng.standard_normal(n)
    return audio.astype(np.float32)


def recipe(sample_rate: int = 16000) -> Recipe:
    model = build_silero_vad(sample_rate)
    chunk = model.config.chunk_samples
    verify_audio = voiced_test_signal(VERIFY_SECONDS, sample_rate)

    def parity_feeds() -> list[dict[str, np.ndarray]]:
        usable = len(verify_audio) - len(verify_audio) % chunk
        return [{"chunk": c[None]} for c in verify_audio[:usable].reshape(-1, chunk)]

    def upstream_check() -> dict[str, float]:
        ours = model.streamer()
        feeds = parity_feeds()
        with torch.no_grad():
            probs = np.array([ours(torch.from_numpy(f["chunk"])).item() for f in feeds])
        return {"prob_max_abs": float(np.max(np.abs(probs - upstream_probabilities(verify_audio, sample_rate))))}

    component = RecipeComponent(
        name="vad",
        module=model,
        stream={"sample_rate": sample_rate, "chunk_samples": chunk, "context_samples": model.config.context_samples},
        license=LICENSE,
        parity_feeds=parity_feeds,
    )
    check = UpstreamCheck(f"{REQUIREMENT}'s own TorchScript model, same weights", upstream_check,
                          {"prob_max_abs": 1e-4})
    return Recipe(name="silero-vad", components=[component], config={"sample_rate": sample_rate},
                  upstream={"vad": check})
