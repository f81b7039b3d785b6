"""Text to speech at run time with a Piper (VITS) voice: text -> phrases -> phonemes -> ids -> PCM.

Numpy + a backend Runner only (no torch, no onnx): this runs on the device. The pieces:

- ``normalize_text``: whitespace and typography cleanup; characters the voice cannot speak
  (emoji, symbols, scripts other than Latin) are dropped and *counted* — the defined behaviour
  for unpronounceable input, reported as a ``TtsEvent`` rather than a hang or a traceback.
  Numbers, currency and common abbreviations are left to espeak-ng, which reads them out.
- ``split_phrases``: sentences, and over-long sentences at clause punctuation, so the first
  audio of a long reply is ready after its first phrase.
- ``EspeakPhonemizer``: espeak-ng run as a separate program (it is GPL-3.0; we never link it),
  IPA out, one call per clause so the clause punctuation Piper was trained with can be put back
  (espeak's command line drops it).
- ``phoneme_ids``: Piper's id layout, ``^ _ p1 _ p2 _ ... pn _ $`` over NFD codepoints.
- ``PiperVoice`` / ``TtsSession``: one voice (a runner, shared), one session per conversation with
  its own seeded noise generator, so the same seed and text give the same samples on any backend.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import unicodedata
from dataclasses import dataclass
from typing import Iterator, Mapping, Sequence

import numpy as np

from edgevoice.errors import EdgevoiceError
from edgevoice.runtime.text import pack

# Punctuation Piper's phonemizer keeps, and what follows it in the phoneme string: sentence
# marks end the clause, pause marks are followed by a space (as in piper-phonemize).
_SENTENCE_MARKS = ".?!"
_PAUSE_MARKS = ",:;"
# A clause ends at punctuation followed by whitespace or the end, so "3.50" or "e.g" stay whole.
_CLAUSE_RE = re.compile(r"(.*?)([.?!,:;]+)(?=\s|$)|(.+?)$", re.S)
_SENTENCE_END_RE = re.compile(r"(?<=[.?!])[\"')\]]*\s+")
_LANGUAGE_SWITCH_RE = re.compile(r"\([a-z]{2,3}(?:-[a-z0-9]+)?\)")  # espeak's "(fr)...(en)" markers
# An em dash becomes a semicolon pause: what espeak-ng (and so Piper's training data) makes of it.
_TYPOGRAPHY = str.maketrans({"\u2018": "'", "\u2019": "'", "\u201c": '"', "\u201d": '"', "\u2013": "-",
                             "\u2014": "; ", "\u2026": "...", "\u00a0": " "})
_SPEAKABLE_CATEGORIES = ("Zs", "Pd", "Pi", "Pf", "Po", "Ps", "Pe", "Sc", "Sm", "Nd")
MAX_PHRASE_CHARS = 200  # longer sentences are cut at clause marks (VITS cost grows with length)
FIRST_PHRASE_CHARS = 80  # ~1.5 s of speech: the first phrase is cut earlier for a quick first audio
ESPEAK_TIMEOUT_S = 10.0  # one clause; espeak answers in ~15 ms, so this only stops a wedged process
ESPEAK_INSTALL_HINT = (
    "install espeak-ng (Debian/Ubuntu/JetPack: sudo apt-get install espeak-ng; macOS: brew install "
    "espeak-ng) or pass the path of the espeak-ng program"
)


@dataclass(frozen=True)
class TtsEvent:
    """Something the caller should know about a synthesis that still went ahead."""

    kind: str  # "skipped_characters" (text) | "unknown_phonemes" (espeak output not in the voice)
    detail: str  # the characters, deduplicated, in order of appearance
    count: int  # how many were skipped in total
    phrase: int  # index of the phrase in the text it came from (-1: the whole text)


# --- text ---------------------------------------------------------------------------------------

def is_speakable(char: str) -> bool:
    """ASCII, Latin letters (with their accents), spaces, punctuation, currency and math signs."""
    if char.isspace():
        return True  # any whitespace, "\r" included, becomes one space
    if char.isascii():
        return char.isprintable()
    category = unicodedata.category(char)
    if category.startswith("L") or category.startswith("M"):
        return "LATIN" in unicodedata.name(char, "") or category.startswith("M")
    return category in _SPEAKABLE_CATEGORIES


def normalize_text(text: str) -> tuple[str, str]:
    """(cleaned text, characters dropped). Typography is mapped to ASCII, whitespace collapsed."""
    text = unicodedata.normalize("NFC", text).translate(_TYPOGRAPHY)
    kept, dropped = [], []
    for char in text:
        (kept if is_speakable(char) else dropped).append(char)
    cleaned = re.sub(r"\s+", " ", "".join(kept)).strip()
    cleaned = re.sub(r"\s+([,.;:!?])", r"\1", cleaned)  # a dropped emoji leaves "word ," behind
    return cleaned, "".join(dropped)


def split_phrases(text: str, max_chars: int = MAX_PHRASE_CHARS, first_chars: int = 0) -> list[str]:
    """Sentences of ``text``; a sentence over ``max_chars`` is cut after clause marks.

    ``first_chars`` > 0 also cuts the *first* sentence after its last clause mark (",;:") within
    ``first_chars``: time to first audio grows with the first phrase's length, so a long opening
    sentence is worth a pause at its comma. Without such a mark it stays whole (a cut between
    words would be heard).
    """
    phrases = []
    for sentence in _SENTENCE_END_RE.split(text):
        sentence = sentence.strip()
        if not sentence:
            continue
        if not phrases and 0 < first_chars < len(sentence):
            head, sentence = _cut_at_clause(sentence, first_chars)
            phrases.extend([head] if head else [])
        phrases.extend(_cut_long(sentence, max_chars))
    return phrases


def _cut_at_clause(sentence: str, limit: int) -> tuple[str, str]:
    """(head, rest): head is the longest run of whole clauses within ``limit`` ("" if none fits)."""
    head = ""
    for words, marks in clauses(sentence)[:-1]:  # never the last clause: that is the whole sentence
        candidate = head + words + marks
        if len(candidate.strip()) > limit:
            break
        head = candidate
    return head.strip(), sentence[len(head):].strip()


def _cut_long(sentence: str, max_chars: int) -> list[str]:
    if len(sentence) <= max_chars:
        return [sentence]
    pieces = pack(((clause + marks).strip() for clause, marks in clauses(sentence)), max_chars)
    # A clause with no marks at all can still be too long: cut it at word boundaries.
    return [chunk for piece in pieces for chunk in _cut_words(piece, max_chars)]


def _cut_words(text: str, max_chars: int) -> list[str]:
    # A "word" longer than a phrase (a pasted hash, a run of letters) is cut blindly.
    words = (w[i : i + max_chars] for w in text.split(" ") for i in range(0, max(len(w), 1), max_chars))
    return pack(words, max_chars)


def clauses(phrase: str) -> list[tuple[str, str]]:
    """(words, punctuation) pairs: "Hi there, you." -> [("Hi there", ","), (" you", ".")]."""
    found = []
    for match in _CLAUSE_RE.finditer(phrase):
        words, marks, tail = match.group(1), match.group(2), match.group(3)
        if tail is not None:
            words, marks = tail, ""
        if words.strip() or marks:
            found.append((words, marks or ""))
    return found


# --- phonemes -----------------------------------------------------------------------------------

class EspeakPhonemizer:
    """espeak-ng as a subprocess: text -> IPA phonemes with Piper's clause punctuation."""

    def __init__(self, voice: str, program: str | None = None):
        found = program or shutil.which("espeak-ng")
        if found is None or shutil.which(found) is None:
            raise EdgevoiceError(f"the program espeak-ng is needed to turn text into phonemes; {ESPEAK_INSTALL_HINT}")
        self.program = found
        self.voice = voice

    def phonemize(self, phrase: str) -> str:
        """IPA of ``phrase``; each clause's mark kept (".?!" as is, ",:;" plus a space)."""
        parts = []
        for words, marks in clauses(phrase):
            ipa = self._ipa(words) if words.strip() else ""
            mark = _clause_mark(marks)
            parts.append(ipa + mark)
        return "".join(parts).strip()

    def _ipa(self, words: str) -> str:
        # Text goes through stdin, never argv, so a phrase starting with "-" is not an option.
        command = [self.program, "-q", "--ipa", "-v", self.voice, "--stdin"]
        try:
            done = subprocess.run(command, input=words.encode("utf-8"), capture_output=True, timeout=ESPEAK_TIMEOUT_S)
        except subprocess.TimeoutExpired as exc:
            raise EdgevoiceError(f"espeak-ng did not answer within {ESPEAK_TIMEOUT_S:.0f} s; is {self.program} working?") from exc
        except OSError as exc:
            raise EdgevoiceError(f"cannot run {self.program} ({exc}); {ESPEAK_INSTALL_HINT}") from exc
        if done.returncode != 0:
            message = done.stderr.decode("utf-8", "replace").strip().splitlines()
            raise EdgevoiceError(
                f"espeak-ng failed on voice '{self.voice}' ({message[-1] if message else f'exit {done.returncode}'}); "
                f"check that `{self.program} -v {self.voice} hello` works"
            )
        # espeak may cut a clause into several lines (e.g. at "Dr."); they are one clause for us.
        lines = done.stdout.decode("utf-8", "replace").split("\n")
        ipa = " ".join(line.strip() for line in lines if line.strip())
        return _LANGUAGE_SWITCH_RE.sub("", ipa)


