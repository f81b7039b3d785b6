"""The host loops of VocalNet's MTP speech decoder on scripted graphs (no torch, no model).

Reference: omni_speech/model/speech_generator/speech_generator_ar_mtp.py (SJTU-OmniAgent/VocalNet),
``SpeechGeneratorARMTP.predict_mtp`` and ``streaming_predict_mtp``: what each cycle feeds, which
heads the repetition penalty touches and over which window, when a loop stops, and how the cache
lengths (the graphs' position inputs) advance. The real graphs are checked against the goldens
in tests/models/vocalnet/test_speech_decoder_parity.py.
"""

from __future__ import annotations

import numpy as np
import pytest

from edgevoice.errors import EdgevoiceError
from edgevoice.runtime.vocalnet.speech_tokens import (
    MtpRule,
    StreamingUnits,
    apply_repetition_penalty,
    choose_unit,
    predict_units,
)

SOS, EOS, VOCAB, HEADS = 20, 21, 24, 3


class ScriptedGraphs:
    """Each unit call returns logits whose argmax is the next scripted unit of each head."""

    def __init__(self, units: list[int], logits=None):
        self.queue = list(units)
        self.make_logits = logits
        self.text_calls: list[tuple[int, int, int]] = []  # (rows, prenn_len, text_len)
        self.unit_calls: list[tuple[list[int], int, list[int]]] = []  # (tokens, text_len, speech_len)

    def text(self, rows, prenn_len, text_len):
        self.text_calls.append((rows.shape[0], prenn_len, text_len))

    def units(self, tokens, text_len, speech_len):
        self.unit_calls.append((list(tokens), text_len, list(speech_len)))
        if self.make_logits is not None:
            return self.make_logits(len(self.unit_calls) - 1)
        logits = np.zeros((HEADS, VOCAB), np.float32)
        for head in range(HEADS):
            if self.queue:  # heads past the script's end see flat logits (argmax 0); they are never read
                logits[head, self.queue.pop(0)] = 5.0
        return logits


def rows(n: int) -> np.ndarray:
    return np.zeros((n, 4), np.float32)


def test_penalty_divides_once_per_occurrence_negative_logits_too():
    logits = np.array([4.0, -3.0, 1.0, 8.0], np.float32)
    out = apply_repetition_penalty(logits, [0, 1, 0, 3, 0], 2.0)
    np.testing.assert_array_equal(out, np.array([0.5, -1.5, 1.0, 4.0], np.float32))
    np.testing.assert_array_equal(logits, [4.0, -3.0, 1.0, 8.0])  # the input is not changed
    # Divided step by step in float32, like the reference's repeated in-place division.
    odd = apply_repetition_penalty(np.array([1.0], np.float32), [0, 0, 0], 1.1)
    expected = np.float32(1.0)
    for _ in range(3):
        expected = expected / np.float32(1.1)
    assert odd[0] == expected


def test_choose_unit_greedy_and_top_k():
    logits = np.array([0.0, 3.0, 2.9, -1.0], np.float32)
    assert choose_unit(logits) == 1
    rng = np.random.default_rng(0)
    draws = {choose_unit(logits, 2, rng) for _ in range(200)}
    assert draws == {1, 2}
    with pytest.raises(EdgevoiceError, match="random generator"):
        choose_unit(logits, 2)


def test_nonstream_cycles_feed_sos_then_the_last_n_units():
    units = [1, 2, 3, 4, 5, 6, 7, EOS]
    graphs = ScriptedGraphs(units)
    out = predict_units(graphs, rows(4), MtpRule.nonstreaming(SOS, EOS, HEADS, penalty_window=0))
    assert out == [SOS] + units
    assert graphs.text_calls == [(4, 0, 0)]  # BOS is the graph's: text_len 0 asks for it
    assert [c[0] for c in graphs.unit_calls] == [[SOS], [1, 2, 3], [4, 5, 6]]
    assert [c[1] for c in graphs.unit_calls] == [5, 5, 5]  # BOS + 4 rows
    assert [c[2] for c in graphs.unit_calls] == [[0, 0, 0], [1, 1, 1], [4, 4, 4]]


