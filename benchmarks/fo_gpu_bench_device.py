"""Device side of the Freeze-Omni benchmark: modules on the device, steps over static tensors, timers.

``build_stack`` makes the listen and speech paths with seeded random weights directly on the
device (the 7.6 B-parameter LLM is initialised there, never on the host) and casts them to the
compute dtype. Every measured step is then *bound* to static device tensors: its inputs sit in
fixed buffers and its body writes the new state back into the state buffers in place. That is
what lets one body run either eagerly or as a captured CUDA graph (``Stepper``) with identical
results, so eager and graph timings measure the same work.
"""

from __future__ import annotations

import statistics
import time
import traceback
from dataclasses import dataclass, replace
from typing import Any, Callable

import torch

from edgevoice.models.freeze_omni.speech_decoder import speech_decoder_steps
from edgevoice.models.freeze_omni.state_head import ListenLlmStep
from edgevoice.models.llm import LlmStep
from edgevoice.modules.rope import RotaryEmbedding
from edgevoice.recipes.freeze_omni.listen import FULL_LISTEN, TINY_LISTEN, random_listen
from edgevoice.recipes.freeze_omni.speech import PUBLISHED_SPEECH, TINY_SPEECH, random_speech

SPEECH_TOKEN_CAPACITY = 1000  # the reference's max_tokens per segment: sizes the decoder's AR cache rows
CODEC_MAX_TOKENS = 60  # the largest FIFO window (10 + 40 + 10)


def section(report: dict, key: str, work: Callable[[], Any]) -> Any:
    """Run ``work()`` and keep its result under ``key``, or its error: one failure never ends the run."""
    started = time.perf_counter()
    try:
        report[key] = work()
        return report[key]
    except Exception as exc:  # noqa: BLE001 - recorded in the JSON, the next section runs
        report[key] = {"error": f"{type(exc).__name__}: {exc}", "traceback": traceback.format_exc(limit=6)}
        return None
    finally:
        report.setdefault("seconds", {})[key] = round(time.perf_counter() - started, 2)


@dataclass
class FoStack:
    """Both Freeze-Omni paths at one size, on one device, computing in one dtype."""

    listen: Any  # FoListen
    speech: Any  # FoSpeech
    views: dict[str, Any]  # the step views: listen, prefill, decode, speech_prefix, speech_text, speech_token
    device: torch.device
    dtype: torch.dtype
    context: int  # LLM KV cache rows

    @property
    def rows_per_vector(self) -> int:  # decoder rows per LLM vector (4 at full size: 3584 = 4 x 896)
        return self.listen.llm.config.hidden // self.speech.decoder.config.width


def build_stack(dims: str, device: torch.device, dtype: torch.dtype, context: int, max_segment: int,
                seed: int = 0) -> FoStack:
    listen_dims, speech_dims = (FULL_LISTEN, PUBLISHED_SPEECH) if dims == "full" else (TINY_LISTEN, TINY_SPEECH)
    llm_config = replace(listen_dims.llm, max_context=context)
    listen = random_listen(replace(listen_dims, llm=llm_config), seed=seed, device=device)
    rows = llm_config.hidden // speech_dims.width * max_segment
    # The speech path is small (0.2 B parameters): built on the host as its recipe does, then moved.
    speech = random_speech(speech_dims, seed=seed, max_prefix_rows=rows, max_text_rows=rows,
                           max_speech_tokens=SPEECH_TOKEN_CAPACITY, codec_max_tokens=CODEC_MAX_TOKENS)
    speech.decoder.to(device)
    speech.codec.to(device)
    views = {"listen": ListenLlmStep(listen.llm, listen.state_head), "prefill": LlmStep(listen.llm, None, "ids"),
             "decode": LlmStep(listen.llm, 1, "ids"), **speech_decoder_steps(speech.decoder)}
    _cast([listen.encoder, listen.adapter, speech.codec, *views.values()], dtype)
    return FoStack(listen, speech, views, device, dtype, context)


def _cast(modules: list, dtype: torch.dtype) -> None:
    """set_compute_dtype on each, keeping rotary frequencies float32.

    ``Module.to(dtype)`` casts every float buffer, inv_freq included; bf16 frequencies would put
    rotary angles whole radians off after a few hundred positions.
    """
    rotaries = [m for module in modules for m in module.modules() if isinstance(m, RotaryEmbedding)]
    saved = [r.inv_freq.clone() for r in rotaries]
    for module in modules:
        module.set_compute_dtype(dtype)
    for rotary, freqs in zip(rotaries, saved):
        rotary.inv_freq = freqs