def _clause_mark(marks: str) -> str:
    if not marks:
        return " "
    for mark in _SENTENCE_MARKS:  # "?!" reads as a question, "..." as a period
        if mark in marks:
            return mark + " "
    return marks[0] + " " if marks[0] in _PAUSE_MARKS else " "


def phoneme_ids(phonemes: str, id_map: Mapping[str, Sequence[int]]) -> tuple[list[int], str]:
    """Piper's ids ``^ _ p1 _ ... pn _ $`` for ``phonemes``, and the codepoints it had to skip.

    Phonemes are NFD-decomposed first ("ç" -> "c" + cedilla), as the voices were trained.
    """
    pad = list(id_map["_"])
    ids = list(id_map["^"]) + pad
    unknown = []
    for char in unicodedata.normalize("NFD", phonemes):
        if char in id_map:
            ids += list(id_map[char]) + pad
        else:
            unknown.append(char)
    return ids + list(id_map["$"]), "".join(unknown)


# --- voice and session --------------------------------------------------------------------------

@dataclass(frozen=True)
class SynthesisOptions:
    """Per-session knobs; ``None`` takes the voice's trained default from the manifest."""

    noise_scale: float | None = None  # acoustic variation (0 = flat, deterministic mean voice)
    length_scale: float | None = None  # > 1 slower, < 1 faster
    noise_w: float | None = None  # duration variation
    max_phrase_chars: int = MAX_PHRASE_CHARS  # phrase cut for streaming
    first_phrase_chars: int = FIRST_PHRASE_CHARS  # a longer first sentence is cut at a comma (0: never)


