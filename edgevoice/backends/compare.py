"""Comparing runners step by step: the same feeds through two backends, each feeding back its own state.

Both sides start from zero state, so a wrong state wiring shows up as drift over the steps, not
only as a one-step error. Every output, the states included, is compared at every step with
``edgevoice.compare.compare_outputs`` (per-output tolerances, SNR for audio outputs).
"""

from __future__ import annotations

from typing import Mapping, Sequence

import numpy as np

from edgevoice.backends.base import Runner
from edgevoice.compare import Comparison, ToleranceLike, compare_outputs


def stream_outputs(runner: Runner, feeds: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
    """Every output of every step (states included), stacked on a new leading axis."""
    wiring = runner.component.state
    state = runner.initial_state(1)
    steps = []
    for feed in feeds:
        outputs = runner.infer({**feed, **state})
        state = {wiring[name]: value for name, value in outputs.items() if name in wiring}
        steps.append(outputs)
    return {name: np.stack([step[name] for step in steps]) for name in steps[0]}


def compare_runners(
    reference: Runner,
    test: Runner,
    feeds: Sequence[Mapping[str, np.ndarray]],
    atol: float = 1e-4,
    rtol: float = 0.0,
    per_output: Mapping[str, ToleranceLike] | None = None,
    audio_outputs: tuple[str, ...] = (),
    min_snr_db: float | None = None,
) -> Comparison:
    """Stream ``feeds`` (non-state inputs, one dict per step) through both runners and compare."""
    return compare_outputs(
        stream_outputs(reference, feeds), stream_outputs(test, feeds), atol=atol, rtol=rtol,
        per_output=per_output, audio_outputs=audio_outputs, min_snr_db=min_snr_db,
    )
