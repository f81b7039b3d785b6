"""VocalNet fixture sets: where they are, and their goldens loaded once per set.

A set is any ``shared/fixtures/vocalnet_*`` folder with a ``golden/`` directory, plus every folder
named in ``EDGEVOICE_VOCALNET_FIXTURES`` (os.pathsep-separated), so held-back sets with other seeds
and sizes run through the same tests. Finding none is a failure, not a skip.
"""

from __future__ import annotations

import functools
import json
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import SHARED_FIXTURES
from fo_fixtures import reference_set_params, reference_sets

ENV_VAR = "EDGEVOICE_VOCALNET_FIXTURES"


def fixture_sets() -> list[Path]:
    return reference_sets("vocalnet_", ENV_VAR)


def fixture_params() -> list:
    return reference_set_params(fixture_sets(), "no-vocalnet-fixtures")


@dataclass(frozen=True)
class VocalNetSet:
    """One fixture set's folders (the published layout) and its goldens."""

    root: Path

    @property
    def vocalnet_dir(self) -> Path:
        return self.root / "checkpoints" / "VocalNet-1B"

    @property
    def whisper_dir(self) -> Path:
        return self.root / "models" / "speech_encoder" / "whisper-large-v3"

    @property
    def cosyvoice_dir(self) -> Path:
        return self.root / "CosyVoice2-0.5B"

    @property
    def prompt_dir(self) -> Path:
        return self.root / "prompt"

    @property
    def input_wav(self) -> Path:
        return self.root / "input.wav"

    @functools.cached_property
    def meta(self) -> dict:
        return json.loads((self.root / "golden" / "meta.json").read_text())

    @functools.cached_property
    def hparams(self) -> dict:
        return json.loads((self.root / "hparams.json").read_text())

    @functools.cached_property
    def nonstream(self) -> dict:
        from safetensors.torch import load_file

        return load_file(str(self.root / "golden" / "nonstream.safetensors"))

    @functools.cached_property
    def stream(self) -> dict:
        from safetensors.torch import load_file

        return load_file(str(self.root / "golden" / "stream.safetensors"))


@functools.cache
def load_set(path: Path | None) -> VocalNetSet:
    """The set at ``path``; a clear failure when there is none or it is not a VocalNet set."""
    if path is None:
        pytest.fail(f"no VocalNet fixture set: none under {SHARED_FIXTURES}/vocalnet_* and ${ENV_VAR} is empty")
    if not (path / "golden").is_dir() or not (path / "checkpoints").is_dir():
        pytest.fail(f"{path} is not a VocalNet fixture set (needs golden/ and checkpoints/)")
    return VocalNetSet(path)