def parameter_counts(stack: FoStack) -> dict[str, int]:
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    return {"encoder": count(stack.listen.encoder), "adapter": count(stack.listen.adapter),
            "llm": count(stack.listen.llm), "speech_decoder": count(stack.speech.decoder),
            "codec": count(stack.speech.codec)}


# --- bytes a step must read: the numerator of the bandwidth floor -------------------------------


def tensor_bytes(tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors)


def weight_bytes(stack: FoStack) -> dict[str, int]:
    """Parameter bytes read by one step of each component (embedding tables: one row, so left out)."""
    llm, dec, codec = stack.listen.llm, stack.speech.decoder, stack.speech.codec
    llm_step = tensor_bytes(p for n, p in llm.named_parameters() if not n.startswith("model.embed_tokens"))
    ar = tensor_bytes(dec.layers.parameters())
    return {
        "fo_frontend": tensor_bytes(stack.listen.frontend.buffers()),
        "fo_encoder": tensor_bytes(stack.listen.encoder.parameters()),
        "fo_adapter": tensor_bytes(stack.listen.adapter.parameters()),
        "fo_llm_listen": llm_step + tensor_bytes(stack.listen.state_head.parameters()),
        "fo_llm_prefill": llm_step,
        "fo_llm_decode": llm_step,
        "speech_prefix": tensor_bytes(dec.layers_prefix.parameters()),
        "speech_text": tensor_bytes(dec.layers_pre_nn.parameters()) + ar,
        "speech_token": ar + tensor_bytes([*dec.norm.parameters(), *dec.out_fnn.parameters()]),
        "codec": tensor_bytes(p for n, p in codec.named_parameters() if not n.startswith("codebook")),
    }


# --- static tensors and bound steps -------------------------------------------------------------


def device_state(module, device: torch.device) -> list[torch.Tensor]:
    return [torch.zeros(s.shape, dtype=s.dtype, device=device) for s in module.state_specs()]


def write_back(static: list[torch.Tensor], new) -> None:
    """Copy a step's new state over its static state tensors (their addresses are in the graphs)."""
    for old, fresh in zip(static, new):
        if fresh.untyped_storage().data_ptr() == old.untyped_storage().data_ptr():
            fresh = fresh.clone()  # a view of its own input would overlap the copy
        old.copy_(fresh)


class LlmSession:
    """The LLM's static tensors, shared by its listen, prefill and decode views."""

    def __init__(self, stack: FoStack, start: int):
        self.caches = device_state(stack.views["decode"], stack.device)
        self.position = torch.full((1,), start, dtype=torch.long, device=stack.device)
        self.next_id = torch.zeros(1, 1, dtype=torch.long, device=stack.device)  # the last chosen token
        self.start = start

    def reset(self) -> None:
        self.position.fill_(self.start)


def bind_llm(view, session: LlmSession, first_input: torch.Tensor) -> Callable[[], tuple]:
    """An LLM step over ``first_input`` (ids or embeds): greedy choice into next_id, position advanced.

    Greedy on random weights: the text is meaningless, only the shapes and the loop matter.
    """
    n_outputs, tokens = len(view.output_names()), first_input.shape[1]

    def body():
        results = view.step(first_input, session.position, *session.caches)
        write_back(session.caches, results[n_outputs:])
        session.next_id.copy_(results[0].argmax(-1, keepdim=True))
        session.position.add_(tokens)
        return results[:n_outputs]  # logits, hidden (+ state logits/probs for the listen view)

    return body


class SpeechSession:
    """The speech decoder's static state (caches, prefix_len, position) shared by its three views."""

    def __init__(self, stack: FoStack):
        self.config = stack.speech.decoder.config
        self.state = device_state(stack.views["speech_token"], stack.device)
        self.token = torch.full((1, 1), self.config.sos_id, dtype=torch.long, device=stack.device)

    def set_counters(self, prefix_len: int, position: int) -> None:
        self.state[-2].fill_(prefix_len)
        self.state[-1].fill_(position)


