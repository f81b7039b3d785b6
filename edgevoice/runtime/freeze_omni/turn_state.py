"""Freeze-Omni's turn-state decision on the host (numpy only: the runtime never imports torch).

The listen LLM graph returns ``state_probs`` (B, 3): a softmax over the head's first three
logits (0 keep listening, 1 stop listening and respond / barge in, 2 stop listening without a
reply). The reference decides per chunk, with class 2 checked first:

    p[2] > 0.5 -> 'el' (end listening, no reply)
    p[1] > 0.5 -> 'ss' (start speaking)
    otherwise  -> 'cl' (continue listening)
"""

from __future__ import annotations

import numpy as np

KEEP_LISTENING = "cl"
RESPOND = "ss"
DISMISS = "el"
THRESHOLD = 0.5  # the reference's fixed probability threshold for both transitions


def state_probs(state_logits: np.ndarray) -> np.ndarray:
    """Softmax over the first three of the head's logits (..., >=3) -> (..., 3), as the reference."""
    logits = np.asarray(state_logits, dtype=np.float64)[..., :3]
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return (shifted / shifted.sum(axis=-1, keepdims=True)).astype(np.float32)


def decide_turn_state(probs: np.ndarray) -> str:
    """The decision for one chunk from its three probabilities (3,)."""
    p = np.asarray(probs, dtype=np.float64).reshape(-1)
    if p.shape[0] != 3:
        raise ValueError(f"expected 3 turn-state probabilities, got {p.shape[0]}")
    if p[2] > THRESHOLD:
        return DISMISS
    if p[1] > THRESHOLD:
        return RESPOND
    return KEEP_LISTENING


def decide_batch(probs: np.ndarray) -> list[str]:
    """One decision per session row of ``probs`` (B, 3)."""
    return [decide_turn_state(row) for row in np.asarray(probs).reshape(-1, 3)]
