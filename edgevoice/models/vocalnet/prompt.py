"""Host-side building of VocalNet's LLM input: prompt ids, speech row count, input embeddings.

The reference (``vocalnet.py`` ``__call__`` + ``preprocess_llama_3_v1`` +
``prepare_inputs_labels_for_speech_and_text``) renders the Llama-3.2 chat template for a system
message and one user turn whose content is ``<speech>``, appends the assistant header, marks the
placeholder with id -200, and replaces it by the first ``speech_rows`` projected speech rows.
Everything here is numpy (plus the ``tokenizers`` package for the text), no torch; the prompt ids
are the same for every utterance and can be computed once, at export.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

SPEECH_PLACEHOLDER = -200  # SPEECH_TOKEN_INDEX in the reference
SPEECH_TEXT = "<speech>"
DEFAULT_SYSTEM = (
    "You are a helpful language and speech assistant. You are able to understand the speech content that the user "
    "provides, and assist the user with a variety of tasks using natural language and speech."
)
# Llama-3.2's template prints this date when the renderer has no strftime_now (transformers 4.43,
# which the published model was run with).
DEFAULT_DATE = "26 Jul 2024"
ASSISTANT_HEADER = "<|start_header_id|>assistant<|end_header_id|>\n\n"


def llama3_prompt_text(system: str = DEFAULT_SYSTEM, date: str = DEFAULT_DATE) -> str:
    """The chat-template text of [system, user: <speech>] followed by the assistant header."""
    system_block = (
        "<|begin_of_text|><|start_header_id|>system<|end_header_id|>\n\n"
        f"Cutting Knowledge Date: December 2023\nToday Date: {date}\n\n{system}<|eot_id|>"
    )
    user_block = f"<|start_header_id|>user<|end_header_id|>\n\n{SPEECH_TEXT}<|eot_id|>"
    return system_block + user_block + ASSISTANT_HEADER


def llama3_prompt_ids(tokenizer_json: str | Path, system: str = DEFAULT_SYSTEM, date: str = DEFAULT_DATE) -> np.ndarray:
    """Prompt ids (int64) with ``SPEECH_PLACEHOLDER`` where the speech rows go.

    ``<speech>`` is an added special token in the reference, so the text splits at it before BPE:
    each side is encoded on its own (special tokens recognised, nothing added).
    """
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_json))
    before, after = llama3_prompt_text(system, date).split(SPEECH_TEXT)
    encode = lambda text: tokenizer.encode(text, add_special_tokens=False).ids
    return np.array([*encode(before), SPEECH_PLACEHOLDER, *encode(after)], dtype=np.int64)


def speech_frames(num_samples: int, window_samples: int, n_frames: int) -> int:
    """The reference's ``speech_length``: round(raw_len / padded_len * n_frames + 0.5).

    ``padded_len`` is what ``pad_or_trim`` leaves (the window), and Python's round (half to even)
    is kept on purpose.
    """
    return round(num_samples / window_samples * n_frames + 0.5)


def speech_rows(num_samples: int, window_samples: int, n_frames: int, k: int) -> int:
    """How many projector rows the LLM sees: ((frames + 1) // 2) // k, at most the rows of a window."""
    rows = ((speech_frames(num_samples, window_samples, n_frames) + 1) // 2) // k
    return min(rows, n_frames // 2 // k)


def pad_or_trim(audio: np.ndarray, window_samples: int) -> np.ndarray:
    """(samples,) float PCM -> (window_samples,) float32: zero-padded at the end or cut."""
    out = np.zeros(window_samples, dtype=np.float32)
    n = min(len(audio), window_samples)
    out[:n] = audio[:n]
    return out


def assemble_inputs_embeds(
    prompt_ids: np.ndarray, speech: np.ndarray, embed_table: np.ndarray, max_length: int = 0
) -> np.ndarray:
    """LLM input rows: embed(ids before the placeholder) ⊕ speech ⊕ embed(ids after).

    prompt_ids: (L,) int with exactly one ``SPEECH_PLACEHOLDER``; speech: (rows, hidden) already cut
    to ``speech_rows``; embed_table: (vocab, hidden). ``max_length`` > 0 truncates like the
    reference's ``tokenizer_model_max_length``. Returns (L - 1 + rows, hidden) float32.
    """
    where = np.flatnonzero(prompt_ids == SPEECH_PLACEHOLDER)
    if len(where) != 1:
        raise ValueError(f"prompt ids must hold exactly one speech placeholder ({SPEECH_PLACEHOLDER}), found {len(where)}")
    if speech.ndim != 2 or speech.shape[1] != embed_table.shape[1]:
        raise ValueError(f"speech rows {speech.shape} do not match the embedding width {embed_table.shape[1]}")
    at = int(where[0])
    rows = [embed_table[prompt_ids[:at]], speech, embed_table[prompt_ids[at + 1:]]]
    embeds = np.concatenate(rows, axis=0).astype(np.float32)
    return embeds[:max_length] if max_length > 0 else embeds
