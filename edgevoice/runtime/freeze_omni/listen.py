"""Freeze-Omni's listen path at run time: the LLM contexts and 160 ms of audio -> turn-state probabilities.

Engines only (numpy + any backend). Per chunk of 2560 samples (16 kHz):

    fo_frontend  chunk (1, 2560) -> fbank (1, 19, 80)          runs on every chunk, kept in a short history
    fo_encoder   fbank -> encoder frames (1, 4, d)             only while a user turn is listened to
    fo_adapter   frames -> LLM embeddings (1, 2, hidden)
    fo_llm_listen embeddings -> hidden, state_probs (1, 3)     appended to the turn's LLM context

The front end runs on every chunk so that, when the acoustic gate opens, the last few chunks of
features (speech that started just before the gate noticed it) can be replayed into a fresh
encoder, as the reference server replays its fbank history at a VAD start.

The package holds one LLM graph, fed embedding rows: audio rows from the adapter, and token ids
as rows of the embedding table the package ships as host data (system prompt, turn and response
prefixes, reply tokens). An ``LlmContext`` is its state arrays plus the next position. Stale cache
rows past the position are masked by the graph, so going back to an earlier context is a
rollback; every graph call returns new state arrays, and nothing writes into them afterwards.
"""

from __future__ import annotations

import collections
import time
from dataclasses import dataclass
from typing import Sequence

import numpy as np

from edgevoice.backends.base import Runner
from edgevoice.errors import EdgevoiceError
from edgevoice.runtime.freeze_omni.turn_state import decide_turn_state


@dataclass
class LlmContext:
    """One conversation in the LLM's cache: the state arrays and how many positions they hold."""

    state: dict[str, np.ndarray]
    position: int = 0
    hidden: np.ndarray | None = None  # (hidden,) final-normed state of the last position fed

    def fork(self) -> LlmContext:
        """An independent copy: a later graph call on either side leaves the other as it is."""
        return LlmContext({k: v.copy() for k, v in self.state.items()}, self.position, self.hidden)


@dataclass(frozen=True)
class LlmFacts:
    """What the host needs to know about the package's LLM (manifest ``config``: ``llm`` and ``prompt``)."""

    hidden: int  # embedding width
    max_context: int  # cache positions
    prefill_max_tokens: int  # rows per fo_llm_listen call
    eod_id: int  # <|im_end|>: stops a reply; the next turn prefix starts with it
    turn_prefix_ids: tuple[int, ...]  # "<|im_end|>\n<|im_start|>user\n" before every user turn
    response_prefix_ids: tuple[int, ...]  # "<|im_end|>\n<|im_start|>assistant\n" before every reply
    system_prefix_ids: tuple[int, ...]  # "<|im_start|>system\n"
    system_prompt_ids: tuple[int, ...]  # the prefix and the package's system role, fed once at position 0

    @classmethod
    def from_config(cls, config: dict) -> LlmFacts:
        llm, prompt = config["llm"], config["prompt"]
        return cls(int(llm["hidden"]), int(llm["max_context"]), int(llm["prefill_max_tokens"]), int(prompt["eod_id"]),
                   tuple(prompt["turn_prefix_ids"]), tuple(prompt["response_prefix_ids"]),
                   tuple(prompt["system_prefix_ids"]), tuple(prompt["system_prompt_ids"]))


class TokenEmbeddings:
    """The LLM's token embedding table (vocab, hidden), memory-mapped: token ids never enter a graph."""

    def __init__(self, path, hidden: int):
        try:
            self.table = np.load(path, mmap_mode="r")
        except FileNotFoundError as exc:
            raise EdgevoiceError(f"the token embedding table {path} is missing; re-export the package") from exc
        if self.table.ndim != 2 or self.table.shape[1] != hidden:
            raise EdgevoiceError(f"{path} holds {self.table.shape}, expected (vocab, {hidden}); re-export the package")

    def __call__(self, ids: Sequence[int]) -> np.ndarray:
        return np.asarray(self.table[np.asarray(ids, dtype=np.int64)], dtype=np.float32)  # (N, hidden)


class FoLlm:
    """The ``fo_llm_listen`` graph over ``LlmContext``s; ids go in as rows of the embedding table."""

    def __init__(self, listen: Runner, facts: LlmFacts, embed: TokenEmbeddings, prompt_embeddings: np.ndarray):
        self.runner, self.facts, self.embed = listen, facts, embed
        self.prompt_embeddings = np.asarray(prompt_embeddings, dtype=np.float32)  # (rows, hidden)
        if self.prompt_embeddings.ndim != 2 or self.prompt_embeddings.shape[1] != facts.hidden:
            raise EdgevoiceError(f"the prompt embeddings are {self.prompt_embeddings.shape}, expected (rows, "
                                 f"{facts.hidden}); re-export the package")

    def empty(self) -> LlmContext:
        return LlmContext(self.runner.initial_state(1))

    def _run(self, context: LlmContext, rows: np.ndarray) -> dict[str, np.ndarray]:
        count = rows.shape[1]
        if context.position + count > self.facts.max_context:
            raise EdgevoiceError(f"the LLM cache holds {self.facts.max_context} positions; {context.position} + {count} "
                                 "do not fit (the conversation is too long for this package's max_context)")
        feeds = {"input_embeds": rows, "position": np.array([context.position], dtype=np.int64)}
        outputs = self.runner.infer({**feeds, **context.state})
        wiring = self.runner.component.state
        context.state = {wiring[name]: outputs.pop(name) for name in list(outputs) if name in wiring}
        context.position += count
        context.hidden = outputs["hidden"][0]
        return outputs

    def feed(self, context: LlmContext, rows: np.ndarray) -> dict[str, np.ndarray]:
        """Append embedding rows (T, hidden) in calls of up to ``prefill_max_tokens``; the last call's outputs
        (logits (1, vocab), hidden, state_probs (1, 3) at the last row)."""
        if rows.shape[0] == 0:
            raise EdgevoiceError("the LLM needs at least one row to feed")
        outputs = None
        for start in range(0, rows.shape[0], self.facts.prefill_max_tokens):
            piece = np.ascontiguousarray(rows[None, start : start + self.facts.prefill_max_tokens], dtype=np.float32)
            outputs = self._run(context, piece)
        return outputs

    def feed_ids(self, context: LlmContext, ids: Sequence[int]) -> np.ndarray:
        """Append token ids; the logits (vocab,) after the last."""
        return self.feed(context, self.embed(ids))["logits"][0]


