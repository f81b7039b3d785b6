"""Drafts for exact speculative decoding: tokens a decoder will likely write next, copied from a
sequence it has already seen, checked in one call and kept only while each is the greedy choice.

- Whisper (``cascade/asr.py``): the turn's previous transcript drafts the transcript of the grown
  audio, from where the words so far match it.
- The LLM (``runtime/llm.py``): the prompt and the reply so far draft the reply ("prompt lookup"):
  spoken answers repeat the question's words ("What is the capital of France?" -> "The capital of
  France is Paris.").

Written here rather than taken from a library: the lookup is a dozen lines over token lists, and
each decoder's verification is tied to its own graph and cache.
"""

from __future__ import annotations

from collections.abc import Sequence


def continuation(draft: Sequence[int], tokens: Sequence[int], latest: bool = False,
                 pairs_only: bool = False) -> list[int]:
    """What ``draft`` says follows the last of ``tokens``: after a place where it has their last two
    tokens, else (unless ``pairs_only``) their last one; nothing if it has neither. The first such
    place, or the last one with ``latest`` (the LLM's nearest context). "Set timer for 25 minutes
    and remove" drafts "Set a timer for 25 minutes and remind me ..." from "timer" on."""
    if not tokens:
        return list(draft)
    places = [i for i, token in enumerate(draft) if token == tokens[-1]]
    pairs = [i for i in places if len(tokens) >= 2 and i >= 1 and draft[i - 1] == tokens[-2]]
    chosen = pairs if pairs_only else (pairs or places)
    if not chosen:
        return []
    return list(draft[(chosen[-1] if latest else chosen[0]) + 1 :])
