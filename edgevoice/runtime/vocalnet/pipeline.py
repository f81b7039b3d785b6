"""The `vocalnet` and `vocalnet-tiny` packages at run time: one user turn in, streamed speech out.

VocalNet is turn-based: the session (``edgevoice.runtime.vocalnet.session``) takes the turn with
the package's VAD and hands this pipeline the turn's audio. ``respond`` then runs every stage as
one generator, one engine call per step, so a session can advance it inline or on a thread and
cancel it between any two calls:

    vn_listen        the turn (padded to the 30 s window) -> speech rows in the LLM's space
    vn_llm           chat-template rows ⊕ speech rows prefilled, then greedy decoding; the hidden
                     state that produced each token is kept (``vocalnet_streaming.py``)
    speech_text/     hidden states in ``txt_token_num`` chunks, the sentence reset and the last chunk
    speech_units     as the reference hands them over (``speech_tokens.TextChunker``) -> speech units
    flow_*           units accumulate -> mel chunks on the reference's schedule (``FlowStream``)
    hift_*           mel chunks -> 24 kHz PCM with the cache and cross-fade (``HiftStream``)

Each turn starts from a fresh prompt, as the reference's ``vocalnet.py`` and
``vocalnet_streaming.py`` do (they keep no history). Sampling is greedy (the streaming
reference's temperature 0.1 / top-p 0.1 keeps the argmax whenever it holds 10 % of the mass).
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from edgevoice.backends import open_runner
from edgevoice.errors import EdgevoiceError
from edgevoice.manifest import Manifest, read_manifest
from edgevoice.runtime.llm import LlmTokenizer
from edgevoice.runtime.vad import VadPipeline
from edgevoice.runtime.vocalnet.engines import (
    DecoderEngines,
    FlowEngines,
    FlowFacts,
    FlowStream,
    HiftEngines,
)
from edgevoice.runtime.vocalnet.speech_tokens import (
    ChunkRule,
    MtpRule,
    SpeechCall,
    StreamingUnits,
    TextChunker,
)
from edgevoice.runtime.vocalnet.turn_input import (
    input_rows,
    pad_or_trim,
    speech_row_count,
)
from edgevoice.runtime.vocalnet.vocoder_stream import HiftStream, HiftStreamConfig

RECIPES = ("vocalnet", "vocalnet-tiny")
COMPONENTS = ("vn_listen", "vn_llm", "speech_text", "speech_units", "flow_encoder", "flow_step",
              "hift_source", "hift_decode")
CONFIG_KEYS = ("listen", "llm", "speech", "flow", "hift")
DEFAULT_MAX_NEW_TOKENS = 256


@dataclass(frozen=True)
class ReplyStep:
    """One step of ``respond``: what an engine call produced."""

    kind: str  # "listen" | "prefill" | "token" | "units" | "mel" | "pcm" | "done"
    token: int = -1  # "token": the greedy id
    text: str = ""  # "token": the text it releases; "done": the whole reply
    units: list[int] = field(default_factory=list)  # "units": speech units of one decoder call
    pcm: np.ndarray | None = None  # "pcm": float32 audio at output_rate
    frames: int = 0  # "mel": new mel frames
    finish: str = ""  # "done": "stop" (an end id) or "length"


class VocalNetPipeline:
    """Loads a VocalNet package once; ``respond(audio)`` speaks one turn."""

    def __init__(self, package: str | Path | Manifest, backend: str = "ort", device: str = "cpu",
                 max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, seed: int = 0):
        manifest = _checked(package if isinstance(package, Manifest) else read_manifest(package))
        self.manifest, config = manifest, manifest.config
        run = {name: open_runner(manifest, name, backend=backend, device=device) for name in COMPONENTS}
        self.run = run
        self.vad = VadPipeline(manifest, backend=backend, device=device)
        self.listen, self.llm, self.speech = config["listen"], config["llm"], config["speech"]
        self.table = np.load(manifest.path(self.llm["embed_tokens"]), mmap_mode="r")  # (vocab, hidden) float32
        self.tokenizer = LlmTokenizer(manifest.path(config["tokenizer"]))
        self.decoder = DecoderEngines(run["speech_text"], run["speech_units"])
        voice = np.load(manifest.path(config["flow"]["voice_file"]))
        noise = np.load(manifest.path(config["flow"]["noise_file"]), mmap_mode="r")
        self.flow = FlowEngines(run["flow_encoder"], run["flow_step"], FlowFacts.from_config(config["flow"]),
                                voice["prompt_token"], voice["prompt_feat"], voice["embedding"], noise)
        hift = config["hift"]
        self.hift = HiftEngines(run["hift_source"], run["hift_decode"], hift["samples_per_frame"])
        self.hift_config = HiftStreamConfig(hift["mel_cache_frames"], hift["samples_per_frame"], hift["harmonics"])
        self.max_new_tokens, self.seed = max_new_tokens, seed
        self.stops = set(self.llm["stop_ids"]) | {self.llm["eot_id"]}

    @property
    def sample_rate(self) -> int:
        return int(self.manifest.config["input_sample_rate"])

    @property
    def output_rate(self) -> int:
        return int(self.manifest.config["output_sample_rate"])

    # --- stages ------------------------------------------------------------------------------------

    def prompt_rows(self, audio: np.ndarray) -> np.ndarray:
        """The turn's LLM input rows (L, hidden): template rows around its speech rows."""
        window, frames, k = self.listen["window_samples"], self.listen["n_frames"], self.listen["k"]
        rows = self.run["vn_listen"].infer({"audio": pad_or_trim(audio, window)[None]})["speech_embeds"][0]
        rows = rows[: speech_row_count(len(audio), window, frames, k)]
        embeds = input_rows(np.asarray(self.llm["prompt_ids"]), rows, self.table, self.llm["max_input_rows"])
        if embeds.shape[0] >= self.llm["max_context"]:
            raise EdgevoiceError(f"the turn needs {embeds.shape[0]} LLM rows but the cache holds {self.llm['max_context']}; "
                                 "export with a larger max_context")
        return embeds

    def _llm_steps(self, embeds: np.ndarray, hidden: list[np.ndarray], out: dict) -> Iterator[ReplyStep]:
        stream, step = self.run["vn_llm"].stream(), self.llm["prefill_max_tokens"]
        for start in range(0, embeds.shape[0], step):
            out.update(stream({"input_embeds": embeds[None, start:start + step], "position": np.array([start])}))
            yield ReplyStep("prefill")
        position, reply, said = embeds.shape[0], [], ""
        limit = min(self.max_new_tokens, self.llm["max_context"] - position)
        for _ in range(limit):
            hidden.append(out["hidden"][0])
            token = int(np.argmax(out["logits"][0]))
            if token in self.stops:
                out["finish"] = "stop"
                return
            reply.append(token)
            text = self.tokenizer.decode(reply)
            delta = "" if text.endswith("\ufffd") else text[len(said):]
            said += delta
            out["text"] = said
            yield ReplyStep("token", token=token, text=delta)
            out.update(stream({"input_embeds": np.asarray(self.table[token])[None, None], "position": np.array([position])}))
            position += 1
        out["finish"] = "length"

    def respond(self, audio: np.ndarray) -> Iterator[ReplyStep]:
        """Every stage of one reply to ``audio`` (16 kHz float32), one engine call per step."""
        speech = self.speech
        embeds = self.prompt_rows(np.asarray(audio, np.float32))
        yield ReplyStep("listen")
        self.decoder.reset()
        rule = MtpRule.streaming(speech["sos_id"], speech["eos_id"], speech["heads"], chunk_units=speech["speech_token_num"],
                                 max_tokens=speech["max_speech_rows"] - speech["heads"],
                                 penalty_window=speech["penalty_window"], penalty=speech["penalty"])
        units = StreamingUnits(self.decoder, rule, text_capacity=speech["max_text_rows"],
                               speech_capacity=speech["max_speech_rows"])
        flow, vocoder = FlowStream(self.flow), HiftStream(self.hift, self.hift_config, seed=self.seed)
        chunker = TextChunker(ChunkRule.from_config(speech), self.table[self.llm.get("end_row_id", self.llm["eot_id"])], self.tokenizer.decode)
        hidden: list[np.ndarray] = []
        out: dict = {"text": "", "finish": "length"}
        for step in self._llm_steps(embeds, hidden, out):
            yield step
            for call in chunker.step(step.token, hidden.pop()) if step.kind == "token" else ():
                yield from self._speak(units, flow, vocoder, call)
        # The end step: <|eot_id|>'s own row, or embed(<|eot_id|>) at the length limit (the reference's max_len).
        end_row = hidden.pop() if out["finish"] == "stop" else chunker.end_row
        for call in chunker.step(self.llm["eot_id"], end_row, end=True):
            yield from self._speak(units, flow, vocoder, call)
        yield ReplyStep("done", text=out["text"], finish=out["finish"])

    def _speak(self, units: StreamingUnits, flow: FlowStream, vocoder: HiftStream,
               call: SpeechCall) -> Iterator[ReplyStep]:
        spoken = [u for u in units.run(call) if u < self.speech["unit_vocab"]]  # no special id is voiced
        yield ReplyStep("units", units=spoken)
        last = call.end_of_reply
        chunks = flow.push(spoken, last=last)
        for i, mel in enumerate(chunks):
            yield ReplyStep("mel", frames=mel.shape[1])
            final = last and i == len(chunks) - 1
            if mel.shape[1] == 0 and (not final or vocoder.cache is None):
                continue  # nothing new to voice (a final call still flushes the held-back tail)
            yield ReplyStep("pcm", pcm=vocoder.push(mel, final=final))


def _checked(manifest: Manifest) -> Manifest:
    manifest.require_recipe(RECIPES, CONFIG_KEYS, COMPONENTS, "edgevoice export --model vocalnet-tiny --target cpu --out DIR")
    return manifest