def bind_speech_prefix(view, session: SpeechSession, hidden_rows: torch.Tensor) -> Callable[[], None]:
    """LLM hidden states (M, hidden) float32 -> the prefix region; each vector becomes hidden / width rows."""
    width = session.config.width

    def body():
        write_back(session.state, view.step(hidden_rows.view(1, -1, width), *session.state))

    return body


def bind_speech_text(view, session: SpeechSession, text_ids: torch.Tensor, embed) -> Callable[[], None]:
    """Segment token ids (1, N) -> LLM embeddings -> decoder rows -> text decoder + first AR pass."""
    width = session.config.width

    def body():
        text = embed(text_ids).view(1, -1, width)
        write_back(session.state, view.step(text, *session.state))

    return body


def bind_speech_token(view, session: SpeechSession) -> Callable[[], torch.Tensor]:
    """One codec token in, the next chosen greedily among codec ids (never EOS: random weights must not stop)."""
    odim = session.config.odim

    def body():
        logits, *new = view.step(session.token, *session.state)
        write_back(session.state, new)
        session.token.copy_(logits[:, :odim].argmax(-1, keepdim=True))
        return session.token

    return body


def bind_stateful(module, inputs: list[torch.Tensor], state: list[torch.Tensor]) -> Callable[[], tuple]:
    """Front end, encoder or adapter: inputs + state -> outputs, state written back."""
    n_outputs = len(module.output_names())

    def body():
        results = module.step(*inputs, *state)
        write_back(state, results[n_outputs:])
        return results[:n_outputs]

    return body


# --- eager or graph ---------------------------------------------------------------------------


class Stepper:
    """One bound body, run eagerly or captured once as a CUDA graph and replayed.

    Capture follows the PyTorch recipe: a few eager runs on a side stream first (cuBLAS
    handles, kernel selection and allocator pools must not be recorded), then the capture. The
    warm-up runs change the static state; callers reset their counters before measuring.
    """

    def __init__(self, body: Callable[[], Any], graphs: bool, reset: Callable[[], None] = lambda: None,
                 warmup: int = 3):
        self.body = body
        self.graph = None
        self.outputs = None
        if graphs:
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                for _ in range(warmup):
                    reset()  # each warm-up from the start state: counters must stay inside the caches
                    body()
            torch.cuda.current_stream().wait_stream(side)
            self.graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(self.graph):
                self.outputs = body()
            reset()

    def __call__(self):
        if self.graph is None:
            return self.body()
        self.graph.replay()
        return self.outputs


# --- timing -------------------------------------------------------------------------------------


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def time_calls(call: Callable[[], Any], reset: Callable[[], None], device: torch.device, steps: int,
               warmup: int) -> list[float]:
    """Milliseconds of ``steps`` calls, each from the same reset state: CUDA events on a GPU.

    The host does not wait between calls, so an eager step slower to dispatch than to run shows
    up as its dispatch time, as it would in a real loop.
    """
    for _ in range(warmup):
        reset()
        call()
    synchronize(device)
    if device.type != "cuda":
        times = []
        for _ in range(steps):
            reset()
            begin = time.perf_counter()
            call()
            times.append((time.perf_counter() - begin) * 1e3)
        return times
    pairs = []
    for _ in range(steps):
        reset()
        begin, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        begin.record()
        call()
        end.record()
        pairs.append((begin, end))
    torch.cuda.synchronize()
    return [b.elapsed_time(e) for b, e in pairs]


def summarize(times_ms: list[float]) -> dict[str, float]:
    ordered = sorted(times_ms)
    return {"median": statistics.median(ordered), "p90": ordered[min(len(ordered) - 1, int(0.9 * len(ordered)))],
            "min": ordered[0], "mean": statistics.fmean(ordered), "n": len(ordered)}


def copy_bandwidth(device: torch.device, megabytes: int, repeats: int = 10) -> dict[str, float]:
    """Device-to-device copy bandwidth (read + write bytes per second): what a weight-streaming step can reach."""
    src = torch.empty(megabytes * 2**20, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    times = time_calls(lambda: dst.copy_(src), lambda: None, device, repeats, warmup=2)
    seconds = statistics.median(times) / 1e3
    return {"buffer_mb": megabytes, "median_ms": seconds * 1e3, "gb_per_s": 2 * src.numel() / seconds / 1e9}
