"""How VocalNet's streaming reply hands text rows to the speech decoder: chunks, resets, the last chunk.

The fixture's streaming golden (one 22-step reply, no sentence end, < 50 steps) covers none of the
cases here, so the rule is re-stated below from the reference, in its own shape, and our
``TextChunker`` + ``StreamingUnits.run`` are checked against it on many replies.

Reference: SJTU-OmniAgent/VocalNet, omni_speech/model/language_model/omni_speech2s_llama.py,
``OmniSpeech2SLlamaForCausalLM.streaming_generate_mtp`` (its Qwen2 twin is the same loop), with
``SpeechGeneratorARMTP.reset_streaming_cache`` / ``set_last_chunk`` / ``streaming_predict_mtp``
in omni_speech/model/speech_generator/speech_generator_ar_mtp.py, driven by
``VocalNetModelStream.__call__`` in omni_speech/infer/vocalnet_streaming.py (reset_interval=50).
"""

from __future__ import annotations

import numpy as np
import pytest

from edgevoice.runtime.vocalnet.speech_tokens import (
    DEFAULT_RESET_INTERVAL,
    FILLER_UNITS,
    ChunkRule,
    MtpRule,
    SpeechCall,
    StreamingUnits,
    TextChunker,
)

EOT = 99  # <|eot_id|>: a special token, skipped when the window is decoded
END = -1  # label of the embed(<|eot_id|>) row
WIDTH = 3  # hidden width of the fake rows
PIECES = {1: "Hi", 2: " there", 3: ".", 4: "!", 5: "?", 6: " ok", 7: ",", 8: ". "}
SOS, EOS, VOCAB, HEADS = 20, 21, 64, 3


def decode(ids) -> str:
    """A tokenizer's decode with skip_special_tokens=True."""
    return "".join(PIECES.get(int(i), "") for i in ids)


# --- the reference rule, re-stated --------------------------------------------------------------


class RecordingGenerator:
    """Stands in for the speech generator: records each call and each cache reset."""

    def __init__(self, events: list):
        self.events, self.is_last = events, False

    def set_last_chunk(self, is_last: bool) -> None:
        self.is_last = is_last

    def reset_streaming_cache(self) -> None:
        self.events.append(("reset",))
        self.is_last = False

    def streaming_predict_mtp(self, hidden: list | None) -> None:
        self.events.append(("feed", None if hidden is None else tuple(hidden), self.is_last))


def reference_events(tokens: list[int], txt_token_num: int, reset_interval: int, max_len: int = 10**6) -> list:
    """``streaming_generate_mtp``'s loop with rows as labels: real step k's row is k, embed(eot) is END.

    Events: ("feed", rows or None, set_last_chunk), ("yield", fixed units or None, is_last_speech_chunk),
    ("reset",) -- in the order the reference makes them (the start-of-reply reset is left out).
    """
    events: list = []
    gen = RecordingGenerator(events)
    gen.set_last_chunk(False)
    generated_ids, hidden, all_txt_ids = [], [], []
    punct_count = last_punct_reset = 0
    source = iter(tokens)
    while True:
        if len(all_txt_ids) > max_len:  # the reference's forced end: eot with embed(eot) as its row
            last_id, state = EOT, END
        else:
            last_id = next(source)
            all_txt_ids.append(last_id)
            state = len(all_txt_ids)
        punct_count += 1
        generated_ids.append(last_id)
        hidden.append(state)
        cur_text = decode(generated_ids)
        if cur_text and cur_text[-1] in ".!?" and punct_count - last_punct_reset >= reset_interval:
            gen.set_last_chunk(True)
            gen.streaming_predict_mtp(hidden + [END])
            events.append(("yield", None, False))
            generated_ids, hidden = [], []
            gen.reset_streaming_cache()
            gen.set_last_chunk(False)
            last_punct_reset = punct_count
        if len(generated_ids) >= txt_token_num:
            gen.set_last_chunk(False)
            gen.streaming_predict_mtp(list(hidden))
            events.append(("yield", None, False))
            generated_ids, hidden = [], []
        if last_id == EOT:
            gen.set_last_chunk(True)
            if generated_ids and generated_ids[0] != EOT:
                gen.streaming_predict_mtp(hidden + [END])
                events.append(("yield", None, True))
            elif punct_count - last_punct_reset < 2:
                events.append(("yield", FILLER_UNITS, True))
            else:
                gen.streaming_predict_mtp(None)
                events.append(("yield", None, True))
            return events


