"""Where the Freeze-Omni reference fixture sets are, for tests parametrized over all of them.

A set is a directory with ``checkpoints/`` and ``golden/`` (see the shared fixtures README).
Sets are every ``../shared/fixtures/freeze_omni_*`` directory next to the repository, plus the
directories listed in ``$EDGEVOICE_FREEZE_OMNI_FIXTURES`` (os.pathsep-separated), so held-back
sets with other seeds and sizes run through the same tests. No set at all is a failure, not a skip.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from conftest import SHARED_FIXTURES
from fo_fixtures import ENV_VAR, fixture_params

# One finder for every Freeze-Omni test: the listen-path helpers own it.
fixture_set_params = fixture_params


def require_set(path: Path | None) -> Path:
    if path is None:
        pytest.fail(f"no Freeze-Omni fixture set: none under {SHARED_FIXTURES}/freeze_omni_* and ${ENV_VAR} is empty")
    if not (path / "golden").is_dir() or not (path / "checkpoints").is_dir():
        pytest.fail(f"{path} is not a Freeze-Omni fixture set (needs golden/ and checkpoints/)")
    return path


def golden_speech(path: Path) -> tuple[dict, dict]:
    """(speech.safetensors tensors as torch, meta.json) of a set."""
    import json

    from safetensors.torch import load_file

    return load_file(str(path / "golden" / "speech.safetensors")), json.loads((path / "golden" / "meta.json").read_text())


def speech_limits(golden: dict) -> dict[str, int]:
    """Cache and input limits just above what the golden run needs: small graphs, quick tests."""
    return {
        "max_prefix_rows": max(64, golden["tts_prefix_in"].shape[0]),
        "max_text_rows": max(64, golden["tts_hidden_in"].shape[0]),
        "max_speech_tokens": max(64, golden["tts_tokens"].shape[0]),
    }
