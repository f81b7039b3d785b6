"""From a respond decision (turn state 1) to the first PCM, following Freeze-Omni's streaming loop.

The stages are those of the paper's latency table, each reported as the time since the decision:

1. first text chunk: the reply prefix "<|im_end|>\\n<|im_start|>assistant\\n" prefilled (its last
   position chooses the first token), then one decode step per further token until the segment
   has ``M`` tokens and their hidden states. The host reads every token, as the reference does
   to detokenize and look for a segment end. The reference's server cuts the first segment at a
   punctuation mark once at least 4 hidden states are pending (commas count for the first
   segment), so M = 4 is its earliest cut; 8 stands for a short first clause.
2. speech-decoder prefill: the M hidden states as the prefix (each 3584-d vector -> 4 rows of
   896), then the text decoder + first AR pass over the embedded segment tokens. The segment's
   own ids stand in for the re-tokenized text (same count of rows).
3. first speech-token chunk: SOS, then one AR step per codec token until the codec FIFO
   (``edgevoice.runtime.freeze_omni.speech_tokens.CodecTokenFifo``) hands out its first window: the server's
   first chunk of 20 tokens plus 10 look-ahead (``checkpoints/server.json``). Greedy over codec
   ids, so random weights never stop early on EOS.
4. first PCM: the codec on that window, copied to the host and trimmed to the emitted chunk.

Wall-clock time on the host (the loop syncs on every token anyway); run eagerly and with every
fixed-shape step as one CUDA graph. The prefix and text graphs are captured per segment size
in advance, as a runtime would capture a set of sizes.
"""

from __future__ import annotations

import statistics
import time

import numpy as np
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
    section,
    synchronize,
    weight_bytes,
)

from edgevoice.runtime.freeze_omni.speech_tokens import CodecStreamConfig, CodecTokenFifo

SERVER_FIRST_CHUNK = 20  # checkpoints/server.json decoder_first_chunk_size
STAGES = ("first_text_chunk", "speech_decoder_prefill", "first_speech_token_chunk", "first_pcm")
PAPER = {
    "respond_to_first_pcm_ms_average": 745, "gpu": "A100", "source": "Freeze-Omni paper, latency table (average)",
    "stages": list(STAGES), "per_stage_ms": None,  # the per-stage values are not in the project's notes
    "vocalnet_first_chunk": {"ms": 320, "gpu": "L20"}, "target": {"ms": 150, "gpu": "H100"},
}


def first_window_tokens(config: CodecStreamConfig) -> int:
    """Tokens the FIFO takes before its first codec call."""
    fifo = CodecTokenFifo(config)
    while (window := fifo.push(0)) is None:
        pass
    return len(window.tokens)