def test_eos_from_an_mtp_head_stops_and_later_heads_do_not_advance():
    graphs = ScriptedGraphs([1, 2, 3, 4, EOS, 9])
    rule = MtpRule.streaming(SOS, EOS, HEADS, penalty_window=0)
    stream = StreamingUnits(graphs, rule)
    assert stream(rows(5), last=True) == [1, 2, 3, 4, EOS]
    # decoder and MTP head 1 ran on both feeds (1 + 3 units); MTP head 2 only on the first
    assert stream.positions.speech_len == [4, 4, 1]


def test_nonstream_penalty_counts_sos_and_spares_the_mtp_heads():
    def logits(call):
        out = np.zeros((HEADS, VOCAB), np.float32)
        out[:, SOS] = 3.0  # the favourite of every head ...
        out[:, 5] = 2.0  # ... unless SOS is halved
        out[:, EOS] = 2.5 if call == 1 else -9.0
        return out

    graphs = ScriptedGraphs([], logits)
    out = predict_units(graphs, rows(2), MtpRule.nonstreaming(SOS, EOS, HEADS))
    # main head: SOS is in the window (3 -> 1.5), so 5 wins; MTP heads: no penalty, SOS wins.
    # Second cycle: main 5 occurs once -> 1.0 and SOS three times -> 0.375, so EOS (2.5) wins.
    assert out == [SOS, 5, SOS, SOS, EOS]


def test_streaming_penalty_window_is_the_calls_own_units_on_every_head():
    def logits(call):
        out = np.zeros((HEADS, VOCAB), np.float32)
        out[:, 7] = 3.0
        out[:, 8] = 2.0
        out[:, EOS] = 1.0 if call < 1 else 1.8
        return out

    stream = StreamingUnits(ScriptedGraphs([], logits), MtpRule.streaming(SOS, EOS, HEADS))
    # main: window empty -> 7; MTP 1: 7 halved to 1.5 -> 8 (2.0); MTP 2: 7 1.5 beats 8 1.0 -> 7.
    # Next cycle's main: 7 twice -> 0.75, 8 -> 1.0, so EOS (1.8) wins.
    assert stream(rows(3), last=True) == [7, 8, 7, EOS]


def test_streaming_chunks_of_units_with_text_arriving_between():
    script = list(range(1, 16)) * 2 + [2, 3, EOS]
    graphs = ScriptedGraphs(script)
    stream = StreamingUnits(graphs, MtpRule.streaming(SOS, EOS, HEADS, penalty_window=0))
    assert stream(rows(5)) == list(range(1, 16))  # 5 cycles of 3, stopped at chunk_units
    assert (stream.positions.prenn_len, stream.positions.text_len, stream.positions.speech_len) == (5, 6, [13] * 3)
    assert stream(rows(5)) == list(range(1, 16))
    assert graphs.text_calls == [(5, 0, 0), (5, 5, 6)]  # no second BOS
    assert graphs.unit_calls[5][0] == [13, 14, 15]  # the new call starts from the last N units
    assert graphs.unit_calls[5][1] == 11  # ... and attends to all text rows so far
    assert stream(None, last=True) == [2, 3, EOS]  # final call without new text rows
    assert graphs.text_calls[-1] == (5, 5, 6)


def test_streaming_final_call_keeps_the_references_chunk_cap():
    """When the budget leaves exactly a chunk's cycle count, the reference stops the final call at chunk_units too."""
    rule = MtpRule.streaming(SOS, EOS, HEADS, penalty_window=0, max_tokens=1 + 15)
    stream = StreamingUnits(ScriptedGraphs(list(range(1, 19))), rule)
    assert stream(rows(2), last=True) == list(range(1, 16))


def test_errors_name_the_fix():
    with pytest.raises(EdgevoiceError, match="needs text rows"):
        StreamingUnits(ScriptedGraphs([]), MtpRule.streaming(SOS, EOS, HEADS))(None)
    with pytest.raises(EdgevoiceError, match="max_text_rows"):
        predict_units(ScriptedGraphs([]), rows(8), MtpRule.nonstreaming(SOS, EOS, HEADS), text_capacity=8)
    with pytest.raises(EdgevoiceError, match="max_speech_rows"):
        predict_units(ScriptedGraphs(list(range(1, 13))), rows(2), MtpRule.nonstreaming(SOS, EOS, HEADS, penalty_window=0),
                      speech_capacity=6)
