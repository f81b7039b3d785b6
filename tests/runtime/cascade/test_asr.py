"""Whisper through exported ONNX graphs on onnxruntime: transcripts equal faster-whisper's greedy output.

The graphs are exported once per module (about 40 s on 2 cores), hence ``slow``.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest
from conftest import espeak
from edgevoice.export.to_onnx import export_onnx, with_precision
from edgevoice.export.trt_check import check_trt_compatibility
from edgevoice.export.verify import parity

from edgevoice.backends.abort import Abort
from edgevoice.backends.ort import OrtRunner
from edgevoice.errors import EdgevoiceError
from edgevoice.recipes.cascade.whisper import TOKENIZER_FILE, packaged_model_dir, whisper_components
from edgevoice.runtime.cascade.asr import StreamingOptions, StreamingRecognizer, WhisperAsr

pytestmark = pytest.mark.slow

SENTENCES = (
    "The quick brown fox jumps over the lazy dog.",
    "What is the weather like in Paris tomorrow?",
    "Set a timer for twenty five minutes and remind me to call my sister.",
    "I would like to order two large pizzas with mushrooms and extra cheese.",
)


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """(component, manifest entry, onnx path) of asr_encoder and asr_decoder in fp32."""
    out = tmp_path_factory.mktemp("asr_onnx")
    result = {}
    for component in whisper_components():
        fp32 = with_precision(component, "fp32")
        path = out / f"{component.name}.onnx"
        result[component.name] = (fp32, export_onnx(fp32, path, "fp32", max_batch=1), path)
    return result


@pytest.fixture(scope="module")
def asr(exported) -> WhisperAsr:
    (_, enc, enc_path), (decoder, dec, dec_path) = exported["asr_encoder"], exported["asr_decoder"]
    return WhisperAsr(OrtRunner(enc, enc_path), OrtRunner(dec, dec_path), decoder.files[TOKENIZER_FILE])


@pytest.fixture(scope="module")
def faster_whisper_model():
    from faster_whisper import WhisperModel

    return WhisperModel(str(packaged_model_dir()), device="cpu", compute_type="float32", cpu_threads=2)


def faster_whisper_greedy(model, audio: np.ndarray) -> str:
    segments, _ = model.transcribe(
        audio, beam_size=1, temperature=0, without_timestamps=True,
        condition_on_previous_text=False, vad_filter=False,
    )
    return "".join(s.text for s in segments)


@pytest.fixture(scope="module")
def utterances(fixture_recording) -> dict[str, np.ndarray]:
    clips = {text: espeak(text) for text in SENTENCES}
    samples, rate = fixture_recording
    assert rate == 16000
    clips["fixture input.wav"] = samples
    return clips


@pytest.mark.parametrize("name", ["asr_encoder", "asr_decoder"])
def test_graphs_parse_on_tensorrt_10_3(exported, name):
    result = check_trt_compatibility(exported[name][2], "10.3")
    assert result.ok, result


@pytest.mark.parametrize("name", ["asr_encoder", "asr_decoder"])
def test_torch_and_onnxruntime_agree(exported, name):
    component, entry, path = exported[name]
    comparison = parity(component, entry, path)
    assert comparison.ok, comparison


def test_transcripts_equal_faster_whisper_greedy(asr, faster_whisper_model, utterances):
    ours = {name: asr.transcribe(audio).text for name, audio in utterances.items()}
    theirs = {name: faster_whisper_greedy(faster_whisper_model, audio) for name, audio in utterances.items()}
    assert ours == theirs
    # And they are speech, not empty strings that would trivially agree.
    assert all(len(text.split()) >= 5 for text in ours.values())


def test_silence_is_skipped_like_faster_whisper(asr, faster_whisper_model):
    silence = 0.001 * np.random.default_rng(0).standard_normal(32000).astype(np.float32)
    ours = asr.transcribe(silence)
    assert faster_whisper_greedy(faster_whisper_model, silence) == ""  # it drops the window as no speech
    assert ours.text == "" and ours.skipped_windows == 1


def test_streaming_gives_partials_then_the_batch_transcript(asr, utterances):
    audio = utterances[SENTENCES[2]]  # about 4 s
    recognizer = StreamingRecognizer(asr, StreamingOptions(hop_seconds=1.0))
    partials = []
    for start in range(0, audio.size, 1600):  # 100 ms chunks, as a microphone delivers them
        partial = recognizer.feed(audio[start : start + 1600])
        if partial is not None:
            partials.append(partial)
    final = recognizer.finish()
    assert [p.audio_seconds for p in partials] == [float(s) for s in range(1, int(audio.size / 16000) + 1)]
    assert final.text == asr.transcribe(audio).text
    assert final.drafted >= 3  # the last partial drafted the final pass
    # Partials grow toward the final text: the last one, heard most of the audio, shares its start.
    assert partials[-1].text.split()[:3] == final.text.split()[:3]
    assert len(partials[0].text.split()) < len(final.text.split())


def test_recognizer_is_ready_for_the_next_utterance(asr, utterances):
    recognizer = StreamingRecognizer(asr)
    first, second = utterances[SENTENCES[0]], utterances[SENTENCES[1]]
    recognizer.feed(first)
    recognizer.finish()
    recognizer.feed(second)
    assert recognizer.finish().text == asr.transcribe(second).text


def test_finish_without_audio_says_what_to_do(asr):
    with pytest.raises(EdgevoiceError, match="feed"):
        StreamingRecognizer(asr).finish()


def test_encode_refuses_more_than_one_window(asr):
    with pytest.raises(EdgevoiceError, match="split"):
        asr.encode(np.zeros(asr.max_samples + 1, dtype=np.float32))


def test_speech_longer_than_a_window_is_committed_window_by_window(asr, utterances):
    # ~36 s: the sentences back to back, with short pauses, then once more.
    pause = np.zeros(8000, dtype=np.float32)
    pieces = [np.concatenate([utterances[s], pause]) for s in SENTENCES]
    audio = np.concatenate(pieces * 3)[: 36 * 16000]
    assert audio.size > asr.max_samples
    recognizer = StreamingRecognizer(asr, StreamingOptions(hop_seconds=12.0))
    for start in range(0, audio.size, 16000):
        recognizer.feed(audio[start : start + 16000])
    final = recognizer.finish()
    batch = asr.transcribe(audio)
    assert final.text == batch.text
    assert final.audio_seconds == pytest.approx(36.0)
    # Both windows contribute text: the first one's sentences, then the rest's.
    first = asr.transcribe(audio[: asr.max_samples]).text
    assert final.text.startswith(first) and len(final.text[len(first) :].split()) >= 8, final.text


def test_a_stopped_transcription_says_so_and_frees_the_core_at_once(asr, utterances):
    audio = next(iter(utterances.values()))
    whole = asr.transcribe(audio)
    assert not whole.stopped and asr.transcribe(audio, stop=lambda: False).tokens == whole.tokens

    before_decoding = asr.transcribe(audio, stop=lambda: True)  # dropped while the encoder ran
    assert before_decoding.stopped and before_decoding.tokens == () and before_decoding.decode_seconds == 0.0

    asked = []

    def after_three_steps() -> bool:
        asked.append(1)
        return len(asked) > 4  # once after the encode, then before each decoder step

    cut = asr.transcribe(audio, stop=after_three_steps)
    assert cut.stopped and 0 < len(cut.tokens) < len(whole.tokens)
    assert cut.tokens == whole.tokens[: len(cut.tokens)]  # what it decoded is the start of the whole


def test_an_abort_stops_the_encoder_mid_call(asr, utterances):
    """The listen loop drops a speculation from its own thread: the encoder call in flight ends
    there (onnxruntime's terminate flag), and the transcription returns as stopped."""
    audio = next(iter(utterances.values()))
    whole = asr.transcribe(audio)
    assert asr.transcribe(audio, abort=Abort()).tokens == whole.tokens

    set_before = Abort()
    set_before.set()
    assert asr.transcribe(audio, stop=lambda: False, abort=set_before).stopped

    session, real_run = asr.encoder.session, asr.encoder.session.run
    terminated = []

    def run_and_abort_meanwhile(names, feeds, run_options=None):
        threading.Timer(0.005, abort.set).start()  # the encoder takes ~0.1 s or more
        try:
            return real_run(names, feeds, run_options)
        except Exception:
            terminated.append(run_options.terminate)
            raise

    for _ in range(3):  # a timer thread descheduled past the whole call would miss it: try again
        abort = Abort()
        session.run = run_and_abort_meanwhile
        try:
            stopped = asr.transcribe(audio, abort=abort)
        finally:
            session.run = real_run
        if terminated:
            break
    assert terminated == [True], "the encoder was never stopped mid-call"
    assert stopped.stopped and stopped.tokens == () and stopped.decode_seconds == 0.0


def counting_decoder_calls(asr: WhisperAsr) -> list[int]:
    """Counts the decoder calls ``asr`` makes from now on (one entry per call: tokens fed)."""
    calls, make_stream = [], asr.decoder.stream

    def stream(batch):
        step = make_stream(batch)

        def counted(feeds):
            calls.append(feeds["tokens"].shape[1])
            return step(feeds)
        return counted

    asr.decoder.stream = stream
    return calls


def common_prefix(a: tuple[int, ...], b: tuple[int, ...]) -> int:
    return next((i for i, (x, y) in enumerate(zip(a, b)) if x != y), min(len(a), len(b)))


def test_a_draft_gives_the_greedy_transcript_in_fewer_decoder_calls(asr, utterances):
    calls, confirmed = counting_decoder_calls(asr), []
    try:
        for name, audio in utterances.items():
            whole = asr.transcribe(audio)
            start = asr.transcribe(audio[: int(audio.size * 0.6)])  # what a partial heard earlier
            drafts = {
                "own": whole.tokens, "earlier": start.tokens, "wrong": tuple(reversed(start.tokens)),
                "too long": whole.tokens + start.tokens, "special ids": (asr.eot, *whole.tokens),
            }
            for kind, draft in drafts.items():
                calls.clear()
                drafted = asr.transcribe(audio, draft=draft)
                assert drafted.tokens == whole.tokens and drafted.text == whole.text, (name, kind)
                # Each call yields the draft tokens it confirmed plus one of its own (end-of-text last).
                assert len(calls) == len(whole.tokens) + 1 - drafted.drafted, (name, kind, calls)
                if kind == "own":  # the whole transcript confirmed, and end-of-text read, in one call
                    assert calls == [len(asr.prompt) + len(whole.tokens)]
                if kind == "earlier":  # what a partial would give: confirmed past where it first differs
                    assert drafted.drafted >= common_prefix(start.tokens, whole.tokens), name
                    confirmed.append((drafted.drafted, len(whole.tokens)))
            capped = asr.transcribe(audio, max_new_tokens=3, draft=whole.tokens)
            assert capped.tokens == whole.tokens[:3]
        # 27 of 57 tokens when written (2, 7, 5, 7, 6 per clip).
        assert sum(d for d, _ in confirmed) >= 0.4 * sum(n for _, n in confirmed), confirmed
    finally:
        del asr.decoder.stream  # back to the class's method