@dataclass(frozen=True)
class ChunkResult:
    """The listen path's verdict on one chunk of a listened-to user turn."""

    index: int  # chunk number since the session started (0, 1, ...)
    probs: np.ndarray  # (3,) listen / respond / dismiss
    decision: str  # 'cl' | 'ss' | 'el' by the reference's rule (turn_state.decide_turn_state)
    turn_start: bool  # this chunk began the turn (turn prefix, prompt embeddings and replayed chunks fed)
    replayed: int  # earlier chunks fed with it at the turn start
    compute_s: float  # wall seconds of the encoder, adapter and LLM calls
    position: int  # LLM positions of the turn's context after this chunk


@dataclass
class _TurnAudio:
    encoder: object  # StatefulStream of fo_encoder
    adapter: object  # StatefulStream of fo_adapter
    context: LlmContext  # fork of the conversation this turn is heard into
    started: bool = False


class FoListener:
    """One conversation's listen path: front-end history and the user turn being listened to."""

    def __init__(self, frontend: Runner, encoder: Runner, adapter: Runner, llm: FoLlm, preroll_chunks: int = 2):
        self.frontend, self.encoder, self.adapter, self.llm = frontend.stream(), encoder, adapter, llm
        self.chunk_samples = int(frontend.component.stream["chunk_samples"])
        self.sample_rate = int(frontend.component.stream["sample_rate"])
        self._history: collections.deque[np.ndarray] = collections.deque(maxlen=preroll_chunks + 1)
        self._turn: _TurnAudio | None = None
        self.chunks = 0  # chunks heard so far

    @property
    def listening(self) -> bool:
        return self._turn is not None

    @property
    def context(self) -> LlmContext | None:
        """The context of the turn being heard (the conversation fork plus the user's audio)."""
        return None if self._turn is None else self._turn.context

    def hear(self, chunk: np.ndarray) -> ChunkResult | None:
        """Run one chunk (2560,) through the front end; through the rest too while a turn is listened to."""
        if chunk.shape != (self.chunk_samples,):
            raise EdgevoiceError(f"the listen path takes chunks of {self.chunk_samples} samples, got {chunk.shape}")
        feats = self.frontend({"chunk": np.ascontiguousarray(chunk[None], dtype=np.float32)})["feats"]  # (1, 19, 80)
        self._history.append(feats)
        index, self.chunks = self.chunks, self.chunks + 1
        if self._turn is None:
            return None
        started = time.perf_counter()
        turn_start = not self._turn.started
        feats_list = list(self._history) if turn_start else [feats]
        audio = np.concatenate([self._embed(self._turn, f) for f in feats_list])  # (2 * chunks, hidden)
        rows = self._turn_start_rows(audio) if turn_start else audio
        probs = self.llm.feed(self._turn.context, rows)["state_probs"][0]
        self._turn.started = True
        return ChunkResult(index, probs, decide_turn_state(probs), turn_start, len(feats_list) - 1,
                           time.perf_counter() - started, self._turn.context.position)

    def begin_turn(self, conversation: LlmContext) -> None:
        """Listen to a new user turn on top of (a fork of) ``conversation``; fresh encoder and adapter,
        as the reference resets their caches and the encoder's position at every turn."""
        self._turn = _TurnAudio(self.encoder.stream(), self.adapter.stream(), conversation.fork())

    def end_turn(self) -> LlmContext | None:
        """Stop listening; the turn's context (None if no turn was listened to)."""
        turn, self._turn = self._turn, None
        return None if turn is None else turn.context

    def _embed(self, turn: _TurnAudio, feats: np.ndarray) -> np.ndarray:
        encoded = turn.encoder({"feats": feats})["encoded"]  # (1, 4, d)
        return turn.adapter({"encoded": encoded})["embeds"][0]  # (2, hidden)

    def _turn_start_rows(self, audio: np.ndarray) -> np.ndarray:
        """The reference's first call of a turn: embedded turn prefix ids, prompt embeddings, audio rows."""
        prefix = self.llm.embed(self.llm.facts.turn_prefix_ids)
        return np.concatenate([prefix, self.llm.prompt_embeddings, audio])  # (P + prompt_rows + 2 * chunks, hidden)
