"""VocalNet's modules at one shape set, built part by part on a device, and the bound steps the benchmark times.

Shapes are read, never restated: ``shape_set("1b")`` takes VocalNet-1B's published configurations
from the recipe's meta-device build (``edgevoice.recipes.vocalnet.published``: LLaMA-3.2-1B,
Whisper-large-v3's encoder with the 5-frame projector, the ``ar_config_5`` speech decoder,
CosyVoice2's flow and HiFT) and ``shape_set("tiny")`` takes the `vocalnet-tiny` recipe's toy widths
from its seeded modules. Capacities (KV rows, prefill chunk, decoder regions) are the recipe's
``VocalNetLimits``.

Each part (listen, llm, decoder, flow, hift) is built on its own, directly on the device, with
seeded random weights, measured and freed before the next: the host never holds more than one
part (the 1B LLM alone is 5 GB in float32). As in ``fo_gpu_bench_device``, every step is bound to
static device tensors (inputs in fixed buffers, new state written back in place), so one body runs
either eagerly or as a captured CUDA graph (``Stepper``) doing the same work. What the host does
between calls in the runtime (``edgevoice.runtime.vocalnet``) is kept where it costs a device
round trip: reading each text token, copying the unit logits out and the chosen units back in,
copying the emitted PCM out.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, replace
from typing import Any

import torch
from fo_gpu_bench_device import Stepper, device_state, write_back

from edgevoice.models.llm import LlmConfig, LlmModel, LlmStep
from edgevoice.models.vocalnet.flow import FlowConfig, FlowModel, euler_schedule
from edgevoice.models.vocalnet.hift import HiftConfig, HiftGenerator
from edgevoice.models.vocalnet.listen import VocalNetListen
from edgevoice.models.vocalnet.speech_decoder import (
    MtpDecoderConfig,
    MtpSpeechDecoder,
    speech_decoder_steps,
)
from edgevoice.models.whisper.model import WhisperConfig
from edgevoice.recipes.vocalnet.graphs import (
    FlowEncoderStep,
    FlowEulerStep,
    HiftDecodeGraph,
    HiftSourceGraph,
)
from edgevoice.recipes.vocalnet.recipe import VocalNetLimits

PARTS = ("listen", "llm", "decoder", "flow", "hift")
LIMITS = VocalNetLimits()  # the recipe's default capacities
# The fixture's voice prompt (shared/fixtures/vocalnet_small/prompt: 54 S3 tokens, 2.16 s). The
# flow re-encodes the prompt on every call, so its length sets the flow's frames; the published
# prompt recording's length is not known here.
FIXTURE_VOICE_TOKENS = 54
# Rows of the Llama-3 chat template around the speech rows (73 prompt ids, one of them the speech
# placeholder); tests/test_vocalnet_gpu_bench.py checks it against llama3_prompt_ids on the
# fixture's Llama-3 tokenizer. A constant so the GPU machine needs no tokenizer file.
LLAMA3_TEMPLATE_ROWS = 72

Bench = tuple[Callable[[], Any], Callable[[], None]]  # (body, reset to the measured state)


def _noop() -> None:
    return None


@dataclass(frozen=True)
class ShapeSet:
    """Every configuration the benchmark builds from, plus the reply geometry it drives them with."""

    name: str
    whisper: WhisperConfig
    projector_k: int  # encoder frames concatenated per LLM row
    projector_inner: int
    llm: LlmConfig
    decoder: MtpDecoderConfig
    flow: FlowConfig
    hift: HiftConfig
    voice_tokens: int  # CosyVoice2 prompt tokens before the reply's

    def summary(self) -> dict:
        w, l, d, f = self.whisper, self.llm, self.decoder, self.flow
        return {"name": self.name, "encoder": {"width": w.width, "layers": w.n_audio_layers, "frames": w.n_audio_ctx},
                "projector": {"k": self.projector_k, "inner": self.projector_inner},
                "llm": {"hidden": l.hidden, "layers": l.layers, "heads": l.heads, "kv_heads": l.kv_heads,
                        "ffn": l.ffn, "vocab": l.vocab_size, "max_context": l.max_context,
                        "prefill_max_tokens": l.prefill_max_tokens},
                "decoder": {"width": d.width, "pre_nn_layers": d.pre_nn_layers, "decoder_layers": d.decoder_layers,
                            "mtp_layers": d.mtp_layers, "mtp_used": d.mtp_used, "mtp_layers_built": d.mtp_used,
                            "heads_per_step": d.heads_per_step},
                "flow": {"encoder_width": f.encoder.width, "estimator_channels": list(f.estimator.channels),
                         "n_timesteps": f.n_timesteps, "cfg_rate": f.cfg_rate, "token_rate_hz": f.input_frame_rate},
                "hift": {"base_channels": self.hift.base_channels, "samples_per_frame": self.hift.samples_per_frame},
                "voice_tokens": self.voice_tokens}


def shape_set(name: str, limits: VocalNetLimits = LIMITS) -> ShapeSet:
    """``1b``: VocalNet-1B's published shapes; ``tiny``: the `vocalnet-tiny` recipe's toy widths."""
    if name == "1b":
        from edgevoice.recipes.vocalnet.published import published_components

        built = {c.name: c.module for c in published_components("VocalNet-1B", limits.max_context)}
        listen, llm = built["vn_listen"], built["vn_llm"].config
        return ShapeSet("1b", listen.config, listen.projector.k, listen.projector.linear1.out_features,
                        replace(llm, prefill_max_tokens=limits.prefill_max_tokens), built["speech_text"].config,
                        built["flow_encoder"].flow.cfg, built["hift_decode"].generator.config, FIXTURE_VOICE_TOKENS)
    if name == "tiny":
        from edgevoice.recipes.vocalnet.tiny import TINY_LIMITS, TinyDims, random_parts

        dims = TinyDims()
        parts = random_parts(dims, TINY_LIMITS, seed=0)
        return ShapeSet("tiny", parts.listen.config, parts.listen.projector.k,
                        parts.listen.projector.linear1.out_features, parts.llm.config, parts.decoder.config,
                        parts.flow.cfg, parts.hift.config, dims.prompt_tokens)
    raise ValueError(f"unknown shape set {name!r}: use 1b or tiny")


# --- building ---------------------------------------------------------------------------------


def build_part(shapes: ShapeSet, part: str, device: torch.device, dtype: torch.dtype, seed: int = 0,
               limits: VocalNetLimits = LIMITS) -> dict:
    """The part's step views, with seeded random weights made on ``device`` and cast to ``dtype``.

    HiFT stays float32 whatever ``dtype`` is (its graphs pin it, as the recipe exports them).
    The decoder is built with only the MTP layers that run (``mtp_used`` of ``mtp_layers``): the
    others are never called, and leaving them out saves 1 GB of float32 on the host.
    """
    s = shapes
    torch.manual_seed(seed)
    with torch.device(device):
        if part == "listen":
            views = {"vn_listen": VocalNetListen(s.whisper, s.projector_k, s.projector_inner, s.llm.hidden)}
        elif part == "llm":
            llm = LlmModel(s.llm)
            views = {"prefill": LlmStep(llm, None, "embeds"), "decode": LlmStep(llm, 1, "embeds")}
        elif part == "decoder":
            views = speech_decoder_steps(MtpSpeechDecoder(replace(s.decoder, mtp_layers=s.decoder.mtp_used)))
        elif part == "flow":  # the capacities below only bound the export's dynamic dims
            flow, tokens = FlowModel(s.flow), s.voice_tokens + limits.max_reply_units
            views = {"flow_encoder": FlowEncoderStep(flow, tokens),
                     "flow_step": FlowEulerStep(flow, tokens * s.flow.token_mel_ratio)}
        elif part == "hift":
            hift = HiftGenerator(s.hift)
            views = {"hift_source": HiftSourceGraph(hift, limits.hift_max_frames),
                     "hift_decode": HiftDecodeGraph(hift, limits.hift_max_frames)}
        else:
            raise ValueError(f"unknown part {part!r}: one of {', '.join(PARTS)}")
    for view in views.values():
        view.eval().requires_grad_(False)
        view.set_compute_dtype(dtype)
    return views


def parameter_count(views: dict) -> int:
    unique = {id(p): p for view in views.values() for p in view.parameters()}
    return sum(p.numel() for p in unique.values())


def _randn(generator: torch.Generator, *shape: int, scale: float = 1.0) -> torch.Tensor:
    return scale * torch.randn(*shape, generator=generator, device=generator.device)


# --- the parts' benches ------------------------------------------------------------------------


@dataclass(frozen=True)
class ReplyGeometry:
    """How one reply starts, in the runtime's units (``edgevoice.runtime.vocalnet.pipeline``)."""

    turn_samples: int  # the user's turn at 16 kHz
    speech_rows: int  # projector rows of the turn the LLM reads
    text_rows_per_chunk: int  # LLM hidden states per decoder call (txt_token_num)
    units_per_chunk: int  # units per non-final decoder call (speech_token_num)
    chunk_tokens: int  # units past the offset that trigger a flow call
    chunk_advance: int  # offset advance per non-final flow call
    late_chunk: int  # the later flow call measured (its cost grows with the reply)
    mel_cache_frames: int  # HiFT frames carried over between chunks

    @property
    def prompt_rows(self) -> int:
        return LLAMA3_TEMPLATE_ROWS + self.speech_rows


