"""Tool calls in a Freeze-Omni conversation, by the convention every recipe shares (``runtime.tools``).

The LLM writes a call into its reply text as the cascade's does,
``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``, taught by ``ToolRunner.prompt()`` at
the end of the system prompt. What differs is what the text travels with: a Freeze-Omni reply's
tokens carry the hidden states the speech decoder voices, so a call is withheld token by token
(``CallWithholder``) before its states could reach a segment. The call itself is parsed and
checked by ``split_tool_text`` and run by ``ToolRunner``, the same code the cascade uses.

A result comes back as a ChatML ``tool`` turn fed into the LLM cache (``tool_turn_ids``), with the
content the cascade puts in its ``tool`` message (``ToolOutcome.message``): one format for both
recipes, and the role Qwen2's ChatML has for it. The turn is left open, like a user turn: the
reply prefix that follows starts with the end-of-turn id.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from edgevoice.errors import EdgevoiceError
from edgevoice.runtime.llm import LlmTokenizer
from edgevoice.runtime.tools import ToolCall, ToolOutcome, split_tool_text

_OPEN = "<tool_call>"
TOOL_TURN_PREFIX = "<|im_end|>\n<|im_start|>tool\n"  # closes the turn before it, as the user turn prefix does


@dataclass(frozen=True)
class ReplyToken:
    """One sampled reply token with the hidden state it was sampled from and the text it adds."""

    id: int
    hidden: np.ndarray  # (hidden,)
    text: str


class CallWithholder:
    """Splits a reply's token stream into tokens to voice and the tool calls written between them.

    A token is held while its text may belong to a call (an open ``<tool_call>``, or a tail that
    may become one) and released, in order, once it cannot; the tokens of a finished call are
    dropped, so neither their text nor their hidden states reach the speech decoder.
    """

    def __init__(self) -> None:
        self._held: list[ReplyToken] = []

    def push(self, token: ReplyToken) -> tuple[list[ReplyToken], list[ToolCall]]:
        """Tokens now safe to voice and calls now complete, after ``token``."""
        self._held.append(token)
        return self._settle(final=False)

    def finish(self) -> tuple[list[ReplyToken], list[ToolCall]]:
        """The reply ended: what is held is voiced, except an unclosed call (dropped)."""
        return self._settle(final=True)

    def _settle(self, final: bool) -> tuple[list[ReplyToken], list[ToolCall]]:
        text = "".join(t.text for t in self._held)
        speakable, calls = split_tool_text(text, final=final)
        if calls:
            speakable = text[: text.find(_OPEN)]  # after the first call: dropped with its tokens
        released, end = [], 0
        for token in self._held:
            if end + len(token.text) > len(speakable):
                break
            released.append(token)
            end += len(token.text)
        self._held = [] if calls or final else self._held[len(released):]
        return released, calls


def tool_turn_ids(tokenizer: LlmTokenizer | None, outcome: ToolOutcome) -> list[int]:
    """Token ids of the turn that brings ``outcome`` into the LLM cache (ChatML role ``tool``)."""
    if tokenizer is None:
        raise EdgevoiceError("this package has no tokenizer, so its LLM cannot read tool results; "
                             "use a package exported with its tokenizer (freeze-omni, tiny)")
    return tokenizer.encode(TOOL_TURN_PREFIX + outcome.message())


def tool_turns_ids(tokenizer: LlmTokenizer | None, outcomes: Sequence[ToolOutcome]) -> list[int]:
    """Every outcome's turn, in arrival order."""
    return [i for outcome in outcomes for i in tool_turn_ids(tokenizer, outcome)]
