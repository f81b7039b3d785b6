"""Host side of VocalNet's MTP speech decoder: choosing units, the repetition penalty, stopping.

The decoder graphs (``speech_text`` and ``speech_units``, see the model's docstring) return logits
of the main head and of N-1 MTP heads for the units fed; everything data-dependent is here, in
numpy, reproducing the reference's loops (``SpeechGeneratorARMTP.predict_mtp`` and
``streaming_predict_mtp`` in omni_speech/model/speech_generator/speech_generator_ar_mtp.py):

* a *cycle* feeds units to the decoder (SOS alone in the very first cycle, then the last N
  units), takes the main head's next unit from the last position, then one unit from each MTP
  head in turn: N units per cycle from one graph call;
* repetition penalty: every id in the last ``window`` generated units divides its logit by
  ``penalty`` once per occurrence (the reference iterates a ``set`` of 0-d tensors, which never
  merges equal ids), negative logits included. Non-streaming: main head only, the window counts
  SOS. Streaming: main and MTP heads, the window holds this call's units only;
* choice: top-k sampling (k = 1, the reference's setting, is argmax);
* stop: any head choosing EOS ends the loop (EOS is returned, as the reference returns it);
  non-streaming also stops at ``max_tokens`` units including SOS; a non-final streaming call stops
  after ``chunk_units`` units, the final one runs until EOS or the unit budget.

Bookkeeping the graphs need (``DecoderPositions``): the pre-NN rows, the text rows (BOS + pre-NN
rows, shared by every module) and, per module, the units fed so far. A module the reference did
not run in a cycle (it stopped after an earlier head) is not advanced.

Which text rows reach the decoder, and when, is the LLM side's schedule
(``OmniSpeech2SLlamaForCausalLM.streaming_generate_mtp`` in
omni_speech/model/language_model/omni_speech2s_llama.py): ``TextChunker`` turns LLM steps into
``SpeechCall`` hand-offs (``txt_token_num`` chunks, the ``reset_interval`` sentence reset, the
last chunk at <|eot_id|>) and ``StreamingUnits.run`` carries one out.

Nothing here imports torch: the runtime drives the graphs through any backend.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from edgevoice.errors import EdgevoiceError


class MtpDecoderGraphs(Protocol):
    """The two decoder graphs over one state, as a backend adapter exposes them (state kept inside)."""

    def text(self, rows: np.ndarray, prenn_len: int, text_len: int) -> None:
        """Feed LLM hidden rows (R, D); BOS is prepended by the graph when text_len == 0."""

    def units(self, tokens: Sequence[int], text_len: int, speech_len: Sequence[int]) -> np.ndarray:
        """Feed K units; logits (N, V) of the main head and each MTP head at the last position."""

    def reset(self) -> None:
        """Empty every cache (a new utterance for the decoder)."""


@dataclass(frozen=True)
class MtpRule:
    """How units are chosen and when the loop stops. Build with ``nonstreaming`` or ``streaming``."""

    sos_id: int
    eos_id: int
    heads: int  # N: units per cycle (1 + the MTP heads used)
    penalty_window: int  # generated units the penalty looks back over; <= 0 disables it
    penalty: float  # divisor per occurrence
    penalize_mtp: bool  # also penalize the MTP heads (streaming does, non-streaming does not)
    history_has_sos: bool  # the penalty window starts with SOS (non-streaming)
    max_tokens: int = 2048  # unit budget including SOS
    chunk_units: int = 15  # units per non-final streaming call (speech_token_num)
    top_k: int = 1  # 1 = greedy, the reference's setting

    def __post_init__(self) -> None:
        if self.heads < 1 or self.top_k < 1 or self.chunk_units < 1:
            raise EdgevoiceError("heads, top_k and chunk_units must be at least 1 (the reference uses 3, 1 and 15)")

    @classmethod
    def nonstreaming(cls, sos_id: int, eos_id: int, heads: int, **overrides) -> MtpRule:
        """``predict_mtp`` defaults: window 5 over SOS + units, penalty 2, main head only."""
        fields = {"penalty_window": 5, "penalty": 2.0, "penalize_mtp": False, "history_has_sos": True}
        return cls(sos_id=sos_id, eos_id=eos_id, heads=heads, **{**fields, **overrides})

    @classmethod
    def streaming(cls, sos_id: int, eos_id: int, heads: int, **overrides) -> MtpRule:
        """``streaming_predict_mtp`` defaults: window 6 over this call's units, penalty 2, every head."""
        fields = {"penalty_window": 6, "penalty": 2.0, "penalize_mtp": True, "history_has_sos": False}
        return cls(sos_id=sos_id, eos_id=eos_id, heads=heads, **{**fields, **overrides})


