"""Freeze-Omni's listen path at run time: the LLM contexts and 160 ms of audio -> turn-state probabilities.

Engines only (numpy + any backend). Per chunk of 2560 samples (16 kHz):

    fo_frontend  chunk (1, 2560) -> fbank (1, 19, 80)          runs on every chunk, kept in a short history
    fo_encoder   fbank -> encoder frames (1, 4, d)             only while a user turn is listened to
    fo_adapter   frames -> LLM embeddings (1, 2, hidden)
    fo_llm_listen embeddings -> hidden, state_probs (1, 3)     appended to the turn's LLM context

The front end runs on every chunk so that, when the gate opens, the last six chunks of features
(~960 ms of speech that started before the gate noticed it) are replayed into a fresh encoder and
the LLM one chunk per call, as the reference server replays its fbank history at a VAD start.

The package holds one LLM graph, fed embedding rows: audio rows from the adapter, and token ids
as rows of the embedding table the package ships as host data (system prompt, turn and response
prefixes, reply tokens). An ``LlmContext`` is its state arrays plus the next position. Stale cache
rows past the position are masked by the graph, so going back to an earlier context is a
rollback; every graph call returns new state arrays, and nothing writes into them afterwards.
"""

from __future__ import annotations

import collections
import threading
import time
from dataclasses import dataclass, field
from typing import Sequence

import numpy as np

from edgevoice.backends.base import Runner
from edgevoice.errors import EdgevoiceError
from edgevoice.runtime.freeze_omni.turn_state import decide_turn_state


@dataclass
class LlmContext:
    """One conversation in the LLM's cache: the state arrays and how many positions they hold.

    ``log`` keeps the embedding rows fed so far, by kind, so that a context that runs out of cache
    positions can be rebuilt without its oldest turns (``FoLlm.make_room``). Entries are
    (start position, kind, rows (n, hidden)); kinds: "system" (the system prompt), "header" (a user
    turn's prefix ids and prompt embeddings: an exchange starts here), "audio", "reply", "tool" (a
    tool result's turn: it stays with the exchange that asked for it).
    """

    state: dict[str, np.ndarray]
    position: int = 0
    hidden: np.ndarray | None = None  # (hidden,) final-normed state of the last position fed
    log: list[tuple[int, str, np.ndarray]] = field(default_factory=list)

    def fork(self) -> LlmContext:
        """An independent copy: a later graph call on either side leaves the other as it is."""
        return LlmContext({k: v.copy() for k, v in self.state.items()}, self.position, self.hidden, list(self.log))

    def view(self) -> LlmContext:
        """A copy that shares the arrays (they are never written in place): a snapshot for readers.

        The position is read first: a writer replaces the state before it moves the position, so
        a snapshot taken while another thread feeds never claims rows its arrays do not hold.
        """
        position = self.position
        return LlmContext(self.state, position, self.hidden, list(self.log))

    def at(self, position: int) -> LlmContext:
        """This context cut back to ``position`` (a view: the rows past it are masked, then overwritten)."""
        if not 0 <= position <= self.position:
            raise ValueError(f"position {position} is outside the context's 0..{self.position}")
        cut = self.view()
        cut.position = position
        return cut

    def entries(self) -> list[tuple[int, str, np.ndarray]]:
        """The log up to ``position`` (what a rollback by position left out is dropped)."""
        kept = []
        for start, kind, rows in self.log:
            if start >= self.position:
                break
            kept.append((start, kind, rows[: self.position - start]))
        return kept


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
    """The ``fo_llm_listen`` graph over ``LlmContext``s; ids go in as rows of the embedding table.

    A context never runs out of room: when rows do not fit in ``max_context``, it is re-prefilled
    with the system prompt and the newest exchanges that fill at most ``keep_fraction`` of the
    cache (``make_room``); the reference has no such step (its conversations end at 2048 positions).
    """

    def __init__(self, listen: Runner, facts: LlmFacts, embed: TokenEmbeddings, prompt_embeddings: np.ndarray,
                 keep_fraction: float = 0.5):
        self.runner, self.facts, self.embed = listen, facts, embed
        self.prompt_embeddings = np.asarray(prompt_embeddings, dtype=np.float32)  # (rows, hidden)
        if self.prompt_embeddings.ndim != 2 or self.prompt_embeddings.shape[1] != facts.hidden:
            raise EdgevoiceError(f"the prompt embeddings are {self.prompt_embeddings.shape}, expected (rows, "
                                 f"{facts.hidden}); re-export the package")
        if not 0.0 < keep_fraction < 1.0:
            raise ValueError(f"keep_fraction must be in (0, 1), got {keep_fraction}")
        self.keep_fraction = keep_fraction
        self.trims = 0  # contexts re-prefilled without their oldest turns
        self._swap = threading.Lock()  # a re-prefilled context's fields change together under it

    def snapshot(self, context: LlmContext) -> LlmContext:
        """``context.view()`` that is safe while another thread feeds (and may re-prefill) it."""
        with self._swap:
            return context.view()

    def empty(self) -> LlmContext:
        return LlmContext(self.runner.initial_state(1))

    def _run(self, context: LlmContext, rows: np.ndarray) -> dict[str, np.ndarray]:
        count = rows.shape[1]
        feeds = {"input_embeds": rows, "position": np.array([context.position], dtype=np.int64)}
        outputs = self.runner.infer({**feeds, **context.state})
        wiring = self.runner.component.state
        context.state = {wiring[name]: outputs.pop(name) for name in list(outputs) if name in wiring}
        context.position += count  # after the state: see LlmContext.view
        context.hidden = outputs["hidden"][0]
        return outputs

    def feed(self, context: LlmContext, rows: np.ndarray, kinds: Sequence[tuple[str, int]] = ()) -> dict[str, np.ndarray]:
        """Append embedding rows (T, hidden) in calls of up to ``prefill_max_tokens``; the last call's
        outputs (logits (1, vocab), hidden, state_probs (1, 3) at the last row). ``kinds`` labels the
        rows in the context's log, e.g. (("header", 5), ("audio", 2)); unlabelled rows are "reply" rows."""
        if rows.shape[0] == 0:
            raise EdgevoiceError("the LLM needs at least one row to feed")
        if context.position + rows.shape[0] > self.facts.max_context:
            self.make_room(context, rows.shape[0])
        self._log(context, rows, kinds)
        outputs = None
        for start in range(0, rows.shape[0], self.facts.prefill_max_tokens):
            piece = np.ascontiguousarray(rows[None, start : start + self.facts.prefill_max_tokens], dtype=np.float32)
            outputs = self._run(context, piece)
        return outputs

    def feed_ids(self, context: LlmContext, ids: Sequence[int], kind: str = "reply") -> np.ndarray:
        """Append token ids; the logits (vocab,) after the last."""
        return self.feed(context, self.embed(ids), ((kind, len(ids)),))["logits"][0]

    @staticmethod
    def _log(context: LlmContext, rows: np.ndarray, kinds: Sequence[tuple[str, int]]) -> None:
        log, offset = context.entries(), 0
        for kind, count in [*kinds, ("reply", rows.shape[0] - sum(n for _, n in kinds))]:
            if count > 0:
                log.append((context.position + offset, kind, rows[offset : offset + count]))
                offset += count
        context.log = log

    # --- running out of positions -------------------------------------------------------------

    def make_room(self, context: LlmContext, needed: int) -> None:
        """Re-prefill ``context`` in place with the system prompt and the newest exchanges that fit.

        An exchange is a user turn (header, audio) and the reply to it. When even the newest one
        does not fit, its header stays and its oldest rows go.
        """
        budget = min(self.facts.max_context - needed, int(self.keep_fraction * self.facts.max_context))
        entries = context.entries()
        system = [e for e in entries if e[1] == "system"]
        exchanges = _exchanges([e for e in entries if e[1] != "system"])
        room = budget - sum(len(e[2]) for e in system)
        kept: list[list[tuple[int, str, np.ndarray]]] = []
        for exchange in reversed(exchanges):
            size = sum(len(e[2]) for e in exchange)
            if size > room:
                break
            kept.insert(0, exchange)
            room -= size
        if not kept and exchanges:
            kept = [_tail(exchanges[-1], room)]
        rebuilt = system + [e for exchange in kept for e in exchange]
        if not rebuilt or sum(len(e[2]) for e in rebuilt) > self.facts.max_context - needed:
            raise EdgevoiceError(f"{needed} rows do not fit in the LLM cache of {self.facts.max_context} positions "
                                 "next to the system prompt; export the package with a larger max_context")
        fresh = self.empty()  # one prefill in calls of prefill_max_tokens rows, the log kept entry by entry
        self.feed(fresh, np.concatenate([rows for _, _, rows in rebuilt]), [(kind, len(rows)) for _, kind, rows in rebuilt])
        with self._swap:
            context.state, context.hidden, context.log = fresh.state, fresh.hidden, fresh.log
            context.position = fresh.position
        self.trims += 1


