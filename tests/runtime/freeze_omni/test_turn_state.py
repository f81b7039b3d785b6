"""The host-side Freeze-Omni turn decision: the reference's rule, and no torch on the runtime path."""

from __future__ import annotations

import subprocess
import sys

import numpy as np
import pytest

from edgevoice.runtime.freeze_omni.turn_state import (
    DISMISS,
    KEEP_LISTENING,
    RESPOND,
    decide_batch,
    decide_turn_state,
    state_probs,
)


@pytest.mark.parametrize(
    "probs, decision",
    [
        ((0.9, 0.05, 0.05), KEEP_LISTENING),
        ((0.3, 0.65, 0.05), RESPOND),
        ((0.3, 0.05, 0.65), DISMISS),
        ((0.5, 0.5, 0.0), KEEP_LISTENING),  # strictly greater than 0.5
        ((0.34, 0.33, 0.33), KEEP_LISTENING),
    ],
)
def test_decision_rule(probs, decision):
    assert decide_turn_state(np.array(probs)) == decision


def test_dismiss_is_checked_before_respond():
    # Not reachable with a softmax (both > 0.5), but it pins the order of the reference's checks.
    assert decide_turn_state(np.array([0.0, 0.6, 0.6])) == DISMISS


def test_probs_drop_the_fourth_logit():
    logits = np.array([[3.1263647, 0.7520455, 1.1632323, -1.9571244], [0.0, 0.0, 0.0, 50.0]])
    probs = state_probs(logits)
    assert probs.shape == (2, 3) and np.allclose(probs.sum(axis=1), 1.0)
    assert np.allclose(probs[1], 1 / 3)
    assert decide_batch(probs) == [KEEP_LISTENING, KEEP_LISTENING]
    with pytest.raises(ValueError, match="3 turn-state probabilities"):
        decide_turn_state(np.ones(4))


def test_module_does_not_import_torch():
    code = "import sys, edgevoice.runtime.freeze_omni.turn_state; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "False"
