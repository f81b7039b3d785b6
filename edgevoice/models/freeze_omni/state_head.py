"""Freeze-Omni's turn-state head, and the listen-path LLM step that carries it.

The head is ``predictor_head = Linear(hidden, 4)`` on the LLM's final-normed hidden state at
the last position of each listen chunk. The reference softmaxes the first three logits only (the
fourth class is dropped) and decides on the host: p[2] > 0.5 -> dismiss ('el', checked first),
else p[1] > 0.5 -> respond ('ss'), else keep listening ('cl'); that rule lives, torch-free, in
``edgevoice.runtime.freeze_omni.turn_state``.

The head is folded into the listen LLM graph (``ListenLlmStep``) rather than exported alone: it
runs on every 160 ms listen chunk, on exactly the hidden row that graph already computes, so a
separate graph would only add an engine launch and a device->host->device copy per chunk for a
(hidden x 4) matmul. Steps that do not listen (system prompt, reply) use the plain LLM graphs.

    step(input_embeds (B, T, hidden), position (B,), k_cache_0, v_cache_0, ...)
        -> (logits (B, vocab), hidden (B, hidden), state_logits (B, 4), state_probs (B, 3), caches')
"""

from __future__ import annotations

import torch
from torch import nn

from edgevoice.models.llm import LlmModel, LlmStep
from edgevoice.streaming import InputSpec, StateSpec, StreamingModule

DECIDING_CLASSES = 3  # the reference softmaxes logits 0..2 (listen, respond, dismiss) only


class StateHead(nn.Module):
    """Linear(hidden -> classes); the weight names match ``predictor_head.*`` in the checkpoint."""

    def __init__(self, hidden: int, classes: int = 4):
        super().__init__()
        if classes < DECIDING_CLASSES:
            raise ValueError(f"the turn-state head needs at least {DECIDING_CLASSES} classes, got {classes}")
        self.linear = nn.Linear(hidden, classes)

    def forward(self, hidden: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # hidden: (B, hidden) -> logits (B, classes), probs (B, 3) over the deciding classes
        logits = self.linear(hidden.to(self.linear.weight.dtype)).float()
        return logits, torch.softmax(logits[:, :DECIDING_CLASSES], dim=-1)


class ListenLlmStep(StreamingModule):
    """An embeds-fed LLM prefill (tokens 1..prefill_max_tokens) with the turn-state head on its last row."""

    def __init__(self, llm: LlmModel, head: StateHead):
        super().__init__()
        self.llm_step = LlmStep(llm, tokens=None, inputs="embeds")
        self.head = head

    def set_compute_dtype(self, dtype: torch.dtype) -> "ListenLlmStep":
        self.llm_step.set_compute_dtype(dtype)
        # The head decides turns from small logit gaps: it stays float32 (4 x hidden weights).
        self.head.float()
        self.compute_dtype = dtype
        return self

    def state_specs(self) -> tuple[StateSpec, ...]:
        return self.llm_step.state_specs()

    def input_specs(self) -> tuple[InputSpec, ...]:
        return self.llm_step.input_specs()

    def output_names(self) -> tuple[str, ...]:
        return ("logits", "hidden", "state_logits", "state_probs")

    def dim_ranges(self) -> dict[str, tuple[int, int, int]]:
        return self.llm_step.dim_ranges()

    def step(self, input_embeds: torch.Tensor, position: torch.Tensor, *caches: torch.Tensor):  # type: ignore[override]
        logits, hidden, *new_caches = self.llm_step.step(input_embeds, position, *caches)
        state_logits, state_probs = self.head(hidden)
        return (logits, hidden, state_logits, state_probs, *new_caches)

    def forward(self, input_embeds: torch.Tensor) -> torch.Tensor:
        """Final-normed hidden states (B, T, hidden) of a whole sequence from an empty cache."""
        b, t, _ = input_embeds.shape
        caches = self.llm_step.llm.empty_cache(b, capacity=max(t, 1))
        hidden, _ = self.llm_step.llm.run(input_embeds.to(self.compute_dtype), torch.zeros(b, dtype=torch.long), caches)
        return hidden.float()
