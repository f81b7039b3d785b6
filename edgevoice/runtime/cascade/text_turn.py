"""The words' end-of-turn vote: could the user's transcript end where they stopped?

Smart Turn hears the turn's audio; a flat reading of "I would like to know" sounds finished to it.
The words do not: a language model reading them expects more. So when the speculative answer has
transcribed the user's pause, the cascade's own LLM scores the transcript, rendered as the user
message it would answer, by the probability that the next token ends a sentence or the message
(". ? !" or the chat template's end of message). Finished requests score ~0.04-0.9, cut ones
mostly under 0.004 (SmolLM2-135M; see ``TurnOptions.text_eot_threshold``).

Whisper's trailing punctuation is removed first: it writes "I would like to know." as readily as
"What is the capital of France.", and a period already there would be the answer to the question.

It costs no LLM call of its own: the reply's prompt continues the scored tokens, so one call feeds
the words with the punctuation and the template's few tokens after them, the vote reads its row
from the call's ``tail_logits`` and the reply starts from its last logits
(``LlmSession.score_then_prepare``; where one call cannot give both, the vote's prefill is the
start of the reply's, ``LlmSession.next_token_probability``).
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence

SENTENCE_ENDS = (".", "?", "!")
_TRAILING = re.compile(r"[\s.?!,;:\u2026-]+$")  # what Whisper may write after the last word


def without_trailing_punctuation(text: str) -> str:
    """``text`` up to its last word: "I would like to know..." -> "I would like to know"."""
    return _TRAILING.sub("", text)


def end_token_ids(encode: Callable[[str], list[int]], stop_ids: Sequence[int]) -> list[int]:
    """The ids that end the user's words: the sentence ends that are one token, and the stop ids."""
    ids = {int(i) for i in stop_ids}
    for mark in SENTENCE_ENDS:
        pieces = encode(mark)
        if len(pieces) == 1:  # a mark the tokenizer splits cannot be read from one step's logits
            ids.add(pieces[0])
    return sorted(ids)
