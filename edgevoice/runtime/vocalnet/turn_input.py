"""A user turn as VocalNet's LLM reads it: the padded window, its speech rows, the input rows.

The run-time side of the prompt the exporter writes (``llm.prompt_ids``: the Llama-3 chat template
with ``SPEECH_PLACEHOLDER`` where the speech goes), following the reference's ``vocalnet.py``
``__call__`` and ``prepare_inputs_labels_for_speech_and_text``: the recording is zero-padded or cut
to the encoder's window, the LLM sees ``((frames + 1) // 2) // k`` projector rows of it, and those
rows replace the placeholder between the template's embedding rows. numpy only.
"""

from __future__ import annotations

import numpy as np

SPEECH_PLACEHOLDER = -200  # SPEECH_TOKEN_INDEX in the reference


def pad_or_trim(audio: np.ndarray, window_samples: int) -> np.ndarray:
    """(samples,) PCM -> (window_samples,) float32, zero-padded at the end or cut."""
    out = np.zeros(window_samples, dtype=np.float32)
    n = min(len(audio), window_samples)
    out[:n] = audio[:n]
    return out


def speech_row_count(num_samples: int, window_samples: int, n_frames: int, k: int) -> int:
    """Projector rows the LLM reads: the reference's speech_length = round(N / window * frames + 0.5)
    (Python's half-to-even round, kept), halved by the conv stem, grouped by k; at most a window's."""
    frames = round(num_samples / window_samples * n_frames + 0.5)
    return min(((frames + 1) // 2) // k, n_frames // 2 // k)


def input_rows(prompt_ids: np.ndarray, speech: np.ndarray, table: np.ndarray, max_rows: int = 0) -> np.ndarray:
    """embed(ids before the placeholder) ⊕ speech (R, hidden) ⊕ embed(ids after) -> (L - 1 + R, hidden) float32.

    ``max_rows`` > 0 cuts like the reference's ``tokenizer_model_max_length``.
    """
    at = np.flatnonzero(prompt_ids == SPEECH_PLACEHOLDER)
    if len(at) != 1:
        raise ValueError(f"prompt ids must hold one speech placeholder ({SPEECH_PLACEHOLDER}), found {len(at)}")
    i = int(at[0])
    rows = np.concatenate([table[prompt_ids[:i]], speech, table[prompt_ids[i + 1:]]], axis=0).astype(np.float32)
    return rows[:max_rows] if max_rows > 0 else rows
