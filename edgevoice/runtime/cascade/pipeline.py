"""The `cascade` package at run time: one spoken turn, VAD -> Whisper -> SmolLM2 -> Piper.

It also opens the package's end-of-turn model (``turn``, Smart Turn) when it has one; duplex
sessions use it to tell a thinking pause from the end of a turn (``respond`` is given whole turns).

Engines only (numpy + onnxruntime/TensorRT); no torch. The reply is synthesized phrase by phrase
as the language model writes it, so the first audio is ready after the first phrase, not after
the whole reply — that is the latency a listener feels.
"""

from __future__ import annotations

import copy
import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

import numpy as np

from edgevoice.audio.wav import validate_pcm
from edgevoice.manifest import Manifest, read_manifest
from edgevoice.runtime.cascade.asr import WhisperAsr
from edgevoice.runtime.cascade.phrases import phrase_cut
from edgevoice.runtime.cascade.turn import EndOfTurnModel
from edgevoice.runtime.cascade.voices import open_voice
from edgevoice.runtime.knowledge import Embedder, KnowledgeBase, KnowledgeOptions, Recall, facts_block, missing_embed_error
from edgevoice.runtime.llm import LlmSession, SamplingConfig
from edgevoice.runtime.segments import SpeechSegment
from edgevoice.runtime.vad import VadPipeline

RECIPE = "cascade"
DEFAULT_SYSTEM_PROMPT = (
    "You are a helpful voice assistant. Answer in one or two short, plain sentences, "
    "without lists or markdown."
)
SPEECH_MARGIN_S = 0.2  # audio kept around the detected speech, so word edges survive
FACTS_SEPARATOR_TOKENS = 4  # the blank line joining the facts to the system prompt, counted apart


@dataclass(frozen=True)
class TurnResult:
    """What one spoken turn produced, with per-stage timings in seconds (wall clock)."""

    transcript: str  # what the user said, as our ASR heard it ("" when no speech was found)
    reply: str  # what the agent answered
    audio: np.ndarray  # the spoken reply, mono float32
    sample_rate: int  # of ``audio``
    speech: tuple[SpeechSegment, ...]  # where the user spoke in the input
    latency: dict[str, float] = field(default_factory=dict)
    notes: tuple[str, ...] = ()  # defined outcomes worth telling the user (no speech, truncated reply)