def apply_repetition_penalty(logits: np.ndarray, recent: Sequence[int], penalty: float) -> np.ndarray:
    """A copy of logits (V,) with each id of ``recent`` divided by ``penalty`` once per occurrence.

    Divided one occurrence at a time (not by penalty ** count) so float32 rounding matches the
    reference for any penalty, not only powers of two.
    """
    out = np.array(logits, dtype=np.float32, copy=True)
    divisor = np.float32(penalty)
    for token in recent:
        out[int(token)] = out[int(token)] / divisor
    return out


def choose_unit(logits: np.ndarray, top_k: int = 1, rng: np.random.Generator | None = None) -> int:
    """Top-k sampling as the reference does it; top_k = 1 is argmax (ties to the lowest id)."""
    if top_k == 1:
        return int(np.argmax(logits))
    if rng is None:
        raise EdgevoiceError("top-k sampling with k > 1 needs a random generator; pass rng or use top_k=1")
    scores = np.asarray(logits, dtype=np.float64)
    top = np.argsort(-scores, kind="stable")[:top_k]
    weights = np.exp(scores[top] - scores[top[0]])  # softmax restricted to the top k, renormalized
    return int(rng.choice(top, p=weights / weights.sum()))


@dataclass
class DecoderPositions:
    """Valid rows of each cache region: what the graphs' position inputs are made of."""

    heads: int
    prenn_len: int = 0  # pre-NN rows
    text_len: int = 0  # BOS + pre-NN rows through the decoder (every module alike)
    speech_len: list[int] = field(default_factory=list)  # units fed to each module (0 = decoder)

    def __post_init__(self) -> None:
        self.speech_len = self.speech_len or [0] * self.heads


def _check_room(used: int, adding: int, capacity: int | None, what: str) -> None:
    if capacity is not None and used + adding > capacity:
        raise EdgevoiceError(
            f"the speech decoder's {what} holds {capacity} rows and {used + adding} are needed; "
            f"export it with a larger max_{what.replace(' ', '_')}"
        )


