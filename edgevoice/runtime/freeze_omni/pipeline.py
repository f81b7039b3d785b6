"""The `freeze-omni` and `tiny` packages at run time: a native duplex speech LLM over its engines only.

Listening (``freeze_omni_listen``): every 160 ms chunk goes through the front end; while a user
turn is listened to, also through the encoder, adapter and the LLM, whose turn-state head says
keep listening (0), respond / barge in (1) or dismiss (2). Responding (``freeze_omni_speak``): the
LLM writes the reply, segments of hidden states and text go to the speech decoder, its tokens to
the codec, PCM out at 24 kHz.

The conversation lives in the LLM cache as ``LlmContext``s: ``conversation`` is the committed
point (system prompt, then each finished exchange); a user turn is heard into a fork of it, and a
reply is written into the context of its turn. A turn heard over a reply forks that reply's
context as far as it got (the session decides how far), so a barge-in answers with the cut-off
reply in context -- nothing is undone in place. A context that outgrows ``max_context`` is
re-prefilled without its oldest exchanges (``FoLlm.make_room``): listening never stops.

This module is the glue a session drives (``edgevoice.runtime.freeze_omni.session``); it holds no threads.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from edgevoice.backends import open_runner
from edgevoice.backends.base import Runner
from edgevoice.errors import EdgevoiceError
from edgevoice.manifest import Manifest, read_manifest
from edgevoice.runtime.freeze_omni.listen import FoListener, FoLlm, LlmContext, LlmFacts, TokenEmbeddings
from edgevoice.runtime.freeze_omni.speak import Segment, SegmentRule, SpeechDecoder, SpeechOptions, clean_segment_text
from edgevoice.runtime.freeze_omni.tools import CallWithholder, ReplyToken
from edgevoice.runtime.llm import LlmTokenizer, SamplingConfig, sample_token
from edgevoice.runtime.tools import ToolCall
from edgevoice.runtime.vad import VadPipeline

RECIPES = ("freeze-omni", "tiny")
COMPONENTS = ("fo_frontend", "fo_encoder", "fo_adapter", "fo_llm_listen",
              "speech_prefix", "speech_text", "speech_token", "codec")
CONFIG_KEYS = ("llm", "prompt", "speech", "codec")  # manifest config sections this glue reads
# The reference's LLM sampling (scripts/run_demo_server.sh): temperature 0.8, top-k 20, top-p 0.8,
# with its nucleus rule (models/audioLLM.py ``_post_decode``: the token crossing top_p is dropped).
REFERENCE_SAMPLING = SamplingConfig(temperature=0.8, top_k=20, top_p=0.8, seed=0, top_p_keeps_crossing=False)
# Reply length in LLM tokens: bin/server.py stops a reply after 500 (live talk, the default here);
# bin/inference.py, the offline one-file demo, after 128.
LIVE_MAX_NEW_TOKENS = 500
OFFLINE_MAX_NEW_TOKENS = 128


@dataclass(frozen=True)
class ReplyItem:
    """One step of a reply as ``FreezeOmniPipeline.respond`` produces it."""

    kind: str  # "token" | "tool_call" | "segment" | "done"
    token: int = -1  # "token": the sampled LLM id
    text: str = ""  # "token": the speakable text it releases (a call's is withheld); "done": the reply's
    segment: Segment | None = None  # "segment": what the speech decoder should voice next
    finish: str = ""  # "done": "stop" (end-of-turn id) or "length" (token or context limit)
    call: ToolCall | None = None  # "tool_call": a call the reply wrote (never voiced)


class FreezeOmniPipeline:
    """Loads a Freeze-Omni package once; holds one conversation's LLM contexts and listen path.

    ``max_new_tokens`` caps each reply: ``LIVE_MAX_NEW_TOKENS`` (500, the reference server's) by
    default, ``OFFLINE_MAX_NEW_TOKENS`` (128) to match ``bin/inference.py``.
    """

    def __init__(self, package: str | Path | Manifest, backend: str = "ort", device: str = "cpu",
                 system_prompt: str | None = None, sampling: SamplingConfig = REFERENCE_SAMPLING,
                 max_new_tokens: int = LIVE_MAX_NEW_TOKENS, speech: SpeechOptions = SpeechOptions(),
                 segments: SegmentRule = SegmentRule(), preroll_chunks: int = 6):
        manifest = _checked(package if isinstance(package, Manifest) else read_manifest(package))
        self.manifest, config = manifest, manifest.config
        run = {name: open_runner(manifest, name, backend=backend, device=device) for name in COMPONENTS}
        # Silero VAD (the cascade's component), the gate in front of the listen path; older packages lack it.
        self.vad = VadPipeline(manifest, backend=backend, device=device) if "vad" in manifest.components else None
        facts = LlmFacts.from_config(config)
        embed = TokenEmbeddings(manifest.path(config["llm"]["embed_tokens"]), facts.hidden)
        prompt = np.load(manifest.path(config["prompt"]["embeddings_file"]))
        self.llm = FoLlm(run["fo_llm_listen"], facts, embed, prompt)
        self._listen_parts = (run["fo_frontend"], run["fo_encoder"], run["fo_adapter"], preroll_chunks)
        self.listener = FoListener(*self._listen_parts[:3], self.llm, preroll_chunks)
        self.speech = SpeechDecoder(run["speech_prefix"], run["speech_text"], run["speech_token"], run["codec"],
                                    config["speech"], config["codec"], embed, speech)
        self.tokenizer = LlmTokenizer(manifest.path(config["tokenizer"])) if config.get("tokenizer") else None
        self.system_prompt, self.sampling = system_prompt, sampling
        self.max_new_tokens, self.segment_rule = max_new_tokens, segments
        self.reset()

    def new_conversation(self) -> FreezeOmniPipeline:
        """A new conversation over the same loaded engines (``edgevoice serve`` holds many).

        The view shares the runners, embeddings, tokenizer and speech facts; it owns its LLM
        contexts (``conversation``), its listen path (front-end history, the turn being heard)
        and its speech sampler's random stream, so sessions over different views share no state.
        """
        view = copy.copy(self)
        view.llm = copy.copy(self.llm)  # the same graph and tables; its own trim count
        view.llm.trims = 0
        frontend, encoder, adapter, preroll = self._listen_parts
        view.listener = FoListener(frontend, encoder, adapter, view.llm, preroll)
        view.speech = copy.copy(self.speech)
        view.speech.sampler = copy.deepcopy(self.speech.sampler)  # the random stream as a fresh load has it
        view.conversation = self.conversation.fork()  # the system prompt as loaded; a session resets it anyway
        return view

    def wrap_shared_runners(self, wrap: Callable[[Runner], Runner]) -> list[Runner]:
        """Put ``wrap(runner)`` in place of each runner that concurrent conversations' steps can share.

        For ``edgevoice serve``'s cross-session batching (docs/batching.md): the VAD, the listen path
        (front end, encoder, adapter), the listen LLM and the speech decoder's one-token steps. Call
        it before ``new_conversation``: views copy the runners they find. Returns the wrapped runners,
        which the caller closes at shutdown.
        """
        frontend, encoder, adapter, preroll = self._listen_parts
        wrapped = [wrap(frontend), wrap(encoder), wrap(adapter), wrap(self.llm.runner), wrap(self.speech.token_runner)]
        self._listen_parts = (*wrapped[:3], preroll)
        self.llm.runner, self.speech.token_runner = wrapped[3], wrapped[4]
        self.listener = FoListener(*wrapped[:3], self.llm, preroll)  # nothing heard yet: a fresh one loses nothing
        if self.vad is not None:
            self.vad.runner = wrap(self.vad.runner)
            wrapped.append(self.vad.runner)
        return wrapped

    @property
    def sample_rate(self) -> int:
        """Rate of the microphone audio the listen path takes (16 kHz)."""
        return self.listener.sample_rate

    @property
    def chunk_samples(self) -> int:
        return self.listener.chunk_samples

    @property
    def output_rate(self) -> int:
        """Rate of the reply audio (the codec's, 24 kHz)."""
        return self.speech.sample_rate

    def reset(self, system_prompt: str | None = None, tools_prompt: str = "") -> None:
        """A new conversation: the system prompt prefilled and committed; nothing listened to.

        ``system_prompt`` replaces the one given at construction (the reference server sets it per
        session); the cache is prefilled again either way. ``tools_prompt`` (``ToolRunner.prompt()``)
        is appended to the system turn.
        """
        if system_prompt is not None:
            self.system_prompt = system_prompt
        self.listener.end_turn()
        context = self.llm.empty()
        ids = list(self.llm.facts.system_prompt_ids)  # the package's role; the reference leaves the turn open
        if self.system_prompt is not None:
            if self.tokenizer is None:
                raise EdgevoiceError("this package has no tokenizer, so it keeps its own system prompt; "
                                     "pass system_prompt=None")
            ids = list(self.llm.facts.system_prefix_ids) + self.tokenizer.encode(self.system_prompt)
        if tools_prompt:
            if self.tokenizer is None:
                raise EdgevoiceError("this package has no tokenizer, so its LLM cannot be told about tools; "
                                     "register tools on a package exported with its tokenizer")
            ids += self.tokenizer.encode("\n\n" + tools_prompt)
        self.llm.feed_ids(context, ids, kind="system")
        self.conversation = context  # the committed point

    def commit(self, context: LlmContext) -> None:
        """``context`` becomes the point later turns fork from and barge-ins return to."""
        self.conversation = context

    # --- responding ------------------------------------------------------------------------------

    def respond(self, context: LlmContext) -> Iterator[ReplyItem]:
        """The reply written into ``context`` (a turn's context: it grows), item by item.

        Each token is paired with the hidden state it was sampled from (the reference's
        ``hidden_state``); segments are cut by ``SegmentRule`` and the rest is one last segment.
        The sampled end-of-turn id is not fed: the next turn prefix starts with it. A tool call the
        reply writes (``<tool_call>...</tool_call>``) comes out as a "tool_call" item; its tokens
        stay in the context but never reach a segment (``CallWithholder``).
        """
        logits = self.llm.feed_ids(context, self.llm.facts.response_prefix_ids)
        rng = np.random.default_rng(self.sampling.seed)
        reply: list[int] = []
        emitted, finish = "", "length"
        cutter = _SegmentCutter(self)
        withholder = CallWithholder() if self.tokenizer is not None else None  # no text, no calls
        for _ in range(self.max_new_tokens):
            token = self._sample(logits, rng)
            if token == self.llm.facts.eod_id:
                finish = "stop"
                break
            reply.append(token)
            delta = self._text_delta(reply, emitted)
            emitted += delta
            sampled = ReplyToken(token, context.hidden, delta)
            voiced, calls = withholder.push(sampled) if withholder is not None else ([sampled], [])
            yield ReplyItem("token", token=token, text="".join(t.text for t in voiced))
            yield from (ReplyItem("tool_call", call=call) for call in calls)
            yield from cutter.add(voiced)
            logits = self.llm.feed_ids(context, [token])  # past max_context: the oldest turns go (FoLlm.make_room)
        if withholder is not None:
            voiced, calls = withholder.finish()
            yield from (ReplyItem("tool_call", call=call) for call in calls)
            yield from cutter.add(voiced)
        yield from cutter.rest()
        yield ReplyItem("done", text=cutter.voiced, finish=finish)

    def _sample(self, logits: np.ndarray, rng: np.random.Generator) -> int:
        """The next reply token from ``logits`` (vocab,)."""
        return sample_token(logits, self.sampling, rng)

    def speak(self, segment: Segment, marks) -> Iterator[np.ndarray]:
        """PCM pieces of one segment at ``output_rate`` (empty pieces between engine calls)."""
        if self.tokenizer is not None and segment.text.strip():
            ids = self.tokenizer.encode(clean_segment_text(segment.text))  # the reference re-tokenizes the text
        else:
            ids = segment.ids  # no tokenizer (random-weight packages): the sampled ids are the text
        return self.speech.speak(segment, ids or segment.ids, marks)

    def _segment(self, index: int, ids: list[int], hidden: list[np.ndarray]) -> Segment:
        text = self.tokenizer.decode(ids) if self.tokenizer is not None else ""
        return Segment(index, list(ids), np.stack(hidden), text)

    def _text_delta(self, reply: list[int], emitted: str) -> str:
        if self.tokenizer is None:
            return ""
        text = self.tokenizer.decode(reply)
        return "" if text.endswith("\ufffd") else text[len(emitted) :]


class _SegmentCutter:
    """Collects the voiced tokens of one reply into segments for the speech decoder (``SegmentRule``)."""

    def __init__(self, pipeline: FreezeOmniPipeline):
        self.pipeline, self.voiced, self.segments = pipeline, "", 0
        self.ids: list[int] = []
        self.hidden: list[np.ndarray] = []
        # A segment's hidden states all go to the speech decoder's prefix rows: cut before they overflow.
        self.capacity = pipeline.speech.max_prefix_rows // pipeline.speech.rows_per_hidden

    def add(self, tokens: list[ReplyToken]) -> Iterator[ReplyItem]:
        blind = self.pipeline.tokenizer is None
        for token in tokens:
            self.ids.append(token.id)
            self.hidden.append(token.hidden)
            before, self.voiced = self.voiced, self.voiced + token.text
            if self.pipeline.segment_rule.cut(token.text, len(self.ids), self.segments == 0, blind=blind,
                                              before=before, capacity=self.capacity):
                yield from self.rest()

    def rest(self) -> Iterator[ReplyItem]:
        """What is pending as one segment (nothing if nothing is)."""
        if self.ids:
            yield ReplyItem("segment", segment=self.pipeline._segment(self.segments, self.ids, self.hidden))
            self.segments, self.ids, self.hidden = self.segments + 1, [], []


def _checked(manifest: Manifest) -> Manifest:
    manifest.require_recipe(RECIPES, CONFIG_KEYS, COMPONENTS, "edgevoice export --model tiny --target cpu --out DIR")
    return manifest
