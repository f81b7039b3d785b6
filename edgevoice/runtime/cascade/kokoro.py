"""Text to speech at run time with Kokoro-82M: text -> phrases -> espeak IPA -> Kokoro symbols -> PCM.

Numpy + a backend Runner only (no torch, no onnx): this runs on the device. The text front end
is Piper's (``runtime/cascade/tts.py``: normalization, phrase splitting, espeak-ng as a subprocess); what
differs is the last step. Kokoro was trained on misaki's phoneme alphabet, not raw espeak IPA:
diphthongs and affricates are single symbols (``eɪ`` -> ``A``, ``dʒ`` -> ``ʤ``), there are no
length marks, and a few espeak symbols have no Kokoro twin. ``IPA_TO_KOKORO`` is that mapping.

A phrase of n symbols is fed as ``[0, ids..., 0]`` with row n of the voice's style table (the
package's ``tts_styles.npz``) and a speed. The graph has no random op, so the ``seed`` of a
session is accepted for the common voice interface but changes nothing.
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np

from edgevoice.errors import EdgevoiceError
from edgevoice.runtime.cascade.tts import EspeakPhonemizer, PhraseSession, SynthesisOptions

# espeak-ng (en-us, ``--ipa``) -> Kokoro symbols. Applied in this order, so longer sequences
# win over their parts ("ɜːɹ" before "ɜː" before "ː").
IPA_TO_KOKORO: tuple[tuple[str, str, str], ...] = (
    # (espeak, kokoro, why)
    ("eɪ", "A", "diphthong as in 'day' is one symbol"),
    ("aɪ", "I", "diphthong as in 'my'"),
    ("aʊ", "W", "diphthong as in 'now'"),
    ("ɔɪ", "Y", "diphthong as in 'boy'"),
    ("oʊ", "O", "diphthong as in 'go' (American)"),
    ("dʒ", "ʤ", "affricate as in 'jam' is one symbol"),
    ("tʃ", "ʧ", "affricate as in 'chin'"),
    ("ɜːɹ", "ɜɹ", "r-coloured 'bird' vowel: no length mark"),
    ("ɜː", "ɜɹ", "espeak drops the r of 'world' after the long vowel; American Kokoro keeps it"),
    ("ɚ", "əɹ", "unstressed r-coloured schwa is written out"),
    ("ɐ", "ə", "espeak's near-open central vowel ('a' in 'a test') is Kokoro's schwa"),
    ("r", "ɹ", "English r is the approximant"),
    ("x", "k", "velar fricative (loan words) -> k"),
    ("ç", "k", "palatal fricative (loan words) -> k"),
    ("ɬ", "l", "lateral fricative (Welsh names) -> l"),
    ("ʔ", "t", "glottal stop stands for a t"),
    ("ː", "", "no length marks in Kokoro's alphabet"),
    ("ʲ", "", "palatalization mark: no Kokoro symbol"),
    ("\u0303", "", "combining tilde (nasal vowels in loan words)"),
    ("\u0329", "", "syllabic mark under n/l"),
)


def kokoro_phonemes(ipa: str) -> str:
    """espeak-ng IPA rewritten in Kokoro's symbols (``IPA_TO_KOKORO``, in order)."""
    for espeak, kokoro, _ in IPA_TO_KOKORO:
        ipa = ipa.replace(espeak, kokoro)
    return ipa


def kokoro_ids(phonemes: str, vocab: Mapping[str, int]) -> tuple[list[int], str]:
    """Token ids of Kokoro symbols (no pads), and the characters that have none."""
    ids, unknown = [], []
    for char in phonemes:
        if char in vocab:
            ids.append(int(vocab[char]))
        else:
            unknown.append(char)
    return ids, "".join(unknown)