class _Decoder:
    """Graph calls with position bookkeeping and capacity checks, shared by both loops."""

    def __init__(self, graphs: MtpDecoderGraphs, rule: MtpRule, text_capacity: int | None, speech_capacity: int | None):
        self.graphs, self.rule = graphs, rule
        self.text_capacity, self.speech_capacity = text_capacity, speech_capacity
        self.positions = DecoderPositions(rule.heads)

    def feed_text(self, rows: np.ndarray) -> None:
        p = self.positions
        extra = 1 if p.text_len == 0 else 0  # the graph prepends BOS on the first call
        _check_room(p.text_len, rows.shape[0] + extra, self.text_capacity, "text rows")
        self.graphs.text(rows, p.prenn_len, p.text_len)
        p.prenn_len += rows.shape[0]
        p.text_len += rows.shape[0] + extra

    def feed_units(self, tokens: list[int]) -> np.ndarray:
        p = self.positions
        _check_room(max(p.speech_len), len(tokens), self.speech_capacity, "speech rows")
        return self.graphs.units(tokens, p.text_len, list(p.speech_len))

    def cycle(self, fed: list[int], generated: list[int], history: list[int], first: bool, limit: int | None,
              rng) -> tuple[list[int], bool]:
        """One graph call and up to N units; returns (units to feed next, stop?).

        ``history`` is the penalty window's source (it grows with ``generated``); ``first`` marks
        the reference's first cycle, where the fed units keep growing instead of sliding; ``limit``
        stops after that many generated units (a non-final streaming call).
        """
        rule, p = self.rule, self.positions
        logits = self.feed_units(fed)  # (N, V)
        nxt = list(fed)
        for head in range(rule.heads):
            scores = logits[head]
            if rule.penalty_window > 0 and (head == 0 or rule.penalize_mtp):
                scores = apply_repetition_penalty(scores, history[-rule.penalty_window:], rule.penalty)
            unit = choose_unit(scores, rule.top_k, rng)
            p.speech_len[head] += len(fed)  # this module ran on the fed units
            generated.append(unit)
            history.append(unit)
            nxt = nxt + [unit] if (first and head > 0) else (nxt + [unit])[1:]
            if unit == rule.eos_id or (limit is not None and len(generated) >= limit):
                return nxt, True
        return nxt[-rule.heads:], False


def predict_units(
    graphs: MtpDecoderGraphs, rows: np.ndarray, rule: MtpRule, rng: np.random.Generator | None = None,
    text_capacity: int | None = None, speech_capacity: int | None = None,
) -> list[int]:
    """``predict_mtp``: one segment's LLM rows (R, D) -> [SOS, units..., EOS] (EOS absent at the budget).

    The reference hands ``[1:-1]`` of this to the vocoder.
    """
    decoder = _Decoder(graphs, rule, text_capacity, speech_capacity)
    decoder.feed_text(np.asarray(rows, dtype=np.float32))
    out, fed = [rule.sos_id], [rule.sos_id]
    history = [rule.sos_id] if rule.history_has_sos else []
    while len(out) < rule.max_tokens:
        generated: list[int] = []
        # The reference's first-cycle test: SOS + the main head's unit is all there is so far.
        first = len(out) + 1 <= rule.heads + 1
        fed, stop = decoder.cycle(fed, generated, history, first, None, rng)
        out += generated
        if stop:
            break
    return out


