"""Where the reply's text is cut into phrases for the voice (``runtime.cascade.phrases``)."""

from __future__ import annotations

import re

import pytest

from edgevoice.runtime.cascade.phrases import (
    FIRST_PHRASE_MAX_WORDS,
    FIRST_PHRASE_MIN_WORDS,
    phrase_cut,
)


def streamed_cut(text: str) -> str:
    """The first phrase as the LLM's text grows a word (with its leading space) at a time, as a
    reply streams: common English words are one token each."""
    streamed = ""
    for piece in re.findall(r"\s*\S+", text):
        streamed += piece
        cut = phrase_cut(streamed, 0, first=True)
        if cut:
            return streamed[:cut].strip()
    return text.strip()  # the reply ended: the rest is spoken as it is


def test_sentences_and_first_clauses():
    assert phrase_cut("The capital of France is Paris.", 0) == len("The capital of France is Paris.")
    assert phrase_cut("Yes. It is", 0) == 0  # too short to speak alone
    text = "To make a cup of tea, start by boiling"
    assert phrase_cut(text, 0) == 0 and phrase_cut(text, 0, first=True) == len("To make a cup of tea, ")


@pytest.mark.parametrize("reply, first_phrase", [
    # Before a word that opens a phrase, after one that does not lean on the next.
    ("Jupiter is the largest planet in our solar system.", "Jupiter is the largest planet"),
    ("The largest planet in the solar system is Jupiter.", "The largest planet in the solar system"),
    ("The speed of light is approximately 299,792 kilometers a second.", "The speed of light is approximately"),
    # A short sentence is not cut at all: the boundary would leave one word ("... in a | week").
    ("There are seven days in a week.", "There are seven days in a week."),
    ("There are seven days in a week, and each one has a name.", "There are seven days in a week,"),
])
def test_a_long_first_sentence_is_cut_where_a_speaker_would_pause(reply, first_phrase):
    assert streamed_cut(reply) == first_phrase


def test_the_first_cut_is_never_after_a_word_that_leans_on_the_next():
    # No phrase-opening word follows anywhere: the cut comes after the first word that may end one.
    reply = "Sure thing my friend here comes one very long answer about the things you asked."
    first = streamed_cut(reply)
    assert len(first.split()) >= FIRST_PHRASE_MAX_WORDS
    assert first.split()[-1] not in {"the", "a", "very", "my", "about", "you"}
    assert reply.startswith(first)


def test_the_word_being_written_is_judged_as_it_stands():
    text = "The largest planet in the solar system i"  # not (yet) a word that opens a phrase
    assert phrase_cut(text, 0, first=True) == 0
    cut = phrase_cut(text + "s", 0, first=True)  # "is": no need to wait for the token after it
    assert text[:cut].split() == ["The", "largest", "planet", "in", "the", "solar", "system"]
    assert phrase_cut("The largest planet in the sol", 0, first=True) == 0  # whole words only before it


def test_later_phrases_wait_for_punctuation():
    spoken = "Jupiter is big. "
    text = spoken + "It has more moons than any other planet in"
    assert phrase_cut(text, len(spoken), first=False) == 0
    assert FIRST_PHRASE_MIN_WORDS < len(text[len(spoken):].split())


def test_a_number_is_not_cut_at_its_decimal_point():
    # The LLM writes "299." and then "792": the period is a sentence end only once a space follows.
    assert phrase_cut("The answer is 299.", 0) == 0
    assert phrase_cut("The answer is 299.792 meters.", 0) == len("The answer is 299.792 meters.")
    assert phrase_cut("The answer is yes.", 0) == len("The answer is yes.")  # a word's period ends it at once


def test_a_bracket_opens_a_phrase_as_soon_as_it_is_written():
    text = "The moon is about 384,400 kilometers ("
    assert text[: phrase_cut(text, 0, first=True)].split() == ["The", "moon", "is", "about", "384,400", "kilometers"]
