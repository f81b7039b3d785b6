"""Freeze-Omni's respond path at run time: LLM tokens -> segments -> speech tokens -> 24 kHz PCM.

Engines only. The LLM writes the reply token by token (the response prefix, then each sampled id,
fed as embedding rows to ``fo_llm_listen``); each token comes with the hidden state it was sampled from. The
reply is cut into segments (a sentence, or a clause for the first one, as the reference server
does), and each segment is spoken by the speech decoder from a fresh state:

    speech_prefix  the segment's LLM hidden states (M, H) reshaped to (1, M * H / W, W) rows
    speech_text    the segment's text as token embeddings (N, H) reshaped the same way
    speech_token   SOS, then each chosen token; logits (1, V) -> host choice (speech_tokens.py)

Codec tokens go through ``SpeechAudioStream`` (the overlapping FIFO windows of ``llm2TTS.run``) into
the codec graph: PCM at 24 kHz comes out one window at a time.

Everything is a generator that yields between engine calls, so a caller can interleave it with
listening, stop it at any yield (barge-in), and account its compute.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass

import numpy as np

from edgevoice.backends.base import Runner
from edgevoice.errors import EdgevoiceError
from edgevoice.runtime import events as ev
from edgevoice.runtime.freeze_omni.speech_tokens import (
    CodecStreamConfig,
    LivePlan,
    SpeechAudioStream,
    SpeechTokenRule,
    TopKSampler,
    generate_speech_tokens,
)

_SENTENCE_END = tuple("。：？！.?!\n")
_CLAUSE_END = tuple(",，:")
_LIST_NUMBER = re.compile(r"\d\.\Z")  # "2." numbers a list item, it does not end a sentence


@dataclass(frozen=True)
class SegmentRule:
    """When the reply text is cut into a segment for the speech decoder (``bin/server.py`` ``generate``).

    The reference cuts after a sentence end (or, for the first segment and once 20 states wait,
    a clause end) once 4 states wait; nothing else. ``max_tokens`` adds a forced cut that the
    reference does not make: off by default. The pipeline still cuts where the package's speech
    decoder runs out of prefix rows, since a longer segment would lose its first hidden states.
    """

    min_tokens: int = 4  # hidden states a segment needs before a punctuation cut
    clause_after_tokens: int = 20  # from this many pending states a comma cuts too (always for the first)
    max_tokens: int | None = None  # cut here whatever the text (not in the reference); None: never
    blind_tokens: int = 8  # segment length when the package has no tokenizer (no text to read punctuation from)

    def cut(self, increment: str, pending: int, first: bool, blind: bool = False, before: str = "",
            capacity: int | None = None) -> bool:
        """Cut after a token whose text increment is ``increment``, with ``pending`` states waiting.

        ``before`` is the reply text before the increment: Qwen2 writes "1" and "." as two tokens,
        so the list-number guard has to read the accumulated text, as the reference does.
        ``capacity`` is the most states one segment can take (the speech decoder's prefix rows).
        """
        limits = [n for n in (self.blind_tokens if blind else self.max_tokens, capacity) if n is not None]
        if limits and pending >= min(limits):
            return True
        if pending < self.min_tokens or not increment or "\ufffd" in increment:
            return False  # a split UTF-8 character is never a place to cut
        stripped = increment.rstrip(" ")
        if stripped.endswith(_SENTENCE_END):
            return not _LIST_NUMBER.search(before + stripped)
        return stripped.endswith(_CLAUSE_END) and (first or pending >= self.clause_after_tokens)


_TO_COMMA = str.maketrans({"、": "，", "(": ",", ")": ",", "（": "，", "）": "，"})
_DROPPED = re.compile(r"[\n\r\t*_`~]")  # line breaks, tabs and markdown emphasis
_SPACE_AFTER_STOP = re.compile(r"([.:])\s+")
_HAN = re.compile(r"[\u4e00-\u9fa5]")
_LIST_ITEM_HAN = re.compile(r"(\d+)\.\s*([\u4e00-\u9fa5A-Za-z])")
_LIST_ITEM = re.compile(r"(\d+)\.\s*(\w)")
_FINAL_STOPS = tuple("。？！.?!")
_FINAL_PAUSES = tuple(",，;；:：、")


def clean_segment_text(text: str) -> str:
    """The text a segment is spoken from: the reference's ``post_process`` (``models/pipeline.py``).

    Brackets and the enumeration comma become commas; line breaks, tabs and ``*_`~`` go; spaces
    after "." and ":" go; "1. x" becomes "1:x" ("1：x" in Chinese text); the segment ends with
    "。", which replaces a trailing comma, semicolon or colon. The speech decoder was trained on
    text shaped this way, so its tokens must match it.
    """
    text = _DROPPED.sub("", text.translate(_TO_COMMA))
    text = _SPACE_AFTER_STOP.sub(r"\1", text)
    if _HAN.search(text):
        text = _LIST_ITEM_HAN.sub("\\1：\\2", text)
    else:
        text = _LIST_ITEM.sub(r"\1:\2", text)
    if text and not text.endswith(_FINAL_STOPS):
        text = (text[:-1] if text.endswith(_FINAL_PAUSES) else text) + "。"
    return text


@dataclass
class Segment:
    """One piece of the reply for the speech decoder."""

    index: int  # 0 for the reply's first segment
    ids: list[int]  # LLM token ids sampled for it
    hidden: np.ndarray  # (M, H) the LLM states those tokens were sampled from
    text: str  # their text ("" without a tokenizer)


@dataclass(frozen=True)
class SpeechOptions:
    """How speech tokens are chosen and decoded."""

    top_k: int | None = None  # None: the package's (the reference's decoder_top_k, 2); 1 = greedy
    max_tokens: int = 1000  # speech tokens per segment (25 s at 40 Hz); EOS usually comes first
    seed: int | None = 0  # of the top-k sampler
    codec: CodecStreamConfig | None = None  # one FIFO for every segment; None: the package's
    # The reference server's first packet (LivePlan) where the package records server.json;
    # False: every segment decodes as the offline ``bin/inference.py`` does.
    live: bool = True


class SpeechDecoder:
    """The three decoder graphs and the codec of one package; ``speak`` voices one segment.

    ``facts`` and ``codec_facts`` are the manifest config's ``speech`` and ``codec`` sections;
    ``embed`` maps token ids to LLM embedding rows (the text input).
    """

    def __init__(self, prefix: Runner, text: Runner, token: Runner, codec: Runner, facts: dict, codec_facts: dict,
                 embed: Callable[[list[int]], np.ndarray], options: SpeechOptions = SpeechOptions()):
        self.prefix_runner, self.text_runner, self.token_runner, self.codec_runner = prefix, text, token, codec
        self.embed, self.options = embed, options
        self.width, self.rows_per_hidden = int(facts["width"]), int(facts["rows_per_hidden"])
        max_tokens = min(options.max_tokens, int(facts["max_speech_tokens"]))  # the decoder cache's capacity
        self.rule = SpeechTokenRule(int(facts["sos_id"]), int(facts["eos_id"]), max_tokens,
                                    int(facts.get("penalty_window", -1)), float(facts.get("penalty", 1.1)))
        # BOS, SOS and PAD are not codec tokens: never chosen (EOS stays: it ends the segment).
        self._never = np.array([int(facts[k]) for k in ("bos_id", "sos_id", "pad_id")], dtype=np.int64)
        self.max_prefix_rows, self.max_text_rows = int(facts["max_prefix_rows"]), int(facts["max_text_rows"])
        self.sample_rate = int(codec_facts["sample_rate"])
        self.codec_config = options.codec or CodecStreamConfig(**codec_facts["fifo"])
        live = codec_facts.get("live")  # absent in packages exported before server.json was read
        self.live = LivePlan.from_config(live) if live and options.live and options.codec is None else None
        self.sampler = TopKSampler(options.top_k or int(facts["top_k"]), options.seed)

    def rows(self, vectors: np.ndarray) -> np.ndarray:
        """LLM vectors (M, H) -> decoder rows (1, M * H / W, W): each vector becomes H / W rows."""
        m, h = vectors.shape
        if h != self.width * self.rows_per_hidden:
            raise EdgevoiceError(f"LLM width {h} is not {self.rows_per_hidden} rows of the speech decoder's {self.width}; "
                                 "re-export the package")
        return np.ascontiguousarray(vectors.reshape(1, m * h // self.width, self.width), dtype=np.float32)

    def speak(self, segment: Segment, ids_for_text: list[int], marks: Callable[[str], None]) -> Iterator[np.ndarray]:
        """PCM pieces (float32, 24 kHz) of ``segment``; yields an empty piece after every engine call.

        ``marks(kind)`` is told the event kind when the decoder prefill is done (``SPEECH_PREFILL``), at
        the first speech token (``FIRST_SPEECH_TOKEN``) and at the first audio out of the codec FIFO
        (``FIRST_SPEECH_CHUNK``).
        """
        prefix, text = self.rows(segment.hidden), self.rows(self.embed(ids_for_text))
        prefix, text = prefix[:, -self.max_prefix_rows :], text[:, : self.max_text_rows]  # a long segment keeps its end
        state = self.token_runner.initial_state(1)
        state = self._run(self.prefix_runner, {"prefix": prefix}, state)[1]
        yield np.zeros(0, np.float32)
        state = self._run(self.text_runner, {"text": text}, state)[1]
        marks(ev.SPEECH_PREFILL)
        yield np.zeros(0, np.float32)
        audio = self._audio_stream(first=segment.index == 0)
        holder = {"state": state}
        first_token, first_chunk = True, True
        for token in generate_speech_tokens(lambda t: self._step(t, holder), self.rule, self.sampler):
            if first_token:
                first_token = False
                marks(ev.FIRST_SPEECH_TOKEN)
            pcm = audio.push(token)
            if pcm is not None and first_chunk:
                first_chunk = False
                marks(ev.FIRST_SPEECH_CHUNK)
            yield pcm if pcm is not None else np.zeros(0, np.float32)
        rest = audio.finish()
        if rest.size and first_chunk:
            marks(ev.FIRST_SPEECH_CHUNK)
        yield rest

    def _audio_stream(self, first: bool) -> SpeechAudioStream:
        """The codec FIFO of one segment: the server's first-packet settings for the reply's first."""
        if self.live is None:
            return SpeechAudioStream(self._decode, self.codec_config)
        if first:
            return SpeechAudioStream(self._decode, self.live.first, self.live.trim_level)
        return SpeechAudioStream(self._decode, self.live.later)

    def _step(self, token: int, holder: dict) -> np.ndarray:
        outputs, holder["state"] = self._run(self.token_runner, {"token": np.array([[token]], dtype=np.int64)},
                                             holder["state"])
        logits = outputs["logits"][0].copy()  # (V,)
        logits[self._never] = -np.inf
        return logits

    @staticmethod
    def _run(runner: Runner, feeds: dict, state: dict) -> tuple[dict, dict]:
        outputs = runner.infer({**feeds, **state})
        wiring = runner.component.state
        return outputs, {wiring[k]: outputs.pop(k) for k in list(outputs) if k in wiring}

    def _decode(self, tokens: np.ndarray) -> np.ndarray:
        return self.codec_runner.infer({"tokens": tokens[None].astype(np.int64)})["pcm"][0]  # (T * hop,)