class StreamingUnits:
    """``streaming_predict_mtp``: text rows arrive chunk by chunk; each call returns that call's units.

    New units attend to every text row received so far (the chunk-limited attention of training:
    units of call k see the first k chunks of text), to all units fed before, and to themselves
    causally. A non-final call returns ``chunk_units`` units; the final call (``last=True``) runs
    until EOS (returned at the end, as the reference returns it) or the unit budget.
    """

    def __init__(self, graphs: MtpDecoderGraphs, rule: MtpRule, rng: np.random.Generator | None = None,
                 text_capacity: int | None = None, speech_capacity: int | None = None):
        self.graphs, self.rule, self.rng = graphs, rule, rng
        self.text_capacity, self.speech_capacity = text_capacity, speech_capacity
        self._decoder = _Decoder(graphs, rule, text_capacity, speech_capacity)
        self.all_units = [rule.sos_id]  # SOS + every unit returned since the last reset

    @property
    def positions(self) -> DecoderPositions:
        return self._decoder.positions

    def reset(self) -> None:
        """``reset_streaming_cache``: empty caches, so the next call starts over with BOS and SOS."""
        self.graphs.reset()
        self._decoder = _Decoder(self.graphs, self.rule, self.text_capacity, self.speech_capacity)
        self.all_units = [self.rule.sos_id]

    def run(self, call: SpeechCall) -> list[int]:
        """One hand-off as the reference's generator yields it: the units it gives the vocoder.

        A call run until EOS loses its last unit (the reference yields ``units[:, :-1]``: the EOS,
        or a real unit when the budget ran out first); a non-final call keeps every unit.
        """
        if call.filler:
            units = list(call.filler)
        else:
            rows = self._fitting(call.rows)
            units = self(rows, last=call.until_eos) if rows is not None or self.positions.text_len else []
            units = units[:-1] if call.until_eos else units
        if call.reset_after:
            self.reset()
        return units

    def _fitting(self, rows: np.ndarray | None) -> np.ndarray | None:
        """The rows that fit the text region; a full region takes no more text (the speech goes on)."""
        if rows is None or self.text_capacity is None:
            return rows
        room = self.text_capacity - self.positions.text_len - 1  # one row kept for BOS on a first call
        rows = rows[: max(0, room)]
        return rows if rows.shape[0] else None

    def __call__(self, rows: np.ndarray | None, last: bool = False) -> list[int]:
        rule, decoder = self.rule, self._decoder
        if rows is None and decoder.positions.text_len == 0:
            raise EdgevoiceError("the first streaming call needs text rows; the decoder has nothing to speak from")
        started = decoder.positions.text_len > 0
        if rows is not None:
            decoder.feed_text(np.asarray(rows, dtype=np.float32))
        fed = self.all_units[-rule.heads:] if started else [rule.sos_id]
        chunk_cycles = math.ceil(rule.chunk_units / rule.heads)
        cycles = math.ceil((rule.max_tokens - len(self.all_units)) / rule.heads) if last else chunk_cycles
        # The reference caps a call at chunk_units whenever its cycle count equals a chunk's, even
        # on the final call (when the budget happens to leave that many cycles): kept as it is.
        limit = rule.chunk_units if cycles == chunk_cycles else None
        generated: list[int] = []
        history: list[int] = []  # the penalty looks at this call's units only
        for _ in range(cycles):
            first = len(self.all_units) == 1 and len(generated) + 1 < rule.heads
            fed, stop = decoder.cycle(fed, generated, history, first, limit, self.rng)
            if stop:
                break
        self.all_units += generated
        return generated


# --- the LLM side's hand-off schedule (streaming_generate_mtp) ----------------------------------

DEFAULT_RESET_INTERVAL = 50  # VocalNetModelStream's reset_interval (packages exported before it was written)
SENTENCE_ENDS = ".!?"  # streaming_generate_mtp's punctuation_set
# What the reference hands the vocoder when a reply ends right after a reset (two CosyVoice2 ids,
# fixed in its code); ids outside a package's unit vocabulary are dropped by the caller.
FILLER_UNITS = (6324, 4137)


@dataclass(frozen=True)
class ChunkRule:
    """How LLM steps are grouped for the speech decoder (the streaming call's arguments)."""

    txt_token_num: int = 5  # text rows per non-final decoder call
    reset_interval: int = DEFAULT_RESET_INTERVAL  # LLM steps before a sentence end may reset the decoder
    sentence_ends: str = SENTENCE_ENDS
    filler_units: tuple[int, ...] = FILLER_UNITS

    def __post_init__(self) -> None:
        if self.txt_token_num < 1 or self.reset_interval < 1:
            raise EdgevoiceError("txt_token_num and reset_interval must be at least 1 (the reference uses 5 and 50)")

    @classmethod
    def from_config(cls, speech: dict) -> ChunkRule:
        """From the manifest's ``speech`` section (``reset_interval`` defaults to the reference's 50)."""
        return cls(txt_token_num=int(speech["txt_token_num"]),
                   reset_interval=int(speech.get("reset_interval", DEFAULT_RESET_INTERVAL)))


@dataclass(frozen=True)
class SpeechCall:
    """One hand-off to the speech decoder, as one yield of the reference's generator."""

    rows: np.ndarray | None  # (R, D) new text rows; None: the decoder goes on from the text it has
    until_eos: bool  # the reference's set_last_chunk(True): run to EOS, not ``speech_token_num`` units
    reset_after: bool = False  # reset_streaming_cache() follows (reset_interval)
    filler: tuple[int, ...] = ()  # units handed over without calling the decoder
    end_of_reply: bool = False  # the vocoder's last chunk (is_last_speech_chunk)


