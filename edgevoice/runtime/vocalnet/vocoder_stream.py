"""Streaming HiFT vocoding on the host: the mel/source/speech cache and the cross-fade between chunks.

Mirrors ``CosyVoice2Model.token2wav`` in VocalNet's bundled ``cosyvoice/cli/model.py`` (the path
``tts_direct_update(stream=True)`` in ``omni_speech/infer/vocalnet_streaming.py`` drives):

* each call vocodes the cached last ``mel_cache_frames`` mel frames of the previous call followed
  by the new frames;
* the excitation of the previous call's last ``mel_cache_frames`` frames is pasted over the start
  of the new excitation (the sine phases restart every call, so this avoids a glitch);
* the first ``source_cache_samples`` output samples are cross-faded (Hamming window of twice that
  length) with the previous call's held-back tail, and a non-final call holds back its own last
  ``source_cache_samples`` samples for the next call.

The neural parts are two graphs (``HiftSourceStep``: mel -> F0, excitation; ``HiftDecodeStep``:
mel, excitation -> audio). The random sine phases and Gaussian noise that the reference draws
inside the model come from a seeded numpy generator here. numpy only: no torch on this path.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Protocol

import numpy as np

from edgevoice.errors import EdgevoiceError


@dataclass(frozen=True)
class HiftStreamConfig:
    """Cache sizes (CosyVoice2Model: 8 mel frames) and the vocoder's frame geometry."""

    mel_cache_frames: int = 8
    samples_per_frame: int = 480
    harmonics: int = 9

    @property
    def source_cache_samples(self) -> int:
        return self.mel_cache_frames * self.samples_per_frame


class HiftGraphs(Protocol):
    """The two vocoder graphs, on numpy arrays (batch 1)."""

    def source(self, mel: np.ndarray, phase: np.ndarray, noise: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """mel [1, M, T], phase [1, H], noise [1, H, T*P] -> (f0 [1, T], excitation [1, 1, T*P])."""
        ...

    def decode(self, mel: np.ndarray, source: np.ndarray) -> np.ndarray:
        """mel [1, M, T], excitation [1, 1, T*P] -> audio [1, T*P]."""
        ...


# mel [1, M, T] -> (f0 [1, T], excitation [1, 1, T*P]); replaceable to feed a recorded excitation.
SourceFn = Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class HiftCache:
    """What one call leaves for the next: its last mel frames, their excitation, its held-back audio."""

    mel: np.ndarray  # [1, M, mel_cache_frames]
    source: np.ndarray  # [1, 1, source_cache_samples]
    speech: np.ndarray  # [source_cache_samples]


@dataclass(frozen=True)
class HiftCall:
    """What the last call fed the graphs and returned (for inspection and tests)."""

    mel: np.ndarray  # [1, M, T]: cached frames then new frames
    f0: np.ndarray  # [1, T]
    source: np.ndarray  # [1, 1, T*P], cached excitation already pasted in
    audio: np.ndarray  # [n]: the samples this call yielded


class HiftStream:
    """One utterance's streaming vocoder state; ``push`` mel chunks, get audio chunks."""

    def __init__(
        self,
        graphs: HiftGraphs,
        config: HiftStreamConfig = HiftStreamConfig(),
        seed: int = 0,
        source_fn: SourceFn | None = None,
    ) -> None:
        self.graphs = graphs
        self.config = config
        self.rng = np.random.default_rng(seed)
        self.source_fn = source_fn or self._generated_source
        window = np.hamming(2 * config.source_cache_samples)  # float64, as the reference's window
        self._fade_in, self._fade_out = window[: config.source_cache_samples], window[config.source_cache_samples :]
        self.cache: HiftCache | None = None
        self.last_call: HiftCall | None = None

    def reset(self) -> None:
        """Forget the previous chunk (start of a new utterance, or after a barge-in)."""
        self.cache = None
        self.last_call = None

    def snapshot(self) -> HiftCache | None:
        """The state to restore later (the arrays are never modified in place)."""
        return self.cache

    def restore(self, cache: HiftCache | None) -> None:
        self.cache = cache

    def draw_randomness(self, frames: int) -> tuple[np.ndarray, np.ndarray]:
        """SineGen's random inputs: phases U(-π, π) with the fundamental's at 0, and N(0, 1) noise."""
        cfg = self.config
        phase = self.rng.uniform(-np.pi, np.pi, size=(1, cfg.harmonics)).astype(np.float32)
        phase[:, 0] = 0.0
        noise = self.rng.standard_normal((1, cfg.harmonics, frames * cfg.samples_per_frame), dtype=np.float32)
        return phase, noise

    def push(self, mel: np.ndarray, final: bool) -> np.ndarray:
        """Vocode new mel frames ([M, T] or [1, M, T]); returns the float32 audio this chunk yields.

        A final call returns everything it made and clears the cache.
        """
        cfg, cache = self.config, self.cache
        mel = np.asarray(mel, dtype=np.float32)
        mel = mel[None] if mel.ndim == 2 else mel
        if cache is not None:
            mel = np.concatenate([cache.mel, mel], axis=2)
        f0, source = self.source_fn(mel)
        source = np.array(source, dtype=np.float32)  # a copy: the cache is pasted into it
        if cache is not None:
            source[..., : cache.source.shape[-1]] = cache.source
        audio = np.asarray(self.graphs.decode(mel, source), dtype=np.float32).reshape(-1)
        if cache is not None:
            audio = self._cross_fade(audio, cache.speech)
        if final:
            self.cache, out = None, audio
        else:
            keep = cfg.source_cache_samples
            self.cache = HiftCache(mel[..., -cfg.mel_cache_frames :], source[..., -keep:], audio[-keep:])
            out = audio[:-keep]
        self.last_call = HiftCall(mel, np.asarray(f0), source, out)
        return out

    def _generated_source(self, mel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        phase, noise = self.draw_randomness(mel.shape[-1])
        return self.graphs.source(mel, phase, noise)

    def _cross_fade(self, audio: np.ndarray, previous_tail: np.ndarray) -> np.ndarray:
        """Fade the previous chunk's held-back tail out while this chunk's start fades in."""
        n = self.config.source_cache_samples
        if audio.shape[0] < n:
            raise EdgevoiceError(
                f"a vocoder chunk made {audio.shape[0]} samples, fewer than the {n}-sample cross-fade; "
                f"feed at least {self.config.mel_cache_frames} mel frames in the first chunk"
            )
        faded = audio.copy()
        faded[:n] = (audio[:n] * self._fade_in + previous_tail[-n:] * self._fade_out).astype(np.float32)
        return faded
