"""Scripted stand-ins: for the LLM (replies chosen by a rule, token by token, through the real
tokenizer and chat formatter) and, at the end, for Freeze-Omni's turn-state head.

It exercises the runtime mechanics around tool calls (background runs, results re-entering the
conversation, tags never spoken) with replies a test controls exactly; tool calling itself with
the real model (router, grammar, rollback) is tested in tests/runtime/test_tools_real_llm.py.

Like ``LlmSession`` it keeps what its "cache" holds: every word it yielded, a committed point,
``commit`` and ``rollback`` between them, so tests can check when the session commits or rolls
back a reply."""

from __future__ import annotations

from typing import Callable

import numpy as np

from edgevoice.runtime.freeze_omni.head_policy import HeadTurnPolicy
from edgevoice.runtime.llm import GeneratedToken, LlmSession

Script = Callable[[list[dict[str, str]]], str]


class ScriptedLlm:
    def __init__(self, real: LlmSession, script: Script):
        self.real, self.script = real, script
        self.formatter, self.tokenizer = real.formatter, real.tokenizer
        self.finish_reason = "stop"
        self.prompts: list[list[dict[str, str]]] = []  # every conversation it was asked to continue
        self.constraints: list = []  # the decoding constraint each generation was given (None: none)
        self.prepared = 0  # prefill calls (warm-up, partials)
        self.tokens: list[str] = []  # words yielded since the start, as a cache would hold them
        self._committed: list[str] = []
        self.commits = self.rollbacks = 0

    @property
    def stop_ids(self):
        return self.real.stop_ids

    def prepare(self, ids) -> None:
        self.prepared += 1

    def next_token_probability(self, ids, token_ids) -> float:
        """The real model's: the words' end-of-turn vote is about the user's words, not the script."""
        return self.real.next_token_probability(ids, token_ids)

    def prompt_ids(self, messages, max_new_tokens):
        return self.real.prompt_ids(messages, max_new_tokens)

    def score_then_prepare(self, ids, at, token_ids):
        return self.real.score_then_prepare(ids, at, token_ids)

    def commit(self) -> None:
        self._committed = list(self.tokens)
        self.commits += 1

    def rollback(self) -> None:
        self.tokens = list(self._committed)
        self.rollbacks += 1

    @property
    def committed(self) -> list[str]:
        return list(self._committed)

    def generate(self, messages, max_new_tokens=64, sampling=None, commit=True, constraint=None):
        self.prompts.append(list(messages))
        self.constraints.append(constraint)
        for word in self.script(list(messages)).split(" "):
            self.tokens.append(word)
            yield GeneratedToken(0, word + " ")
        if commit:
            self.commit()


def install(pipeline, script: Script) -> ScriptedLlm:
    pipeline.llm = ScriptedLlm(pipeline.llm, script)
    return pipeline.llm


KEEP_LISTENING_PROBS = [0.8, 0.1, 0.1]  # the head's (listen, respond, dismiss) verdict "keep listening"


class ScriptedHead(HeadTurnPolicy):
    """The real Freeze-Omni turn policy, with the head's probabilities replaced: ``script[turn]`` is
    the verdict list of that turn's listened chunks (keep listening after the list ends)."""

    def __init__(self, script: dict[int, list[list[float]]]):
        super().__init__()
        self.script, self.turn, self.seen = script, 0, 0

    def _open(self, onset):
        self.turn, self.seen = self.turn + 1, 0
        return super()._open(onset)

    def head(self, probs):
        if self.listening:
            verdicts = self.script.get(self.turn, [])
            chosen = verdicts[self.seen] if self.seen < len(verdicts) else KEEP_LISTENING_PROBS
            probs = np.array(chosen, dtype=np.float32)
            self.seen += 1
        return super().head(probs)