# --- ours ---------------------------------------------------------------------------------------


def label_rows(rows: np.ndarray | None):
    return None if rows is None else tuple(int(v) for v in rows[:, 0])


def our_events(tokens: list[int], rule: ChunkRule, stop_at_length: bool = False) -> list:
    """TextChunker driven as the pipeline drives it; the same event vocabulary as the reference's.

    ``stop_at_length``: ``tokens`` has no <|eot_id|>; after them the end step carries embed(eot).
    """
    chunker = TextChunker(rule, np.full(WIDTH, END, np.float32), decode)
    calls: list[SpeechCall] = []
    for k, token in enumerate(tokens, start=1):
        calls += chunker.step(token, np.full(WIDTH, k, np.float32), end=token == EOT)
    if stop_at_length:
        calls += chunker.step(EOT, chunker.end_row, end=True)
    events: list = []
    for call in calls:
        if not call.filler:
            events.append(("feed", label_rows(call.rows), call.until_eos))
        events.append(("yield", call.filler or None, call.end_of_reply))
        if call.reset_after:
            events.append(("reset",))
    return events


def reply(text_ids: list[int]) -> list[int]:
    return list(text_ids) + [EOT]


def feeds(events: list) -> list:
    return [e[1:] for e in events if e[0] == "feed"]


# --- the last chunk -------------------------------------------------------------------------------


def test_the_fixture_shape_ends_with_the_rest_plus_the_end_row():
    """21 text steps + eot (the fixture's reply): 4 chunks of 5, then [21, eot's row, END] to EOS."""
    events = our_events(reply([1] * 21), ChunkRule())
    assert events == reference_events(reply([1] * 21), 5, 50)
    assert feeds(events)[-1] == ((21, 22, END), True)
    assert [len(rows) for rows, _ in feeds(events)] == [5, 5, 5, 5, 3]


def test_text_of_a_multiple_of_txt_token_num_drops_the_eot_row():
    """20 text steps: eot opens a new window alone, so its row and END are never fed; the decoder
    finishes from the text it has (``streaming_predict_mtp(None)`` with set_last_chunk(True))."""
    events = our_events(reply([1] * 20), ChunkRule())
    assert events == reference_events(reply([1] * 20), 5, 50)
    assert feeds(events)[-2:] == [((16, 17, 18, 19, 20), False), (None, True)]
    assert events[-1] == ("yield", None, True)


def test_eot_closing_a_chunk_feeds_it_as_a_non_final_chunk_then_finishes_without_text():
    """19 text steps: eot is the 5th of its window, so [16..20] (20 = eot's row) goes as a normal
    15-unit chunk, then a final call with no rows runs to EOS."""
    events = our_events(reply([1] * 19), ChunkRule())
    assert events == reference_events(reply([1] * 19), 5, 50)
    assert feeds(events)[-2:] == [((16, 17, 18, 19, 20), False), (None, True)]


def test_an_empty_reply_speaks_the_fixed_filler_units():
    events = our_events(reply([]), ChunkRule())
    assert events == reference_events(reply([]), 5, 50) == [("yield", FILLER_UNITS, True)]


def test_the_length_limit_ends_with_embed_eot_as_the_last_step():
    """max_len: the forced end step's row is embed(eot) itself, so the last chunk ends [.., END, END]."""
    text = [1] * 13
    events = our_events(text, ChunkRule(), stop_at_length=True)
    assert events == reference_events(text, 5, 50, max_len=12)
    assert feeds(events)[-1] == ((11, 12, 13, END, END), True)


# --- reset_interval -----------------------------------------------------------------------------


def test_a_sentence_end_after_reset_interval_steps_resets_the_decoder():
    """Steps 1..51 'Hi', step 52 '.': at 52 (>= 50 steps) the window [51, 52] + END runs to EOS,
    then the caches reset; the count restarts, so the '.' at 60 does not reset again."""
    text = [1] * 51 + [3] + [1] * 7 + [3] + [1] * 4
    events = our_events(reply(text), ChunkRule())
    assert events == reference_events(reply(text), 5, 50)
    at = events.index(("reset",))
    assert events[at - 2:at + 2] == [("feed", (51, 52, END), True), ("yield", None, False), ("reset",),
                                     ("feed", (53, 54, 55, 56, 57), False)]
    assert events.count(("reset",)) == 1