def _exchanges(entries: list[tuple[int, str, np.ndarray]]) -> list[list[tuple[int, str, np.ndarray]]]:
    """``entries`` split before every "header" (the start of a user turn)."""
    groups: list[list[tuple[int, str, np.ndarray]]] = []
    for entry in entries:
        if entry[1] == "header" or not groups:
            groups.append([])
        groups[-1].append(entry)
    return groups


def _tail(exchange: list[tuple[int, str, np.ndarray]], room: int) -> list[tuple[int, str, np.ndarray]]:
    """The exchange's header and as many of its newest other rows as ``room`` leaves."""
    header = [e for e in exchange if e[1] == "header"]
    left = room - sum(len(e[2]) for e in header)
    body: list[tuple[int, str, np.ndarray]] = []
    for start, kind, rows in reversed([e for e in exchange if e[1] != "header"]):
        if left <= 0:
            break
        take = rows[-left:]
        body.insert(0, (start + len(rows) - len(take), kind, take))
        left -= len(take)
    return header + body


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

    def __init__(self, frontend: Runner, encoder: Runner, adapter: Runner, llm: FoLlm, preroll_chunks: int = 6):
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
        # One LLM call per chunk, as the reference server replays its history at a VAD start: the
        # first with the turn header, the replayed ones with their verdicts forced to "keep listening"
        # (ignored here), the current one decides.
        for i, chunk_feats in enumerate(feats_list):
            audio = self._embed(self._turn, chunk_feats)  # (2, hidden)
            if turn_start and i == 0:
                header = self._turn_header()
                rows, kinds = np.concatenate([header, audio]), (("header", len(header)), ("audio", len(audio)))
            else:
                rows, kinds = audio, (("audio", len(audio)),)
            probs = self.llm.feed(self._turn.context, rows, kinds)["state_probs"][0]
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

    def _turn_header(self) -> np.ndarray:
        """What the reference feeds before a turn's audio: embedded turn prefix ids, then the prompt
        embeddings (P + prompt_rows, hidden). The prefix starts with the end-of-turn id, which closes
        whatever came before (a finished reply, or one cut off by a barge-in)."""
        prefix = self.llm.embed(self.llm.facts.turn_prefix_ids)
        return np.concatenate([prefix, self.llm.prompt_embeddings])