class ListenPart:
    """The whole 30 s window through log-mel, the encoder and the projector (the reference pads every turn)."""

    def __init__(self, views: dict, geometry: ReplyGeometry, generator: torch.Generator):
        self.view = views["vn_listen"]
        window = self.view.config.window_samples
        self.audio = torch.zeros(1, window, device=generator.device)
        self.audio[0, : geometry.turn_samples] = _randn(generator, geometry.turn_samples, scale=0.1)

    def benches(self, graphs: bool) -> tuple[dict[str, Bench], dict[str, Bench]]:
        listen = Stepper(lambda: self.view.step(self.audio)[0], graphs)
        return {"listen": (listen, _noop)}, {"vn_listen": (listen, _noop)}


class LlmPart:
    """Prefill of template + speech rows in chunks, then greedy decoding; the host reads every token."""

    def __init__(self, views: dict, geometry: ReplyGeometry, generator: torch.Generator):
        self.prefill_view, self.decode_view = views["prefill"], views["decode"]
        config, dev = self.decode_view.config, generator.device
        self.geometry = geometry
        self.caches = device_state(self.decode_view, dev)
        self.position = torch.zeros(1, dtype=torch.long, device=dev)
        self.next_id = torch.zeros(1, 1, dtype=torch.long, device=dev)  # the last chosen token
        self.prompt = _randn(generator, 1, geometry.prompt_rows, config.hidden, scale=0.02)  # template + speech rows
        step = config.prefill_max_tokens
        self.chunks = [(start, min(step, geometry.prompt_rows - start)) for start in range(0, geometry.prompt_rows, step)]
        self.embed = self.decode_view.llm.model.embed_tokens

    def _bind(self, view, rows: Callable[[], torch.Tensor], count: int) -> Callable[[], None]:
        def body():
            logits, _hidden, *caches = view.step(rows(), self.position, *self.caches)
            write_back(self.caches, caches)
            self.next_id.copy_(logits.argmax(-1, keepdim=True))
            self.position.add_(count)

        return body

    def _at(self, position: int) -> Callable[[], None]:
        return lambda: self.position.fill_(position)

    def benches(self, graphs: bool) -> tuple[dict[str, Bench], dict[str, Bench]]:
        prefills = [Stepper(self._bind(self.prefill_view, lambda s=s, n=n: self.prompt[:, s:s + n], n), graphs,
                            self._at(s)) for s, n in self.chunks]
        start = self.geometry.prompt_rows
        decode = Stepper(self._bind(self.decode_view, lambda: self.embed(self.next_id), 1), graphs, self._at(start))

        def first_token() -> int:
            for prefill in prefills:
                prefill()
            return int(self.next_id.item())

        def rest_of_first_chunk() -> list[int]:  # the prefill gave the first hidden state
            chosen = []
            for _ in range(self.geometry.text_rows_per_chunk - 1):
                decode()
                chosen.append(int(self.next_id.item()))
            return chosen

        stages = {"first_text_token": (first_token, self._at(0)),
                  "first_chunk_llm": (rest_of_first_chunk, self._at(start))}
        middle = self.decode_view.config.max_context // 2
        steps = {f"llm_prefill_{self.chunks[0][1]}": (prefills[0], self._at(0)),
                 "llm_decode": (decode, self._at(middle))}
        return stages, steps


