"""The voice prompt's audio side, as VocalNet prepares it before the CosyVoice2 front-end models run.

VocalNet (``omni_speech/infer/vocalnet.py``, ``VocalNetModel.__init_vocoder__``) reads the prompt
recording at 16 kHz, cleans it with ``postprocess`` and derives two signals from it:

    prompt wav --load_wav(16 kHz)--> postprocess --> prompt_16k  (speech tokens, speaker embedding)
                                                 --Resample(16k -> 24k)--> flow mel (prompt_feat)

* ``postprocess``: librosa's ``effects.trim`` (top_db 60, 440-sample frames, 220 hop: frames whose
  RMS is more than 60 dB under the loudest frame are cut from both ends), a peak normalisation to
  0.8 when the peak is above it, then 4800 zeros (``int(24000 * 0.2)``, appended to 16 kHz audio:
  0.3 s, kept as the reference has it).
* ``Resample``: torchaudio's default band-limited resampler (Hann-windowed sinc, 6 zero crossings,
  roll-off 0.99), written out here in numpy so export does not need torchaudio.
* the flow mel: the yaml's ``feat_extractor`` (matcha's ``mel_spectrogram``: reflect padding of
  (n_fft - hop) / 2, STFT without centring, magnitude sqrt(power + 1e-9), Slaney mel filters
  between fmin and fmax, natural log floored at 1e-5).

Everything is numpy; the arithmetic runs in float64 and results are float32.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgevoice.errors import EdgevoiceError

TRIM_TOP_DB = 60.0  # postprocess defaults
TRIM_FRAME, TRIM_HOP = 440, 220
PEAK = 0.8
TAIL_ZEROS = int(24000 * 0.2)  # 4800 samples, appended at 16 kHz


@dataclass(frozen=True)
class FlowMelConfig:
    """The yaml's ``feat_extractor`` (defaults: CosyVoice2-0.5B's published values)."""

    sample_rate: int = 24000
    n_fft: int = 1920
    num_mels: int = 80
    hop: int = 480
    win: int = 1920
    fmin: float = 0.0
    fmax: float = 8000.0


def flow_mel_config(yaml_data: dict[str, Any], where: Path) -> FlowMelConfig:
    """FlowMelConfig from a parsed cosyvoice.yaml; refuses a front end other than matcha's uncentred mel."""
    feat = yaml_data.get("feat_extractor")
    if not isinstance(feat, dict):
        raise EdgevoiceError(f"{where} has no feat_extractor section; restore the published cosyvoice.yaml")
    if feat.get("center", False):
        raise EdgevoiceError(f"{where}: feat_extractor.center is true; the CosyVoice2 flow is trained with center: False")
    config = FlowMelConfig(int(feat.get("sampling_rate", 24000)), int(feat["n_fft"]), int(feat["num_mels"]),
                           int(feat["hop_size"]), int(feat["win_size"]), float(feat.get("fmin", 0)),
                           float(feat.get("fmax") or int(feat.get("sampling_rate", 24000)) / 2))
    if config.win > config.n_fft:
        raise EdgevoiceError(f"{where}: feat_extractor.win_size {config.win} is larger than n_fft {config.n_fft}")
    return config


# --- loading and postprocess -----------------------------------------------------------------


def load_prompt_wav(path: Path, sample_rate: int) -> np.ndarray:
    """(samples,) float32 mono at ``sample_rate``, as the reference's ``load_wav`` (channel mean, sinc resampling)."""
    import soundfile

    try:
        audio, rate = soundfile.read(str(path), dtype="float32", always_2d=True)  # (samples, channels)
    except (RuntimeError, soundfile.LibsndfileError) as exc:
        raise EdgevoiceError(f"{path} is not a readable audio file ({exc}); use a 16-bit PCM wav") from exc
    mono = audio.mean(axis=1)
    if rate < sample_rate:
        raise EdgevoiceError(f"{path} is sampled at {rate} Hz; the voice prompt needs at least {sample_rate} Hz")
    return sinc_resample(mono, rate, sample_rate) if rate != sample_rate else mono.astype(np.float32)


