"""A scripted stand-in for the LLM: replies chosen by a rule, token by token, through the real
tokenizer and chat formatter. The tiny real model cannot be relied on to call tools; the script
exercises the tool convention and the runtime mechanics around it."""

from __future__ import annotations

from typing import Callable

from edgevoice.runtime.llm import GeneratedToken, LlmSession

Script = Callable[[list[dict[str, str]]], str]


class ScriptedLlm:
    def __init__(self, real: LlmSession, script: Script):
        self.real, self.script = real, script
        self.formatter, self.tokenizer = real.formatter, real.tokenizer
        self.finish_reason = "stop"
        self.prompts: list[list[dict[str, str]]] = []  # every conversation it was asked to continue
        self.prepared = 0  # prefill calls (warm-up, partials)

    def prepare(self, ids) -> None:
        self.prepared += 1

    def commit(self) -> None:
        pass

    def rollback(self) -> None:
        pass

    def generate(self, messages, max_new_tokens=64, sampling=None, commit=True):
        self.prompts.append(list(messages))
        for word in self.script(list(messages)).split(" "):
            yield GeneratedToken(0, word + " ")


def install(pipeline, script: Script) -> ScriptedLlm:
    pipeline.llm = ScriptedLlm(pipeline.llm, script)
    return pipeline.llm