class DecoderPart:
    """speech_text over one chunk of LLM rows, then MTP cycles: N units per speech_units call."""

    def __init__(self, views: dict, geometry: ReplyGeometry, generator: torch.Generator):
        self.text_view, self.units_view = views["speech_text"], views["speech_units"]
        config, dev = self.text_view.config, generator.device
        self.config, self.geometry = config, geometry
        self.state = device_state(self.text_view, dev)
        self.prenn_len = torch.zeros(1, dtype=torch.long, device=dev)
        self.text_len = torch.zeros(1, dtype=torch.long, device=dev)
        self.speech_len = torch.zeros(1, config.heads_per_step, dtype=torch.long, device=dev)
        self.rows = _randn(generator, 1, geometry.text_rows_per_chunk, config.width)
        self.sos = torch.full((1, 1), config.sos_id, dtype=torch.long, device=dev)
        self.fed = torch.zeros(1, config.heads_per_step, dtype=torch.long, device=dev)  # the last N units
        self.calls, self.units_per_call = 0, 0.0

    def _text(self) -> None:
        write_back(self.state, self.text_view.step(self.rows, self.prenn_len, self.text_len, *self.state))
        self.text_len.add_(self.rows.shape[1] + (self.text_len == 0).long())  # BOS joins the first call's rows
        self.prenn_len.add_(self.rows.shape[1])

    def _units(self, tokens: torch.Tensor) -> Callable[[], torch.Tensor]:
        def body():
            logits, *state = self.units_view.step(tokens, self.text_len, self.speech_len, *self.state)
            write_back(self.state, state)
            self.speech_len.add_(tokens.shape[1])
            return logits  # (1, N, V) float32

        return body

    def _choose(self, logits: torch.Tensor) -> list[int]:
        """The host's side of a cycle: logits out, N units chosen (greedy), fed back in."""
        units = logits[0].cpu().argmax(-1)  # (N,)
        self.fed.copy_(units.view(1, -1))
        self.calls += 1
        return units.tolist()

    def _lengths(self, prenn: int, text: int, speech: int) -> Callable[[], None]:
        def reset():
            self.prenn_len.fill_(prenn)
            self.text_len.fill_(text)
            self.speech_len.fill_(speech)

        return reset

    def benches(self, graphs: bool) -> tuple[dict[str, Bench], dict[str, Bench]]:
        rows, n = self.geometry.text_rows_per_chunk, self.config.heads_per_step
        later = self._lengths(4 * rows, 4 * rows + 1, 4 * self.geometry.units_per_chunk)  # four chunks in
        text = Stepper(self._text, graphs, self._lengths(0, 0, 0))
        first_cycle = Stepper(self._units(self.sos), graphs, self._lengths(0, rows + 1, 0))  # SOS alone
        cycle = Stepper(self._units(self.fed), graphs, later)

        def first_chunk() -> list[int]:
            self.calls = 0
            text()
            units = self._choose(first_cycle())
            while len(units) < self.geometry.units_per_chunk:
                units += self._choose(cycle())
            self.units_per_call = len(units) / self.calls
            return units

        stages = {"first_chunk_decoder": (first_chunk, self._lengths(0, 0, 0))}
        steps = {f"speech_text_{rows}": (text, later), f"speech_units_{n}": (cycle, later)}
        return stages, steps