class CascadePipeline:
    """Loads a cascade package once; ``respond`` runs one turn and keeps the conversation."""

    def __init__(
        self,
        package: str | Path | Manifest,
        backend: str = "ort",
        device: str = "cpu",
        system_prompt: str = DEFAULT_SYSTEM_PROMPT,
        max_new_tokens: int = 64,
        seed: int = 0,
        recap_turns: int = 0,
        knowledge: str | Path | KnowledgeBase | None = None,
        knowledge_options: KnowledgeOptions = KnowledgeOptions(),
    ):
        manifest = package if isinstance(package, Manifest) else read_manifest(package, recipe=RECIPE)
        if knowledge is not None and "embed" not in manifest.components:
            raise missing_embed_error(manifest)  # before the engines load
        self.manifest = manifest
        self.vad = VadPipeline(manifest, backend=backend, device=device)
        self.asr = WhisperAsr.from_manifest(manifest, backend=backend, device=device)
        self.llm = LlmSession.from_manifest(manifest, backend=backend, device=device)
        self.voice = open_voice(manifest, backend=backend, device=device)
        self.tts = self.voice.session(seed=seed)
        # Packages exported before the end-of-turn model have none: sessions then endpoint on the VAD alone.
        self.turn_model = EndOfTurnModel.from_manifest(manifest, backend=backend, device=device)
        self.system_prompt = system_prompt
        self.max_new_tokens = max_new_tokens
        self.sampling = SamplingConfig(seed=seed)
        self.history: list[dict[str, str]] = []  # user/assistant messages of earlier turns
        self.recap_turns = recap_turns
        # The deployment's facts (``edgevoice.runtime.knowledge``), embedded now, retrieved per turn.
        self.knowledge = self._open_knowledge(manifest, knowledge, knowledge_options, backend, device)

    def new_conversation(self) -> CascadePipeline:
        """A new conversation over the same loaded engines (``edgevoice serve`` holds many).

        The view shares what is loaded once (the onnxruntime sessions of every component, the
        tokenizers, the voice) and owns what one conversation writes: its history, its LLM cache
        and token log, its voice's noise stream. Sessions over different views never share state.
        """
        view = copy.copy(self)
        view.history = []
        view.llm = self.llm.fork()
        view.tts = self.voice.session(seed=self.sampling.seed)
        return view

    def respond(self, audio: np.ndarray, sample_rate: int) -> TurnResult:
        """One turn: find the speech in ``audio``, transcribe it, answer it, speak the answer.

        ``audio`` may be (N,) or (N, channels) at any rate: it is mixed down and resampled to the
        models' 16 kHz first.
        """
        pcm = self._to_model_rate(np.asarray(audio), sample_rate)
        t0 = time.perf_counter()
        segments = tuple(self.vad.segments(pcm, self.vad.sample_rate))
        latency = {"vad": time.perf_counter() - t0}
        if not segments:
            return self._silent_turn(segments, latency, "no speech found in the input audio")
        rate = self.vad.sample_rate
        start = max(0, int((segments[0].start - SPEECH_MARGIN_S) * rate))
        end = min(len(pcm), int((segments[-1].end + SPEECH_MARGIN_S) * rate))
        t_end_of_speech = time.perf_counter()
        transcript = self.asr.transcribe(pcm[start:end], rate).text.strip()
        latency["asr"] = time.perf_counter() - t_end_of_speech
        if not transcript:
            return self._silent_turn(segments, latency, "speech was found but nothing could be transcribed")
        reply, pieces, timing = self.answer(transcript, t_end_of_speech)
        latency.update(timing)
        notes = ("the reply was cut at the token limit",) if self.llm.finish_reason == "length" else ()
        audio_out = np.concatenate(pieces) if pieces else np.zeros(0, np.float32)
        return TurnResult(transcript, reply, audio_out, self.voice.sample_rate, segments, latency, notes)

    def answer(self, transcript: str, t_end_of_speech: float | None = None) -> tuple[str, list[np.ndarray], dict[str, float]]:
        """Reply text, its audio phrase by phrase, and stage timings (seconds after ``t_end_of_speech``,
        a ``time.perf_counter()`` value; default now). The turn joins the conversation history."""
        t_end_of_speech = time.perf_counter() if t_end_of_speech is None else t_end_of_speech
        messages = self._messages(transcript)
        timing: dict[str, float] = {}
        text, spoken_upto, pieces = "", 0, []
        t_llm = time.perf_counter()
        for token in self.llm.generate(messages, max_new_tokens=self.max_new_tokens, sampling=self.sampling):
            timing.setdefault("first_token", time.perf_counter() - t_end_of_speech)
            text += token.text
            cut = phrase_cut(text, spoken_upto, first=not pieces)
            if cut:
                pieces += self._speak(text[spoken_upto:cut], timing, t_end_of_speech)
                spoken_upto = cut
        timing["llm"] = time.perf_counter() - t_llm
        pieces += self._speak(text[spoken_upto:], timing, t_end_of_speech)
        reply = text.strip()
        self.history += [{"role": "user", "content": transcript}, {"role": "assistant", "content": reply}]
        timing["total"] = time.perf_counter() - t_end_of_speech
        return reply, pieces, timing

    def _speak(self, phrase: str, timing: dict[str, float], t_end_of_speech: float) -> list[np.ndarray]:
        if not phrase.strip():
            return []
        t = time.perf_counter()
        pieces = [p for p in self.tts.stream(phrase) if p.size]
        timing["tts"] = timing.get("tts", 0.0) + time.perf_counter() - t
        if pieces and "first_audio" not in timing:
            timing["first_audio"] = time.perf_counter() - t_end_of_speech
        return pieces

    def _to_model_rate(self, audio: np.ndarray, sample_rate: int) -> np.ndarray:
        from edgevoice.audio.resample import mixdown, resample

        if audio.ndim == 2:
            audio = mixdown(audio.astype(np.float32, copy=False))
        rate = self.vad.sample_rate
        if sample_rate != rate and audio.size:
            validate_pcm(audio, sample_rate, sample_rate)  # NaN/inf and empty input fail before resampling
            audio, sample_rate = resample(audio, sample_rate, rate), rate
        return validate_pcm(audio, sample_rate, rate)

    def _messages(self, transcript: str) -> list[dict[str, str]]:
        messages = prompt_messages(self.system_prompt, [*self.history, {"role": "user", "content": transcript}],
                                   self.recap_turns)
        return self.with_facts(messages, self.knowledge.search(transcript) if self.knowledge else None)

    def with_facts(self, messages: list[dict[str, str]], recall: Recall | None) -> list[dict[str, str]]:
        """``messages`` with the recalled passages added to the system message, within the context budget.

        The facts get at most ``KnowledgeOptions.max_prompt_tokens`` and never more than the context
        leaves after the rest of the prompt and the reply (``max_new_tokens``), so they cannot push
        the question out of the context.
        """
        if recall is None or not recall.hits or not messages or messages[0]["role"] != "system":
            return messages
        llm = self.llm
        count = lambda text: len(llm.tokenizer.encode(text))
        used = count(llm.formatter.render(messages))
        room = llm.max_context - self.max_new_tokens - used - FACTS_SEPARATOR_TOKENS
        block = facts_block(recall.hits, count, min(self.knowledge.options.max_prompt_tokens, room))
        if not block:
            return messages
        system = {"role": "system", "content": f"{messages[0]['content']}\n\n{block}"}
        return [system, *messages[1:]]

    def _open_knowledge(self, manifest: Manifest, source, options: KnowledgeOptions, backend: str,
                        device: str) -> KnowledgeBase | None:
        if "embed" not in manifest.components:
            logging.getLogger(__name__).info(
                "this package has no embed component, so no knowledge memory; re-export it to add one")
            return None
        if source is None:
            return None
        if isinstance(source, KnowledgeBase):
            return source
        return KnowledgeBase.from_path(source, Embedder(manifest, backend=backend, device=device), options)

    def _silent_turn(self, segments: Sequence[SpeechSegment], latency: dict[str, float], note: str) -> TurnResult:
        return TurnResult("", "", np.zeros(0, np.float32), self.voice.sample_rate, tuple(segments), latency, (note,))


