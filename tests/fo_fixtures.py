"""Freeze-Omni fixture sets for the listen-path tests: where they are, and their goldens loaded once.

A set is any ``shared/fixtures/freeze_omni_*`` folder with a ``golden/`` directory, plus every
folder named in ``EDGEVOICE_FREEZE_OMNI_FIXTURES`` (os.pathsep-separated), so held-back sets
with other seeds and sizes run through the same tests. Finding none is a failure, not a skip.
"""

from __future__ import annotations

import functools
import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHARED_FIXTURES

ENV_VAR = "EDGEVOICE_FREEZE_OMNI_FIXTURES"


def reference_sets(prefix: str, env_var: str) -> list[Path]:
    """Every ``shared/fixtures/<prefix>*`` folder with goldens, then those named in ``$env_var``."""
    found = sorted(p for p in SHARED_FIXTURES.glob(f"{prefix}*") if (p / "golden").is_dir())
    extra = [Path(p) for p in os.environ.get(env_var, "").split(os.pathsep) if p.strip()]
    unique: dict[Path, None] = {}  # a set named both ways runs once
    for path in found + extra:
        unique.setdefault(path.resolve(), None)
    return list(unique)


def reference_set_params(sets: list[Path], missing_id: str) -> list:
    """pytest params, one per set; a single failing placeholder (``missing_id``) when there is none."""
    if not sets:
        return [pytest.param(None, id=missing_id)]
    return [pytest.param(p, id=p.name) for p in sets]


def fixture_sets() -> list[Path]:
    return reference_sets("freeze_omni_", ENV_VAR)


def fixture_params() -> list:
    return reference_set_params(fixture_sets(), "no-freeze-omni-fixtures")


def rel_err(ours, ref) -> float:
    """max |ours - ref| / max |ref| (the measure the fixture README's tolerance advice uses)."""
    ours, ref = torch.as_tensor(np.asarray(ours)), torch.as_tensor(np.asarray(ref))
    assert ours.shape == ref.shape, f"shape {tuple(ours.shape)} vs golden {tuple(ref.shape)}"
    return float((ours.float() - ref.float()).abs().max() / ref.float().abs().max().clamp(min=1e-30))


def meta_entry(section: dict, prefix: str):
    """The value of the one key of a meta.json section that starts with ``prefix``.

    Some meta keys carry sizes in their names ("turn_prefix_ids (stat sl, before 25 prompt
    embeddings)"), which differ between sets.
    """
    matches = [k for k in section if k.split(" ")[0] == prefix]
    assert len(matches) == 1, f"meta.json has {len(matches)} keys named {prefix!r}: {sorted(section)}"
    return section[matches[0]]


@dataclass
class FixtureSet:
    root: Path
    golden: dict[str, torch.Tensor]  # golden/listen.safetensors
    meta: dict  # golden/meta.json
    audio: np.ndarray  # input.wav zero-padded to whole chunks, float32

    @property
    def chunks(self) -> int:
        return self.golden["fbank"].shape[0]


@functools.cache
def load_set(root: Path | None) -> FixtureSet:
    if root is None:
        pytest.fail(f"no Freeze-Omni fixture set: expected {SHARED_FIXTURES}/freeze_omni_*/golden or ${ENV_VAR}")
    import soundfile
    from safetensors.torch import load_file

    golden = load_file(str(root / "golden" / "listen.safetensors"))
    meta = json.loads((root / "golden" / "meta.json").read_text())
    samples, rate = soundfile.read(str(root / "input.wav"), dtype="float32")
    assert rate == 16000
    padded = np.zeros(meta["listen"]["padded_samples"], dtype=np.float32)
    padded[: len(samples)] = samples
    return FixtureSet(root, golden, meta, padded)


@functools.cache
def load_listen_of(root: Path | None):
    """The set's listen path, with an LLM cache just long enough for its whole listen replay."""
    from edgevoice.weights.freeze_omni.audiollm import load_listen

    fixture = load_set(root)
    needed = fixture.meta["listen"]["chunks"][-1]["llm_kv_len_out"]
    return load_listen(fixture.root / "checkpoints", fixture.root / "llm", max_context=needed + 8)
