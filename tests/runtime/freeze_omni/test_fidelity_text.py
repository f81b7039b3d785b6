"""Freeze-Omni's reply text path against the reference code (github VITA-MLLM/Freeze-Omni).

Each test cites the reference function whose behaviour it pins: LLM sampling (top-p), where the
reply is cut into segments, the text clean-up before the speech decoder and the reply length.
"""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from edgevoice.runtime.freeze_omni.pipeline import (
    LIVE_MAX_NEW_TOKENS,
    OFFLINE_MAX_NEW_TOKENS,
    REFERENCE_SAMPLING,
    FreezeOmniPipeline,
)
from edgevoice.runtime.freeze_omni.speak import SegmentRule, clean_segment_text
from edgevoice.runtime.llm import SamplingConfig, sample_token

# --- item 1: top-p ---------------------------------------------------------------------------------


def candidates(probs: list[float], config: SamplingConfig, draws: int = 600) -> set[int]:
    logits = np.log(np.asarray(probs))
    rng = np.random.default_rng(0)
    return {sample_token(logits, config, rng) for _ in range(draws)}


def test_reference_top_p_drops_the_token_that_crosses_p():
    """models/audioLLM.py ``AudioLLM._post_decode``: tokens whose cumulative probability exceeds
    top_p are removed; the shift that keeps the crossing token happens only when the top token
    alone exceeds p. For .5/.25/.15/.1 at p 0.8 (sums .5, .75, .9) that leaves 2 candidates."""
    probs = [0.5, 0.25, 0.15, 0.1]
    reference = SamplingConfig(temperature=1.0, top_p=0.8, top_p_keeps_crossing=False)
    assert candidates(probs, reference) == {0, 1}
    crossing = SamplingConfig(temperature=1.0, top_p=0.8)  # the Hugging Face rule the cascade keeps
    assert candidates(probs, crossing) == {0, 1, 2}


def test_reference_top_p_keeps_the_top_token_when_it_alone_exceeds_p():
    """models/audioLLM.py ``AudioLLM._post_decode``: ``if sorted_indices_to_remove[0]`` shifts the
    mask so the most likely token stays; a sum exactly at p is kept (``>`` removes)."""
    reference = SamplingConfig(temperature=1.0, top_p=0.8, top_p_keeps_crossing=False)
    assert candidates([0.9, 0.06, 0.04], reference) == {0}
    assert candidates([0.5, 0.25, 0.125, 0.125], SamplingConfig(temperature=1.0, top_p=0.75,
                                                                top_p_keeps_crossing=False)) == {0, 1}


def test_freeze_omni_samples_with_the_reference_rule():
    """scripts/run_demo_server.sh (temperature 0.8, top-k 20, top-p 0.8) through models/audioLLM.py
    ``AudioLLM._post_decode``."""
    assert REFERENCE_SAMPLING.top_p == 0.8 and not REFERENCE_SAMPLING.top_p_keeps_crossing
    assert (REFERENCE_SAMPLING.temperature, REFERENCE_SAMPLING.top_k) == (0.8, 20)


# --- item 2: segment cutting ----------------------------------------------------------------------


def cuts(pieces: list[str], rule: SegmentRule = SegmentRule(), first: bool = False) -> list[int]:
    """Indices of the pieces after which ``rule`` cuts, feeding them as a reply does."""
    out, before, pending = [], "", 0
    for i, piece in enumerate(pieces):
        pending += 1
        if rule.cut(piece, pending, first and not out, before=before):
            out.append(i)
            pending = 0
        before += piece
    return out


def test_a_list_number_split_over_two_tokens_is_not_a_sentence_end():
    """bin/server.py ``generate``: a "." increment is no cut when the text before it
    (``last_text``) ends with a digit; Qwen2 writes "1" and "." as two tokens."""
    pieces = [" Here", " are", " the", " steps", " to", " take", " 1", ".", " Open", " the", " box", "."]
    assert cuts(pieces) == [11]  # not after "1."
    assert cuts(pieces, first=True) == [11]
    assert cuts([" Do", " it", " in", " step", " 2", ".", "\n"]) == [6]  # "\n" ends it instead


def test_a_sentence_ends_at_a_stop_after_a_word():
    """bin/server.py ``generate``: sentence ends cut once 4 hidden states wait."""
    assert cuts([" It", " is", " 5", " o", "'clock", "."]) == [5]
    assert cuts([" Hi", "."]) == []  # fewer than 4 states: no cut


def test_no_forced_cut_by_default_and_an_optional_one():
    """bin/server.py ``generate`` cuts only at punctuation; a forced cut is an option."""
    words = [" word"] * 60
    assert cuts(words) == []
    assert cuts(words, SegmentRule(max_tokens=40)) == [39]
    # The speech decoder's capacity still cuts (the pipeline passes it), so no hidden state is lost.
    assert SegmentRule().cut(" word", 128, False, capacity=128)
    assert not SegmentRule().cut(" word", 127, False, capacity=128)


def test_commas_cut_the_first_segment_and_long_later_ones():
    """bin/server.py ``generate``: "," and ":" join the cut marks when ``generate_num == 0`` or
    20 hidden states wait."""
    pieces = [" Well", " now", " then", ","]
    assert cuts(pieces, first=True) == [3]
    assert cuts(pieces) == []
    assert SegmentRule().cut(",", 20, False)


# --- item 3: text clean-up -------------------------------------------------------------------------


@pytest.mark.parametrize("text, expected", [
    ("a、b", "a，b。"),  # enumeration comma -> full-width comma
    ("see (below) now", "see ,below, now。"),  # ASCII brackets -> commas
    ("见（下）好", "见，下，好。"),  # full-width brackets -> full-width commas
    ("one\ntwo\r\tthree.", "onetwothree."),  # line breaks and tabs removed
    ("**bold** _x_ `c` ~s~.", "bold x c s."),  # markdown emphasis removed
    ("Yes. No: maybe.", "Yes.No:maybe."),  # whitespace after "." and ":" removed
    ("Steps: 1. open 2. close.", "Steps:1:open 2:close."),  # "1. x" -> "1:x"
    ("步骤 1. 打开", "步骤 1：打开。"),  # Chinese text: full-width colon
    ("Well,", "Well。"),  # a trailing comma becomes the stop
    ("first;", "first。"),
    ("note:", "note。"),
    ("Hello", "Hello。"),  # no final stop: one is added
    ("Really?", "Really?"),  # a final stop stays
    ("", ""),
])
def test_post_process_rules(text, expected):
    """models/pipeline.py ``inferencePipeline.post_process``, rule by rule."""
    assert clean_segment_text(text) == expected


def test_post_process_keeps_the_leading_space_the_reference_keeps():
    """models/pipeline.py ``inferencePipeline.post_process`` does not strip: Qwen2 tokenizes
    " Sure" and "Sure" differently, so the speech decoder must get the same text."""
    assert clean_segment_text(" Sure, I can help.") == " Sure, I can help."


# --- item 6: reply length --------------------------------------------------------------------------


def test_live_reply_length_is_the_servers():
    """bin/server.py ``generate`` stops after 500 reply tokens; bin/inference.py after 128."""
    assert (LIVE_MAX_NEW_TOKENS, OFFLINE_MAX_NEW_TOKENS) == (500, 128)
    default = inspect.signature(FreezeOmniPipeline).parameters["max_new_tokens"].default
    assert default == LIVE_MAX_NEW_TOKENS