def prompt_messages(system: str, history: list[dict[str, str]], recap_turns: int = 0) -> list[dict[str, str]]:
    """The chat for the LLM: earlier exchanges recapped in the system message, the current one as chat.

    The current exchange is the last user message and everything after it (the agent's words so
    far, tool results). Small models such as SmolLM2-135M copy an earlier answer when earlier
    turns are chat messages ("a fact about cats?" -> the capital of France again); told as a
    recap they parrot less, but still do on the bundled conversation; hence ``recap_turns=0``
    by default for that model (each question answered on its own, tool results and the reply
    in progress still in the chat). Raise it for a larger model.
    """
    last_user = max((i for i, m in enumerate(history) if m["role"] == "user"), default=len(history))
    earlier, current = history[:last_user], history[last_user:]
    exchanges, question = [], None
    for message in earlier:
        if message["role"] == "user":
            question = message["content"]
        elif message["role"] == "assistant" and question is not None and message["content"].strip():
            exchanges.append((question, message["content"]))
            question = None
    recap = "".join(f'\nEarlier the user asked: "{q}" and you answered: "{a}"' for q, a in exchanges[-recap_turns:]) \
        if recap_turns > 0 else ""
    return [{"role": "system", "content": system + ("\n" + recap if recap else "")}, *current]