class TextChunker:
    """``streaming_generate_mtp``'s schedule: each LLM step in, the decoder calls it triggers out.

    A step is the token and the hidden state that produced it (D,); the end step is <|eot_id|>
    with its own row, or, when the reply hits the length limit, the end row itself (the
    reference's ``max_len`` path). The open *window* holds the steps not yet handed over. In the
    reference's order, after adding a step:

    1. reset: at least ``reset_interval`` steps since the last reset and the window's text
       (decoded, special tokens skipped) ending in . ! or ? -> the window's rows plus the end row,
       run to EOS, then the decoder is reset (the vocoder is not: the reply goes on);
    2. chunk: ``txt_token_num`` rows in the window -> a non-final call with them;
    3. end of reply:
       a. the window holds rows besides the end step's -> they (the end step's row included) plus
          the end row, run to EOS;
       b. otherwise, fewer than 2 steps since the last reset (a reply that is only <|eot_id|>, or a
          reset at this step or the one before) -> the fixed filler units;
       c. otherwise -> no new text, run to EOS. So a reply whose text is a multiple of
          ``txt_token_num`` never feeds <|eot_id|>'s row nor the end row, and one where
          <|eot_id|> completes a chunk feeds that chunk as a non-final call first.
    """

    def __init__(self, rule: ChunkRule, end_row: np.ndarray, decode: Callable[[Sequence[int]], str]):
        self.rule, self.decode = rule, decode
        self.end_row = np.asarray(end_row, np.float32).reshape(1, -1)  # (1, D): embed(<|eot_id|>)
        self.window_ids: list[int] = []
        self.window_rows: list[np.ndarray] = []  # each (D,)
        self.since_reset = 0  # steps since the last reset (the reference's punct_count - last_punct_reset)
        self.ended = False

    def step(self, token: int, row: np.ndarray, end: bool = False) -> list[SpeechCall]:
        """Add one LLM step; ``end`` marks the last one (<|eot_id|> or the length limit)."""
        if self.ended:
            raise EdgevoiceError("this reply already ended; start a new TextChunker for the next reply")
        self.window_ids.append(int(token))
        self.window_rows.append(np.asarray(row, np.float32).reshape(-1))
        self.since_reset += 1
        calls = []
        if self.since_reset >= self.rule.reset_interval and self._window_ends_sentence():
            calls.append(SpeechCall(self._take_window(with_end_row=True), until_eos=True, reset_after=True))
            self.since_reset = 0
        if len(self.window_ids) >= self.rule.txt_token_num:
            calls.append(SpeechCall(self._take_window(with_end_row=False), until_eos=False))
        if end:
            self.ended = True
            calls.append(self._last_call())
        return calls

    def _window_ends_sentence(self) -> bool:
        text = self.decode(self.window_ids)
        return bool(text) and text[-1] in self.rule.sentence_ends

    def _take_window(self, with_end_row: bool) -> np.ndarray | None:
        rows = [r[None] for r in self.window_rows] + ([self.end_row] if with_end_row else [])
        self.window_ids, self.window_rows = [], []
        return np.concatenate(rows) if rows else None  # (R, D)

    def _last_call(self) -> SpeechCall:
        if len(self.window_ids) > 1:  # the end step is always the window's last
            return SpeechCall(self._take_window(with_end_row=True), until_eos=True, end_of_reply=True)
        self._take_window(with_end_row=False)  # the end step's row alone is never fed
        if self.since_reset < 2:
            return SpeechCall(None, until_eos=False, filler=self.rule.filler_units, end_of_reply=True)
        return SpeechCall(None, until_eos=True, end_of_reply=True)
