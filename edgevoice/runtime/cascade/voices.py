"""Open the ``tts`` component of a package with the class its export chose (Piper or Kokoro).

The export writes ``stream["engine"]`` on the component ("piper" | "kokoro"); packages exported
before the fact existed are Piper voices, so a missing fact means "piper". Numpy + runners only.
"""

from __future__ import annotations

from pathlib import Path

from edgevoice.errors import EdgevoiceError
from edgevoice.manifest import Manifest, read_manifest
from edgevoice.runtime.cascade.kokoro import KokoroVoice
from edgevoice.runtime.cascade.tts import PiperVoice

ENGINES = {"piper": PiperVoice, "kokoro": KokoroVoice}


def voice_engine(manifest: Manifest, component: str = "tts") -> str:
    """"piper" or "kokoro": which runtime class drives the package's voice."""
    engine = manifest.component(component).stream.get("engine", "piper")
    if engine not in ENGINES:
        raise EdgevoiceError(
            f"component '{component}' needs the voice engine '{engine}', which this edgevoice does not "
            f"have (it has {', '.join(ENGINES)}); update edgevoice or export with another --voice"
        )
    return engine


def open_voice(package: str | Path | Manifest, backend: str = "ort", device: str = "cpu",
               component: str = "tts") -> PiperVoice | KokoroVoice:
    """The package's voice, ready for ``.session(seed, options)``."""
    manifest = package if isinstance(package, Manifest) else read_manifest(package)
    return ENGINES[voice_engine(manifest, component)].from_package(manifest, component, backend=backend, device=device)
