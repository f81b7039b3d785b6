"""The `silero-vad` package at run time: PCM in, speech probabilities and segments out."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from edgevoice.audio.wav import validate_pcm
from edgevoice.backends import open_runner
from edgevoice.manifest import Manifest, read_manifest
from edgevoice.runtime.segments import SpeechSegment, VadOptions, speech_segments

RECIPE = "silero-vad"
COMPONENT = "vad"


class VadPipeline:
    """Loads and verifies a VAD package once; ``stream()`` gives per-session state."""

    def __init__(self, package: str | Path | Manifest, backend: str = "ort", device: str = "cpu"):
        self.manifest = package if isinstance(package, Manifest) else read_manifest(package, recipe=RECIPE)
        self.manifest.require_components([COMPONENT])
        self.runner = open_runner(self.manifest, COMPONENT, backend=backend, device=device)
        stream = self.manifest.component(COMPONENT).stream
        self.sample_rate: int = stream["sample_rate"]
        self.chunk_samples: int = stream["chunk_samples"]
        self.input_name = self.manifest.component(COMPONENT).inputs[0].name
        self.output_name = self.manifest.component(COMPONENT).outputs[0].name

    @property
    def chunk_seconds(self) -> float:
        return self.chunk_samples / self.sample_rate

    def probabilities(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        """Speech probability of each whole chunk of mono ``audio`` (a trailing partial chunk is zero-padded)."""
        pcm = validate_pcm(audio, sample_rate, self.sample_rate)
        pad = (-len(pcm)) % self.chunk_samples
        chunks = np.pad(pcm, (0, pad)).reshape(-1, self.chunk_samples)
        stream = self.runner.stream(1)
        probs = [stream({self.input_name: chunk[None]})[self.output_name].item() for chunk in chunks]
        return np.asarray(probs, dtype=np.float32)

    def segments(self, audio: np.ndarray, sample_rate: int, options: VadOptions = VadOptions()) -> list[SpeechSegment]:
        return speech_segments(self.probabilities(audio, sample_rate), self.chunk_seconds, options)
