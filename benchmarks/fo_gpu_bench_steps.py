"""Per-step latency of every Freeze-Omni component, eager and as one CUDA graph, next to its floor.

Each component is bound to static device tensors at a steady-state point of a conversation
(encoder window full, LLM cache half full, speech decoder a few tokens into a segment) and timed
from the same state on every call. The floor is the bytes of weights one step must read divided
by the measured copy bandwidth: no step can be faster, and a decode step that streams the whole
LLM should come close to it.
"""

from __future__ import annotations

from typing import Callable

import torch

from fo_gpu_bench_device import (
    FoStack,
    LlmSession,
    SpeechSession,
    Stepper,
    bind_llm,
    bind_speech_prefix,
    bind_speech_text,
    bind_speech_token,
    bind_stateful,
    device_state,
    section,
    summarize,
    time_calls,
    weight_bytes,
)

LISTEN_CHUNK_MS = 160.0  # audio per listen step: the listen path must keep up with it
LISTEN_PARTS = ("fo_frontend", "fo_encoder", "fo_adapter", "fo_llm_listen")
WEIGHTS_OF = {"codec_first_window": "codec", "codec_window": "codec"}  # benches that share a component's weights

Bench = tuple[Callable[[], object], Callable[[], None]]  # (bound body, reset to the measured state)


def _noop() -> None:
    return None


def listen_benches(stack: FoStack, llm: LlmSession, generator: torch.Generator) -> dict[str, Bench]:
    dev, listen = stack.device, stack.listen
    randn = lambda *shape: torch.randn(*shape, generator=generator, device=dev)  # noqa: E731
    frontend, encoder, adapter = listen.frontend, listen.encoder, listen.adapter
    enc_state = device_state(encoder, dev)
    window = encoder.config.window

    def encoder_reset() -> None:  # 5 s into a turn: the 64-frame window is full
        enc_state[0].fill_(125 * encoder.config.chunk_size)
        enc_state[1].fill_(window)

    embeds = 0.02 * randn(1, listen.adapter.config.out_frames, listen.llm.config.hidden)
    return {
        "fo_frontend": (bind_stateful(frontend, [0.1 * randn(1, frontend.config.chunk_samples)],
                                      device_state(frontend, dev)), _noop),
        "fo_encoder": (bind_stateful(encoder, [randn(1, encoder.config.in_frames, encoder.config.input_dim)],
                                     enc_state), encoder_reset),
        "fo_adapter": (bind_stateful(adapter, [randn(1, adapter.config.chunk_frames, adapter.config.in_dim)],
                                     device_state(adapter, dev)), _noop),
        "fo_llm_listen": (bind_llm(stack.views["listen"], llm, embeds), llm.reset),
    }


def reply_benches(stack: FoStack, llm: LlmSession, segment: int, window: int,
                  generator: torch.Generator) -> dict[str, Bench]:
    dev, views, config = stack.device, stack.views, stack.speech.decoder.config
    reply_ids = torch.tensor([stack.listen.prompt.response_prefix_ids], dtype=torch.long, device=dev)
    speech = SpeechSession(stack)
    rows = stack.rows_per_vector * segment
    hidden_rows = torch.randn(segment, stack.listen.llm.config.hidden, generator=generator, device=dev)
    text_ids = torch.randint(0, stack.listen.llm.config.vocab_size, (1, segment), generator=generator, device=dev)
    embed = stack.listen.llm.model.embed_tokens

    def codec_tokens(count: int) -> torch.Tensor:
        return torch.randint(0, config.odim, (1, count), generator=generator, device=dev)

    def token_reset() -> None:  # 20 tokens into the segment's speech
        speech.set_counters(rows, rows + 1 + 20)

    first, steady = codec_tokens(window), codec_tokens(stack.speech.codec.config.max_tokens)
    return {
        "fo_llm_prefill": (bind_llm(views["prefill"], llm, reply_ids), llm.reset),
        "fo_llm_decode": (bind_llm(views["decode"], llm, llm.next_id), llm.reset),
        "speech_prefix": (bind_speech_prefix(views["speech_prefix"], speech, hidden_rows), _noop),
        "speech_text": (bind_speech_text(views["speech_text"], speech, text_ids, embed),
                        lambda: speech.set_counters(rows, 0)),
        "speech_token": (bind_speech_token(views["speech_token"], speech), token_reset),
        "codec_first_window": (lambda: stack.speech.codec.step(first)[0], _noop),
        "codec_window": (lambda: stack.speech.codec.step(steady)[0], _noop),
    }


def measure_one(stack: FoStack, bench: Bench, steps: int, warmup: int) -> dict:
    body, reset = bench
    result: dict = {}
    section(result, "eager", lambda: summarize(time_calls(Stepper(body, False), reset, stack.device, steps, warmup)))
    if stack.device.type == "cuda":
        section(result, "graphs", lambda: summarize(
            time_calls(Stepper(body, True, reset), reset, stack.device, steps, warmup)))
    else:
        result["graphs"] = {"skipped": "CUDA graphs need a CUDA device"}
    eager, graphs = result["eager"].get("median"), result["graphs"].get("median")
    if eager and graphs:
        result["graph_speedup"] = eager / graphs
    return result


def add_floor(result: dict, weights: int, bandwidth_gbps: float | None) -> None:
    result["weight_mb"] = weights / 1e6
    if not bandwidth_gbps:
        return
    floor = weights / (bandwidth_gbps * 1e9) * 1e3
    result["floor_ms"] = floor
    best = result.get("graphs", {}).get("median") or result.get("eager", {}).get("median")
    if best and floor:
        result["best_over_floor"] = best / floor


def measure_steps(stack: FoStack, segment: int, window: int, steps: int, warmup: int,
                  bandwidth_gbps: float | None) -> dict:
    """Every component's step latency: {name: {eager, graphs, graph_speedup, weight_mb, floor_ms}}."""
    generator = torch.Generator(device=stack.device).manual_seed(0)
    llm = LlmSession(stack, start=stack.context // 2)
    benches = {**listen_benches(stack, llm, generator), **reply_benches(stack, llm, segment, window, generator)}
    weights = weight_bytes(stack)
    results: dict = {"setup": {"llm_position": llm.start, "llm_context": stack.context, "segment_tokens": segment,
                               "speech_prefix_rows": stack.rows_per_vector * segment, "first_window_tokens": window,
                               "steps": steps, "warmup": warmup}}
    with torch.inference_mode():
        for name, bench in benches.items():
            entry = section(results, name, lambda: measure_one(stack, bench, steps, warmup))
            if entry is not None:
                add_floor(entry, weights[WEIGHTS_OF.get(name, name)], bandwidth_gbps)
    results["listen_chunk"] = listen_chunk_total(results)
    return results


def listen_chunk_total(results: dict) -> dict:
    """One 160 ms listen step end to end (front end + encoder + adapter + LLM with the state head)."""
    total: dict = {"audio_ms": LISTEN_CHUNK_MS}
    for mode in ("eager", "graphs"):
        medians = [results.get(part, {}).get(mode, {}).get("median") for part in LISTEN_PARTS]
        if all(m is not None for m in medians):
            total[f"{mode}_ms"] = sum(medians)
            total[f"{mode}_real_time_factor"] = sum(medians) / LISTEN_CHUNK_MS
    return total