class FlowPart:
    """One non-final flow call: prompt + reply tokens encoded, then the Euler steps (CFG pair inside each)."""

    def __init__(self, views: dict, shapes: ShapeSet, geometry: ReplyGeometry, generator: torch.Generator):
        self.encoder, self.step = views["flow_encoder"], views["flow_step"]
        self.cfg, self.geometry, self.generator = shapes.flow, geometry, generator
        self.prompt_tokens = shapes.voice_tokens
        dev = generator.device
        self.schedule = torch.stack([torch.cat([t, dt]) for t, dt in euler_schedule(self.cfg.n_timesteps,
                                                                                   self.cfg.t_scheduler)]).to(dev)
        self.speaker = _randn(generator, 1, self.cfg.spk_embed_dim)
        self.prompt_mel = _randn(generator, 1, self.cfg.mel_bins, self.cfg.token_mel_ratio * self.prompt_tokens)

    def reply_tokens(self, chunk: int) -> int:
        """Reply tokens the flow encodes on non-final call ``chunk`` (0-based): offset + chunk_tokens."""
        return chunk * self.geometry.chunk_advance + self.geometry.chunk_tokens

    def call(self, chunk: int, graphs: bool) -> tuple[Bench, Bench, Bench]:
        """(the whole call, its encoder, one Euler step) for non-final call ``chunk``."""
        cfg, g = self.cfg, self.generator
        ratio, total = cfg.token_mel_ratio, self.prompt_tokens + self.reply_tokens(chunk)
        frames = ratio * total - ratio * cfg.pre_lookahead  # the look-ahead frames saw padding: dropped
        keep_from = ratio * (self.prompt_tokens + chunk * self.geometry.chunk_advance)
        tokens = torch.randint(0, cfg.vocab_size, (1, total), generator=g, device=g.device)
        mu, x, noise = (torch.zeros(1, cfg.mel_bins, frames, device=g.device) for _ in range(3))
        noise.copy_(_randn(g, 1, cfg.mel_bins, frames))
        cond = torch.zeros_like(mu)
        cond[:, :, : self.prompt_mel.shape[2]] = self.prompt_mel
        spks = torch.zeros(1, cfg.mel_bins, device=g.device)
        t, dt = torch.zeros(1, device=g.device), torch.zeros(1, device=g.device)

        def encode_body():
            new_mu, new_spks = self.encoder.step(tokens, self.speaker)
            mu.copy_(new_mu[:, :, :frames])
            spks.copy_(new_spks)

        def at_step(k: int) -> None:
            t.copy_(self.schedule[k, :1])
            dt.copy_(self.schedule[k, 1:])

        encode = Stepper(encode_body, graphs)
        euler = Stepper(lambda: x.copy_(self.step.step(x, mu, spks, cond, t, dt)[0]), graphs,
                        lambda: (x.copy_(noise), at_step(0)))

        def whole() -> torch.Tensor:
            encode()
            x.copy_(noise)
            for k in range(self.schedule.shape[0]):
                at_step(k)
                euler()
            return x[:, :, keep_from:]  # (1, 80, new frames) for HiFT

        def reset_euler() -> None:
            x.copy_(noise)
            at_step(0)

        return (whole, _noop), (encode, _noop), (euler, reset_euler)

    def benches(self, graphs: bool) -> tuple[dict[str, Bench], dict[str, Bench]]:
        first, first_encoder, first_step = self.call(0, graphs)
        late, late_encoder, late_step = self.call(self.geometry.late_chunk, graphs)
        steps = {"flow_encoder_first": first_encoder, "flow_step_first": first_step, "flow_call_first": first,
                 "flow_encoder_late": late_encoder, "flow_step_late": late_step, "flow_call_late": late}
        return {"first_mel": first}, steps