class RespondLoop:
    """Every step of the loop bound to static tensors; eager, or each fixed-shape step one CUDA graph."""

    def __init__(self, stack: FoStack, graphs: bool, segments: tuple[int, ...], stream: CodecStreamConfig):
        dev, views = stack.device, stack.views
        self.stack, self.stream, self.hop = stack, stream, stack.speech.codec.config.hop
        self.llm = LlmSession(stack, start=stack.context // 2)
        reply_ids = torch.tensor([stack.listen.prompt.response_prefix_ids], dtype=torch.long, device=dev)
        self.prefill = Stepper(bind_llm(views["prefill"], self.llm, reply_ids), graphs, self.llm.reset)
        self.decode = Stepper(bind_llm(views["decode"], self.llm, self.llm.next_id), graphs, self.llm.reset)
        self.hidden_rows = torch.zeros(max(segments), stack.listen.llm.config.hidden, device=dev)
        self.text_ids = torch.zeros(1, max(segments), dtype=torch.long, device=dev)
        self.speech = SpeechSession(stack)
        self.speech_prefill = {m: self._speech_prefill(m, graphs) for m in segments}
        self.token = Stepper(bind_speech_token(views["speech_token"], self.speech), graphs, self._token_start)
        self.window = first_window_tokens(stream)
        self.codec_tokens = torch.zeros(1, self.window, dtype=torch.long, device=dev)
        self.codec = Stepper(lambda: stack.speech.codec.step(self.codec_tokens)[0], graphs)

    def _speech_prefill(self, m: int, graphs: bool) -> tuple[Stepper, Stepper]:
        views, rows = self.stack.views, self.stack.rows_per_vector * m
        prefix = bind_speech_prefix(views["speech_prefix"], self.speech, self.hidden_rows[:m])
        text = bind_speech_text(views["speech_text"], self.speech, self.text_ids[:, :m],
                                self.stack.listen.llm.model.embed_tokens)
        return (Stepper(prefix, graphs), Stepper(text, graphs, lambda: self.speech.set_counters(rows, 0)))

    def _token_start(self) -> None:
        self.speech.token.fill_(self.speech.config.sos_id)

    def _keep(self, i: int, outputs) -> int:
        """Keep token i's hidden state and id for the speech decoder; the host reads the id."""
        self.hidden_rows[i].copy_(outputs[1][0])
        self.text_ids[0, i].copy_(self.llm.next_id[0, 0])
        return int(self.llm.next_id.item())

    def run(self, m: int) -> dict[str, float]:
        """One reply start with a first segment of ``m`` tokens: cumulative ms per stage."""
        self.llm.reset()
        synchronize(self.stack.device)
        begin = time.perf_counter()
        marks = []
        self._keep(0, self.prefill())
        for i in range(1, m):
            self._keep(i, self.decode())
        marks.append(time.perf_counter())
        for stepper in self.speech_prefill[m]:
            stepper()
        synchronize(self.stack.device)
        marks.append(time.perf_counter())
        self._token_start()
        fifo, window = CodecTokenFifo(self.stream), None
        while window is None:
            window = fifo.push(int(self.token().item()))
        marks.append(time.perf_counter())
        self.codec_tokens.copy_(torch.from_numpy(window.tokens).view(1, -1))
        pcm = window.trim(self.codec()[0].cpu().numpy(), self.hop)
        marks.append(time.perf_counter())
        if pcm.shape[0] != (self.window - window.drop) * self.hop:
            raise RuntimeError(f"first PCM has {pcm.shape[0]} samples, expected {(self.window - window.drop) * self.hop}")
        self.pcm_finite = bool(np.isfinite(pcm).all())  # recorded, not fatal: random weights, timing still holds
        return {stage: (mark - begin) * 1e3 for stage, mark in zip(STAGES, marks)}


def stage_floors(stack: FoStack, m: int, window: int, bandwidth_gbps: float) -> dict[str, float]:
    """Cumulative weight-streaming floor per stage: weight bytes read / copy bandwidth."""
    w = weight_bytes(stack)
    reads = [m * w["fo_llm_decode"], w["speech_prefix"] + w["speech_text"], window * w["speech_token"], w["codec"]]
    cumulative = np.cumsum(reads) / (bandwidth_gbps * 1e9) * 1e3
    return dict(zip(STAGES, (float(c) for c in cumulative)))


def measure_mode(stack: FoStack, graphs: bool, segments: tuple[int, ...], stream: CodecStreamConfig,
                 repeats: int) -> dict:
    loop = RespondLoop(stack, graphs, segments, stream)
    results = {}
    for m in segments:
        loop.run(m)  # warm-up: first calls of eager kernels pick algorithms and fill the allocator
        runs = [loop.run(m) for _ in range(repeats)]
        median = {stage: statistics.median(r[stage] for r in runs) for stage in STAGES}
        stage_ms = dict(zip(STAGES, np.diff([0.0, *median.values()]).tolist()))
        results[str(m)] = {"cumulative_ms": median, "stage_ms": stage_ms, "runs": runs, "pcm_finite": loop.pcm_finite}
    return results


def measure_timeline(stack: FoStack, segments: tuple[int, ...], headline: int, repeats: int,
                     bandwidth_gbps: float | None, published_shapes: bool) -> dict:
    stream = CodecStreamConfig(hop=stack.speech.codec.config.hop, first_chunk=SERVER_FIRST_CHUNK)
    window = first_window_tokens(stream)
    report: dict = {"segment_tokens": list(segments), "headline_segment_tokens": headline,
                    "first_window_tokens": window, "first_pcm_samples": (window - stream.padding) * stream.hop,
                    "llm_steps_per_segment": "1 prefill of the reply prefix + (M - 1) decode steps",
                    "speech_token_steps": window, "paper": PAPER}
    with torch.inference_mode():
        section(report, "eager", lambda: measure_mode(stack, False, segments, stream, repeats))
        if stack.device.type == "cuda":
            section(report, "graphs", lambda: measure_mode(stack, True, segments, stream, repeats))
        else:
            report["graphs"] = {"skipped": "CUDA graphs need a CUDA device"}
    if bandwidth_gbps:
        report["floor_ms"] = {str(m): stage_floors(stack, m, window, bandwidth_gbps) for m in segments}
    report["headline"] = headline_row(report, headline, published_shapes)
    return report


def headline_row(report: dict, m: int, published_shapes: bool) -> dict:
    """Respond -> first PCM at the headline segment, best mode, next to the paper's average.

    The ratio to the paper is only given for the published shapes: tiny widths say nothing about it.
    """
    row: dict = {"segment_tokens": m, "paper_ms": PAPER["respond_to_first_pcm_ms_average"]}
    for mode in ("eager", "graphs"):
        cumulative = report.get(mode, {}).get(str(m), {}).get("cumulative_ms")
        if cumulative:
            row[f"{mode}_ms"] = cumulative["first_pcm"]
    best = row.get("graphs_ms") or row.get("eager_ms")
    if best and published_shapes:
        row["speedup_vs_paper"] = PAPER["respond_to_first_pcm_ms_average"] / best
    return row