def test_a_sentence_end_before_reset_interval_steps_changes_nothing():
    text = [1] * 9 + [3] + [1] * 30
    assert ("reset",) not in our_events(reply(text), ChunkRule())
    assert ("reset",) in our_events(reply(text), ChunkRule(reset_interval=10))


def test_only_the_open_window_text_is_looked_at_and_only_its_last_character():
    """At step 50 the window reads 'HiHiHi. there' (ends in 'e') or 'HiHiHiHi. ' (a space): no reset."""
    for text in ([1] * 48 + [3, 2] + [1] * 3, [1] * 49 + [8] + [1] * 3):
        events = our_events(reply(text), ChunkRule())
        assert events == reference_events(reply(text), 5, 50)
        assert ("reset",) not in events
    assert ("reset",) in our_events(reply([1] * 49 + [3] + [1] * 3), ChunkRule())  # '.' at step 50 does


def test_a_reset_on_a_full_window_takes_it_whole_and_no_chunk_follows():
    text = [1] * 54 + [4] + [1] * 3  # step 55 completes a window and ends with '!'
    events = our_events(reply(text), ChunkRule())
    assert events == reference_events(reply(text), 5, 50)
    assert ("feed", (51, 52, 53, 54, 55, END), True) in events
    assert ("feed", (51, 52, 53, 54, 55), False) not in events


def test_a_reset_at_the_eot_step_is_followed_by_the_filler_units():
    """'.' at step 49 (too early), eot at step 50: the window [46..50] decodes to 'HiHiHi.' (eot is
    skipped): reset with the eot row inside, then nothing is left and fewer than 2 steps passed
    since the reset: the fixed units."""
    text = [1] * 48 + [3]
    events = our_events(reply(text), ChunkRule())
    assert events == reference_events(reply(text), 5, 50)
    assert events[-4:] == [("feed", (46, 47, 48, 49, 50, END), True), ("yield", None, False), ("reset",),
                           ("yield", FILLER_UNITS, True)]


def test_a_reset_one_step_before_eot_is_followed_by_the_filler_units():
    text = [1] * 50 + [5]
    events = our_events(reply(text), ChunkRule())
    assert events == reference_events(reply(text), 5, 50)
    assert events[-1] == ("yield", FILLER_UNITS, True)


@pytest.mark.parametrize("seed", range(6))
def test_random_replies_follow_the_reference_schedule(seed):
    """Random replies (sentence ends included), txt_token_num 1..6, reset_interval 1..12, eot or the
    length limit: the same feeds, resets and yields as the re-stated reference, in the same order."""
    rng = np.random.default_rng(seed)
    for _ in range(60):
        txt, interval = int(rng.integers(1, 7)), int(rng.integers(1, 13))
        text = [int(t) for t in rng.choice([1, 2, 3, 4, 5, 6, 7, 8], size=int(rng.integers(0, 40)),
                                           p=[.3, .2, .1, .05, .05, .15, .05, .1])]
        rule = ChunkRule(txt_token_num=txt, reset_interval=interval)
        if rng.random() < 0.8:
            assert our_events(reply(text), rule) == reference_events(reply(text), txt, interval), (text, txt, interval)
        elif text:
            ours = our_events(text, rule, stop_at_length=True)
            assert ours == reference_events(text, txt, interval, max_len=len(text) - 1), (text, txt, interval)


def test_the_manifest_value_is_read_and_older_packages_get_the_reference_default():
    speech = {"txt_token_num": 4, "reset_interval": 7}
    assert ChunkRule.from_config(speech) == ChunkRule(txt_token_num=4, reset_interval=7)
    assert ChunkRule.from_config({"txt_token_num": 5}).reset_interval == DEFAULT_RESET_INTERVAL == 50
    with pytest.raises(Exception, match="reset_interval"):
        ChunkRule(reset_interval=0)


def test_a_chunker_refuses_steps_after_the_end():
    chunker = TextChunker(ChunkRule(), np.zeros(WIDTH, np.float32), decode)
    chunker.step(EOT, np.zeros(WIDTH, np.float32), end=True)
    with pytest.raises(Exception, match="already ended"):
        chunker.step(1, np.zeros(WIDTH, np.float32))


# --- carrying the calls out on a decoder ---------------------------------------------------------