def trim_silence(audio: np.ndarray, top_db: float = TRIM_TOP_DB, frame: int = TRIM_FRAME, hop: int = TRIM_HOP) -> np.ndarray:
    """librosa ``effects.trim``: drop leading/trailing frames more than ``top_db`` under the loudest frame."""
    padded = np.pad(audio.astype(np.float64), frame // 2)  # centred frames, zero padding
    frames = np.lib.stride_tricks.sliding_window_view(padded, frame)[::hop]  # (1 + N // hop, frame)
    power = np.mean(frames**2, axis=1)  # RMS squared per frame
    db = 10 * np.log10(np.maximum(power, 1e-10)) - 10 * np.log10(max(power.max(), 1e-10))
    loud = np.flatnonzero(db > -top_db)
    if loud.size == 0:
        return audio[:0]
    return audio[loud[0] * hop: min(len(audio), (loud[-1] + 1) * hop)]


def postprocess(audio: np.ndarray) -> np.ndarray:
    """VocalNet's ``postprocess``: trim, peak-normalise to 0.8 (only if louder), append 4800 zeros."""
    speech = trim_silence(audio).astype(np.float32)
    if speech.size == 0:
        raise EdgevoiceError("the voice prompt is silent (nothing within 60 dB of its loudest part); record speech")
    peak = float(np.abs(speech).max())
    if peak > PEAK:
        speech = speech / peak * PEAK
    return np.concatenate([speech, np.zeros(TAIL_ZEROS, np.float32)])


# --- band-limited resampling -----------------------------------------------------------------


def sinc_kernel(orig: int, new: int, zero_crossings: int = 6, rolloff: float = 0.99) -> tuple[np.ndarray, int]:
    """Polyphase Hann-windowed sinc filters (new, 2 * width + orig) and ``width``, for rates reduced by their gcd.

    Output phase j of every block of ``new`` outputs reads ``2 * width + orig`` inputs around
    input time ``j * orig / new``; the cutoff is ``rolloff`` times the lower Nyquist rate.
    """
    cutoff = min(orig, new) * rolloff  # in units of the reduced rates
    width = math.ceil(zero_crossings * orig / cutoff)
    taps = np.arange(-width, width + orig, dtype=np.float64) / orig  # input times, in output-block units
    t = (-np.arange(new, dtype=np.float64)[:, None] / new + taps[None, :]) * cutoff  # (new, taps)
    t = np.clip(t, -zero_crossings, zero_crossings)
    window = np.cos(t * math.pi / zero_crossings / 2) ** 2
    sinc = np.sinc(t)  # sin(pi t) / (pi t), 1 at 0
    return sinc * window * (cutoff / orig), width


def sinc_resample(audio: np.ndarray, orig_rate: int, new_rate: int) -> np.ndarray:
    """(N,) -> (ceil(N * new / orig),) float32; torchaudio's ``Resample`` defaults (sinc_interp_hann, width 6)."""
    gcd = math.gcd(orig_rate, new_rate)
    orig, new = orig_rate // gcd, new_rate // gcd
    if orig == new:
        return audio.astype(np.float32)
    kernel, width = sinc_kernel(orig, new)  # (new, taps)
    padded = np.pad(audio.astype(np.float64), (width, width + orig))
    blocks = np.lib.stride_tricks.sliding_window_view(padded, kernel.shape[1])[::orig]  # (blocks, taps)
    out = (blocks @ kernel.T).reshape(-1)  # (blocks * new,): phase-interleaved
    return out[: math.ceil(new * len(audio) / orig)].astype(np.float32)


# --- the flow's mel --------------------------------------------------------------------------


def _hz_to_mel(hz: np.ndarray) -> np.ndarray:
    """Slaney's mel scale (librosa, htk=False): linear to 1 kHz (200/3 Hz per mel), logarithmic above."""
    hz = np.asarray(hz, dtype=np.float64)
    log_step = math.log(6.4) / 27.0
    return np.where(hz >= 1000.0, 15.0 + np.log(np.maximum(hz, 1e-10) / 1000.0) / log_step, hz / (200.0 / 3.0))


def _mel_to_hz(mel: np.ndarray) -> np.ndarray:
    log_step = math.log(6.4) / 27.0
    return np.where(mel >= 15.0, 1000.0 * np.exp(log_step * (mel - 15.0)), mel * (200.0 / 3.0))


def slaney_filters(sample_rate: int, n_fft: int, n_mels: int, fmin: float, fmax: float) -> np.ndarray:
    """(n_mels, n_fft // 2 + 1) area-normalised triangles between fmin and fmax (librosa's ``filters.mel``)."""
    edges = _mel_to_hz(np.linspace(_hz_to_mel(fmin), _hz_to_mel(fmax), n_mels + 2))  # (n_mels + 2,) Hz
    bins = np.linspace(0.0, sample_rate / 2, n_fft // 2 + 1)  # (bins,) Hz
    left, center, right = edges[:-2, None], edges[1:-1, None], edges[2:, None]
    rising = (bins[None] - left) / (center - left)
    falling = (right - bins[None]) / (right - center)
    return np.maximum(0.0, np.minimum(rising, falling)) * (2.0 / (right - left))


def flow_mel(audio: np.ndarray, config: FlowMelConfig = FlowMelConfig()) -> np.ndarray:
    """(N,) PCM at ``config.sample_rate`` -> (frames, num_mels) float32 log-mel: the flow's ``prompt_feat``."""
    c = config
    pad = (c.n_fft - c.hop) // 2
    if len(audio) <= pad:
        raise EdgevoiceError(f"the voice prompt is too short for the flow's mel ({len(audio)} samples); record more speech")
    padded = np.pad(audio.astype(np.float64), pad, mode="reflect")
    frames = np.lib.stride_tricks.sliding_window_view(padded, c.n_fft)[:: c.hop]  # (F, n_fft)
    window = np.zeros(c.n_fft)
    offset = (c.n_fft - c.win) // 2  # a shorter window sits in the middle of the FFT frame
    window[offset: offset + c.win] = 0.5 - 0.5 * np.cos(2 * math.pi * np.arange(c.win) / c.win)  # periodic Hann
    spectrum = np.fft.rfft(frames * window, axis=1)  # (F, bins)
    magnitude = np.sqrt(spectrum.real**2 + spectrum.imag**2 + 1e-9)
    mel = magnitude @ slaney_filters(c.sample_rate, c.n_fft, c.num_mels, c.fmin, c.fmax).T  # (F, num_mels)
    return np.log(np.maximum(mel, 1e-5)).astype(np.float32)