class PiperVoice:
    """A Piper voice over a runner of the ``tts`` component; shared by all sessions.

    ``runner.component.stream`` holds the facts the export wrote (see recipes/cascade/piper.py):
    sample_rate, espeak_voice, phoneme_id_map, scales, noise_inputs.
    """

    def __init__(self, runner, espeak_program: str | None = None):
        facts = runner.component.stream
        missing = [k for k in ("sample_rate", "espeak_voice", "phoneme_id_map", "scales", "noise_inputs") if k not in facts]
        if missing:
            raise EdgevoiceError(
                f"component '{runner.component.name}' is not a Piper voice (its manifest lacks {missing}); "
                "export the cascade package again"
            )
        self.runner = runner
        self.sample_rate: int = int(facts["sample_rate"])
        self.id_map: dict[str, list[int]] = facts["phoneme_id_map"]
        self.default_scales: tuple[float, float, float] = tuple(float(s) for s in facts["scales"])
        self.noise_inputs: dict = facts["noise_inputs"]
        self.phonemizer = EspeakPhonemizer(facts["espeak_voice"], espeak_program)
        rng = runner.component.dynamic_dims.get("phonemes")
        self.max_ids = rng.max if rng is not None else None

    @classmethod
    def from_package(cls, package, component: str = "tts", backend: str = "ort", device: str = "cpu") -> "PiperVoice":
        """The voice of a verified engine package (a path or a loaded Manifest)."""
        from edgevoice.backends import open_runner
        from edgevoice.manifest import Manifest, read_manifest

        manifest = package if isinstance(package, Manifest) else read_manifest(package)
        return cls(open_runner(manifest, component, backend=backend, device=device))

    def session(self, seed: int = 0, options: SynthesisOptions = SynthesisOptions()) -> "TtsSession":
        return TtsSession(self, seed, options)

    def scales(self, options: SynthesisOptions) -> np.ndarray:
        noise, length, noise_w = self.default_scales
        return np.array([
            noise if options.noise_scale is None else options.noise_scale,
            length if options.length_scale is None else options.length_scale,
            noise_w if options.noise_w is None else options.noise_w,
        ], dtype=np.float32)

    def noise_frames(self, num_ids: int, length_scale: float) -> int:
        """Prior-noise columns to feed: a generous budget; the graph wraps around past it."""
        rule = self.noise_inputs["noise_z"]
        frames = int(np.ceil(num_ids * rule["frames_per_phoneme"] * max(length_scale, 1.0)))
        rng = self.runner.component.dynamic_dims.get("noise_frames")
        return max(rng.min, min(rng.max, frames)) if rng is not None else frames

    def vits(self, ids: list[int], scales: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        """PCM (float32, mono) for one phrase's ids; noise drawn from ``rng`` (dp first, then z)."""
        n = len(ids)
        # Draw frame-major then transpose, so frame f's noise does not depend on how many are fed.
        noise_dp = rng.standard_normal((n, 2), dtype=np.float32).T[None]  # (1, 2, n)
        frames = self.noise_frames(n, float(scales[1]))
        channels = int(self.noise_inputs["noise_z"]["shape"][1])
        noise_z = rng.standard_normal((frames, channels), dtype=np.float32).T[None]  # (1, 192, frames)
        outputs = self.runner.infer({
            "input": np.asarray(ids, dtype=np.int64)[None],
            "input_lengths": np.array([n], dtype=np.int64),
            "scales": scales,
            "noise_dp": np.ascontiguousarray(noise_dp),
            "noise_z": np.ascontiguousarray(noise_z),
        })
        return outputs["output"].reshape(-1).astype(np.float32, copy=False)  # (1, 1, 1, S) -> (S,)


class PhraseSession:
    """What every voice's session shares: text cleanup, phrase-by-phrase streaming, skip events.

    A voice's session adds ``phrase_ids`` (text -> the model's symbol ids, or None when nothing is
    speakable) and ``render`` (ids -> PCM).
    """

    def __init__(self, voice, options: SynthesisOptions):
        self.voice = voice
        self.options = options
        self.events: list[TtsEvent] = []

    @property
    def sample_rate(self) -> int:
        return self.voice.sample_rate

    def synthesize(self, text: str) -> np.ndarray:
        """The whole reply as one float32 array at ``sample_rate`` (empty for empty text)."""
        parts = list(self.stream(text))
        return np.concatenate(parts) if parts else np.zeros(0, dtype=np.float32)

    def stream(self, text: str) -> Iterator[np.ndarray]:
        """Audio phrase by phrase: each phrase is synthesized only when the caller asks for it."""
        cleaned, dropped = normalize_text(text)
        if dropped:
            self._event("skipped_characters", dropped, -1)
        for index, phrase in enumerate(split_phrases(cleaned, self.options.max_phrase_chars, self.options.first_phrase_chars)):
            ids = self.phrase_ids(phrase, index)
            if ids is not None:
                yield self.render(ids)

    def phrase_ids(self, phrase: str, index: int = 0) -> list[int] | None:
        raise NotImplementedError

    def render(self, ids: list[int]) -> np.ndarray:
        raise NotImplementedError

    def _event(self, kind: str, chars: str, phrase: int) -> None:
        unique = "".join(dict.fromkeys(chars))
        self.events.append(TtsEvent(kind=kind, detail=unique, count=len(chars), phrase=phrase))


class TtsSession(PhraseSession):
    """One conversation's speech with a Piper voice: a seeded noise stream and skip events."""

    def __init__(self, voice: PiperVoice, seed: int = 0, options: SynthesisOptions = SynthesisOptions()):
        super().__init__(voice, options)
        self.rng = np.random.default_rng(seed)

    def render(self, ids: list[int]) -> np.ndarray:
        return self.voice.vits(ids, self.voice.scales(self.options), self.rng)

    def phrase_ids(self, phrase: str, index: int = 0) -> list[int] | None:
        """Piper ids of one phrase, or None when nothing speakable is left."""
        phonemes = self.voice.phonemizer.phonemize(phrase)
        ids, unknown = phoneme_ids(phonemes, self.voice.id_map)
        if unknown:
            self._event("unknown_phonemes", unknown, index)
        if len(ids) <= 3 or not any(c.isalpha() for c in phonemes):
            return None  # only ^ _ $ or bare punctuation: no words, no audio
        if self.voice.max_ids is not None and len(ids) > self.voice.max_ids:
            raise EdgevoiceError(
                f"phrase {index} has {len(ids)} phoneme ids, over the {self.voice.max_ids} the graph was "
                "exported for; pass a smaller max_phrase_chars"
            )
        return ids