class KokoroVoice:
    """Kokoro over a runner of the ``tts`` component and the voice's style table; shared by sessions.

    ``runner.component.stream`` holds the facts recipes/cascade/kokoro.py wrote: sample_rate,
    espeak_voice, vocab, pad_id, max_phonemes, styles_file, speed.
    """

    def __init__(self, runner, styles: np.ndarray, espeak_program: str | None = None):
        facts = runner.component.stream
        missing = [k for k in ("sample_rate", "espeak_voice", "vocab", "pad_id", "max_phonemes") if k not in facts]
        if facts.get("engine") != "kokoro" or missing:
            raise EdgevoiceError(
                f"component '{runner.component.name}' is not a Kokoro voice (engine {facts.get('engine')!r}, "
                f"missing {missing}); export the package again with --voice kokoro"
            )
        self.max_phonemes = int(facts["max_phonemes"])
        if styles.ndim != 2 or styles.shape[0] <= self.max_phonemes or styles.dtype != np.float32:
            raise EdgevoiceError(
                f"the Kokoro style table is {styles.dtype}{styles.shape}, expected float32 "
                f"({self.max_phonemes + 1}, 256); export the package again"
            )
        self.runner = runner
        self.styles = styles  # (510, 256): row n is the style for a phrase of n symbols
        self.sample_rate: int = int(facts["sample_rate"])
        self.vocab: dict[str, int] = facts["vocab"]
        self.pad_id = int(facts["pad_id"])
        self.default_speed = float(facts.get("speed", 1.0))
        self.phonemizer = EspeakPhonemizer(facts["espeak_voice"], espeak_program)

    @classmethod
    def from_package(cls, package, component: str = "tts", backend: str = "ort", device: str = "cpu") -> KokoroVoice:
        """The voice of a verified engine package (a path or a loaded Manifest)."""
        from edgevoice.backends import open_runner
        from edgevoice.manifest import Manifest, read_manifest

        manifest = package if isinstance(package, Manifest) else read_manifest(package)
        facts = manifest.component(component).stream
        styles_path = manifest.path(facts.get("styles_file", "tts_styles.npz"))
        try:
            with np.load(styles_path, allow_pickle=False) as archive:
                styles = archive["styles"]
        except (OSError, KeyError, ValueError) as exc:
            raise EdgevoiceError(f"cannot read the Kokoro style table {styles_path} ({exc}); export the package again") from exc
        return cls(open_runner(manifest, component, backend=backend, device=device), styles)

    def session(self, seed: int = 0, options: SynthesisOptions | None = None) -> KokoroSession:
        return KokoroSession(self, seed, options)

    def speed(self, options: SynthesisOptions) -> float:
        """Kokoro's speed from the shared options: ``length_scale`` 2 means half as fast."""
        if options.length_scale is None:
            return self.default_speed
        if options.length_scale <= 0:
            raise EdgevoiceError(f"length_scale must be above 0, got {options.length_scale}")
        return 1.0 / options.length_scale

    def synthesize_ids(self, ids: list[int], speed: float) -> np.ndarray:
        """PCM (float32, mono, ``sample_rate``) for one phrase's ids (no pads)."""
        outputs = self.runner.infer({
            "tokens": np.array([[self.pad_id, *ids, self.pad_id]], dtype=np.int64),  # (1, n + 2)
            "style": np.ascontiguousarray(self.styles[len(ids)][None]),  # (1, 256)
            "speed": np.array([speed], dtype=np.float32),
        })
        return outputs["audio"].reshape(-1).astype(np.float32, copy=False)  # (samples,)


class KokoroSession(PhraseSession):
    """One conversation's speech with a Kokoro voice (the graph draws no noise: ``seed`` is unused)."""

    def __init__(self, voice: KokoroVoice, seed: int = 0, options: SynthesisOptions | None = None):
        super().__init__(voice, options if options is not None else SynthesisOptions())
        self.seed = seed

    def render(self, ids: list[int]) -> np.ndarray:
        return self.voice.synthesize_ids(ids, self.voice.speed(self.options))

    def phrase_ids(self, phrase: str, index: int = 0) -> list[int] | None:
        """Kokoro ids of one phrase (no pads), or None when nothing speakable is left."""
        phonemes = kokoro_phonemes(self.voice.phonemizer.phonemize(phrase))
        ids, unknown = kokoro_ids(phonemes, self.voice.vocab)
        if unknown:
            self._event("unknown_phonemes", unknown, index)
        if not any(c.isalpha() for c in phonemes):
            return None  # bare punctuation: no words, no audio
        if len(ids) > self.voice.max_phonemes:
            raise EdgevoiceError(
                f"phrase {index} has {len(ids)} Kokoro symbols, over the {self.voice.max_phonemes} the model "
                "takes; pass a smaller max_phrase_chars"
            )
        return ids
