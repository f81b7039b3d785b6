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
    """Every output of every step (states included), stacked on a new leading axis; an output whose
    shape changes between steps (an LLM's ``tail_logits`` over chunks of different lengths) is
    flattened and joined instead, which compares the same numbers."""
    wiring = runner.component.state
    state = runner.initial_state(1)
    steps = []
    for feed in feeds:
        outputs = runner.infer({**feed, **state})
        state = {wiring[name]: value for name, value in outputs.items() if name in wiring}
        steps.append(outputs)
    return {name: _join([step[name] for step in steps]) for name in steps[0]}


def _join(values: list[np.ndarray]) -> np.ndarray:
    if all(v.shape == values[0].shape for v in values):
        return np.stack(values)
    return np.concatenate([v.reshape(-1) for v in values])


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