class CountingGraphs:
    """A stub decoder: heads pick 100, 101, ... in turn (ids kept apart from SOS/EOS by an offset),
    and EOS once ``eos_after`` units were chosen since the last reset."""

    def __init__(self, eos_after: int):
        self.eos_after, self.chosen, self.resets = eos_after, 0, 0
        self.text_calls: list[tuple[tuple, int, int]] = []  # (row labels, prenn_len, text_len)
        self.unit_calls: list[list[int]] = []

    def reset(self) -> None:
        self.resets += 1
        self.chosen = 0

    def text(self, rows, prenn_len, text_len) -> None:
        self.text_calls.append((label_rows(rows), prenn_len, text_len))

    def units(self, tokens, text_len, speech_len) -> np.ndarray:
        self.unit_calls.append(list(tokens))
        logits = np.zeros((HEADS, VOCAB), np.float32)
        for head in range(HEADS):
            pick = EOS if self.chosen + head >= self.eos_after else 22 + (self.chosen + head) % 40
            logits[head, pick] = 5.0
        self.chosen += HEADS  # heads after a stop are never read
        return logits


def rows_of(*labels: int) -> np.ndarray:
    return np.array([[v] * WIDTH for v in labels], np.float32)


def test_run_resets_the_decoder_so_the_next_text_starts_over_with_bos_and_sos():
    graphs = CountingGraphs(eos_after=20)
    units = StreamingUnits(graphs, MtpRule.streaming(SOS, EOS, HEADS))
    first = units.run(SpeechCall(rows_of(1, 2, 3, 4, 5), until_eos=False))
    reset = units.run(SpeechCall(rows_of(6, 7, END), until_eos=True, reset_after=True))
    after = units.run(SpeechCall(rows_of(8, 9, 10, 11, 12), until_eos=False))
    assert len(first) == 15 and EOS not in first
    assert len(reset) == 5 and EOS not in reset  # units 15..19, then EOS, which the yield drops
    assert graphs.resets == 1
    # Text positions restart at 0 (the graph prepends BOS again); the first cycle feeds SOS alone.
    assert [c[1:] for c in graphs.text_calls] == [(0, 0), (5, 6), (0, 0)]
    assert graphs.unit_calls[len(graphs.unit_calls) - 5] == [SOS]
    assert len(after) == 15 and units.all_units == [SOS] + after


def test_run_drops_the_last_unit_of_a_call_run_to_eos_even_without_eos():
    """The reference yields ``units[:, :-1]`` for a final call: when the budget ends it first, a real
    unit goes (as there)."""
    graphs = CountingGraphs(eos_after=10**6)
    rule = MtpRule.streaming(SOS, EOS, HEADS, max_tokens=1 + 9)
    units = StreamingUnits(graphs, rule)
    out = units.run(SpeechCall(rows_of(1, 2, END), until_eos=True, end_of_reply=True))
    assert len(out) == 8 and EOS not in out


def test_run_hands_over_the_filler_without_calling_the_decoder():
    graphs = CountingGraphs(eos_after=20)
    units = StreamingUnits(graphs, MtpRule.streaming(SOS, EOS, HEADS))
    assert units.run(SpeechCall(None, until_eos=False, filler=FILLER_UNITS, end_of_reply=True)) == list(FILLER_UNITS)
    assert graphs.text_calls == [] and graphs.unit_calls == []


def test_run_finishes_without_new_text_and_keeps_rows_within_the_text_region():
    graphs = CountingGraphs(eos_after=25)
    units = StreamingUnits(graphs, MtpRule.streaming(SOS, EOS, HEADS), text_capacity=8)
    units.run(SpeechCall(rows_of(1, 2, 3, 4, 5), until_eos=False))
    last = units.run(SpeechCall(rows_of(6, 7, 8, END), until_eos=True, end_of_reply=True))
    assert graphs.text_calls[-1] == ((6,), 5, 6)  # BOS + 5 rows + 1 = 7: one row left for BOS's slot
    assert len(last) == 10  # units 15..24, then EOS (dropped)
    done = StreamingUnits(CountingGraphs(eos_after=18), MtpRule.streaming(SOS, EOS, HEADS))
    done.run(SpeechCall(rows_of(1, 2, 3, 4, 5), until_eos=False))
    assert done.run(SpeechCall(None, until_eos=True, end_of_reply=True)) == [22 + 15, 22 + 16, 22 + 17]