class HiftPart:
    """HiFT on one chunk: source (F0 + excitation) then decode; the emitted PCM copied to the host."""

    def __init__(self, views: dict, generator: torch.Generator):
        self.source, self.decode = views["hift_source"], views["hift_decode"]
        self.config, self.generator = self.source.config, generator

    def chunk(self, frames: int, emitted_frames: int, graphs: bool) -> Bench:
        c, g = self.config, self.generator
        mel = _randn(g, 1, c.in_channels, frames)
        phase = math.pi * (2 * torch.rand(1, c.harmonics, generator=g, device=g.device) - 1)
        noise = _randn(g, 1, c.harmonics, frames, c.samples_per_frame)
        excitation = torch.zeros(1, 1, frames, c.samples_per_frame, device=g.device)

        def source_body():
            excitation.copy_(self.source.step(mel, phase, noise)[1])

        source = Stepper(source_body, graphs)
        decode = Stepper(lambda: self.decode.step(mel, excitation)[0], graphs)

        def call() -> torch.Tensor:
            source()
            return decode()[0, :emitted_frames].reshape(-1).cpu()  # the held-back tail waits for the next chunk

        return call, _noop

    def benches(self, graphs: bool, new_frames: int, cache_frames: int) -> tuple[dict[str, Bench], dict[str, Bench]]:
        first = self.chunk(new_frames, new_frames - cache_frames, graphs)  # no cache yet: holds back its tail
        steady = self.chunk(cache_frames + new_frames, new_frames, graphs)  # cached frames first, then new ones
        return {"first_pcm": first}, {f"hift_chunk_first_{new_frames}": first,
                                      f"hift_chunk_{cache_frames + new_frames}": steady}
