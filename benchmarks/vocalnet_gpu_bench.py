"""VocalNet at its published 1B shapes on a GPU (or the CPU), seeded random weights: how fast one reply starts.

What it measures (one JSON, rewritten after every part; a part that fails records its error and
the rest still runs):

* ``parts``: listen (Whisper-large-v3 encoder + projector), llm (LLaMA-3.2-1B), decoder (speech
  decoder, main + 2 MTP heads), flow (CosyVoice2 flow matching), hift (HiFT vocoder), each built
  on the device on its own (``vocalnet_gpu_bench_parts``), timed, then freed. Per part and mode
  (``eager``; on CUDA also ``graphs``, every fixed-shape step one captured CUDA graph):
  - ``stages``: the calls one reply makes on its way to the first PCM, host readouts included;
  - ``steps``: steady-state step latencies (LLM decode step, decoder cycle, flow call at the first
    and at a later chunk, HiFT chunk with its cache, ...), CUDA events on a GPU.
* ``timeline``: end of turn -> speech rows (encoder + projector over a 3 s turn, padded to the
  30 s window as the reference does) -> first text token (prefill) -> first speech-token chunk
  (4 more LLM steps, then the decoder to 15 units) -> first mel chunk (flow encoder + the 10
  CFG Euler steps) -> first PCM (HiFT), per mode, cumulative; next to the paper's 320 ms for
  VocalNet-1B on an L20 (225 ms of it the vocoder). The stages are timed one part at a time and
  added up: the host's numpy work between engines (row splicing, the repetition penalty, the
  HiFT cross-fade) is not in it.
* ``rates``: MTP units per decoder call, speech-token rate vs real time (CosyVoice2's 25 tokens/s),
  the vocoder's (flow + HiFT) real-time factor per 0.48 s chunk, at the first and a later chunk.
* On the CPU every call also records its process CPU time (``cpu_median``) and the timeline and
  rates gain an ``eager_cpu`` view: on shared cores, the work without the waiting for a core.

On the lent GPU machine, from the repository root (bf16 by default; not run on a GPU yet, expected to
take a few minutes, mostly building 2.6 B parameters and capturing graphs):

    python3 benchmarks/vocalnet_gpu_bench.py --device cuda --shapes 1b --out $OUT/vocalnet_gpu_bench.json

``benchmarks/gpu_suite.py`` runs the same command as one of its sections. CPU smoke test (what
tests/test_vocalnet_gpu_bench.py runs):

    python benchmarks/vocalnet_gpu_bench.py --device cpu --shapes tiny --steps 2 --out /tmp/vocalnet_gpu_bench.json
"""

from __future__ import annotations

import argparse
import json
import math
import os
import resource
import statistics
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the helper modules beside this file
sys.path.append(str(HERE.parent))  # the checkout, when the package is not installed (an install wins)

import torch
from fo_gpu_bench import environment, finite, memory_mb
from fo_gpu_bench_device import section, summarize, synchronize, time_calls
from vocalnet_gpu_bench_parts import (
    PARTS,
    DecoderPart,
    FlowPart,
    HiftPart,
    ListenPart,
    LlmPart,
    ReplyGeometry,
    build_part,
    parameter_count,
    shape_set,
)

from edgevoice.models.vocalnet.flow import StreamSchedule
from edgevoice.runtime.vocalnet.turn_input import speech_row_count
from edgevoice.runtime.vocalnet.vocoder_stream import HiftStreamConfig

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}
# The manifest's speech.txt_token_num and speech.speech_token_num (recipes/vocalnet/recipe.py
# package_config, from vocalnet_streaming.py): LLM rows per decoder call, units per call.
TEXT_ROWS_PER_CHUNK = 5
UNITS_PER_CHUNK = 15
LATE_CHUNK = 10  # the 11th flow call: 4.8 s of speech already voiced, every call re-encodes it all
STAGES = ("listen", "first_text_token", "first_speech_tokens", "first_mel", "first_pcm")
STAGE_LABELS = {"listen": "speech rows (encoder+projector)", "first_text_token": "first text token",
                "first_speech_tokens": "first speech-token chunk", "first_mel": "first mel chunk (flow)",
                "first_pcm": "first PCM (HiFT)"}
PAPER = {"first_pcm_ms": 320, "vocoder_ms": 225, "gpu": "NVIDIA L20", "model": "VocalNet-1B",
         "note": "the paper's own figures on an L20, not measured here; the vocoder is flow + HiFT"}


def geometry_for(shapes, turn_seconds: float) -> ReplyGeometry:
    """The reply's geometry from the shapes, the flow's streaming schedule and HiFT's cache."""
    listen, schedule = shapes.whisper, StreamSchedule()
    turn = round(turn_seconds * listen.sample_rate)
    return ReplyGeometry(turn_samples=turn,
                         speech_rows=speech_row_count(turn, listen.window_samples, listen.n_frames, shapes.projector_k),
                         text_rows_per_chunk=TEXT_ROWS_PER_CHUNK, units_per_chunk=UNITS_PER_CHUNK,
                         chunk_tokens=schedule.chunk_tokens, chunk_advance=schedule.chunk_advance,
                         late_chunk=LATE_CHUNK, mel_cache_frames=HiftStreamConfig().mel_cache_frames)


def time_cpu_calls(call, reset, steps: int, warmup: int) -> dict:
    """Wall and process-CPU milliseconds per call, each from the same reset state.

    On shared cores the wall time includes waiting for a core; the CPU time is the work itself
    (with one torch thread: about what the call takes on an idle core).
    """
    for _ in range(warmup):
        reset()
        call()
    wall, cpu = [], []
    for _ in range(steps):
        reset()
        begin_wall, begin_cpu = time.perf_counter(), time.process_time()
        call()
        cpu.append((time.process_time() - begin_cpu) * 1e3)
        wall.append((time.perf_counter() - begin_wall) * 1e3)
    return {**summarize(wall), "cpu_median": statistics.median(cpu), "cpu_min": min(cpu)}


def host_peak_rss_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # Linux reports KiB


class Run:
    """The report, and the parts measured one at a time; the JSON is saved after every section."""

    def __init__(self, args):
        self.args = args
        self.device = torch.device(args.device)
        self.dtype = DTYPES[args.dtype]
        self.shapes = None
        self.geometry = None
        self._decoder = None  # the decoder part while it is measured (its units per call are reported)
        self.report: dict = {"schema": "edgevoice.vocalnet_gpu_bench/1", "date": time.strftime("%Y-%m-%d %H:%M"),
                             "command": " ".join([Path(sys.executable).name, *sys.argv]),
                             "args": {k: str(v) for k, v in vars(args).items()}, "paper": PAPER, "parts": {}}

    def save(self) -> None:
        self.args.out.parent.mkdir(parents=True, exist_ok=True)
        partial = self.args.out.with_suffix(".partial")
        partial.write_text(json.dumps(finite(self.report), indent=2, default=str))
        partial.replace(self.args.out)

    def section(self, report: dict, key: str, work) -> object:
        result = section(report, key, work)
        self.save()
        return result

    def setup(self) -> dict:
        self.shapes = shape_set(self.args.shapes)
        self.geometry = geometry_for(self.shapes, self.args.turn_seconds)
        g = self.geometry
        return {"shapes": self.shapes.summary(), "dtype": self.args.dtype, "threads": torch.get_num_threads(),
                "turn_seconds": self.args.turn_seconds, "speech_rows": g.speech_rows, "prompt_rows": g.prompt_rows,
                "text_rows_per_chunk": g.text_rows_per_chunk, "units_per_chunk": g.units_per_chunk,
                "flow_chunk_tokens": g.chunk_tokens, "flow_chunk_advance": g.chunk_advance,
                "late_chunk": g.late_chunk, "hift_cache_frames": g.mel_cache_frames,
                "host_randomness": "HiFT phases and noise drawn once, not per chunk"}

    def benches_of(self, part: str, views: dict, generator: torch.Generator):
        """graphs -> (stages, steps) of one part."""
        g, shapes = self.geometry, self.shapes
        if part == "listen":
            return ListenPart(views, g, generator).benches
        if part == "llm":
            return LlmPart(views, g, generator).benches
        if part == "decoder":
            decoder = DecoderPart(views, g, generator)
            self._decoder = decoder  # its units per call are read after the stages ran
            return decoder.benches
        if part == "flow":
            return FlowPart(views, shapes, g, generator).benches
        hift, frames = HiftPart(views, generator), shapes.flow.token_mel_ratio * (g.chunk_tokens - shapes.flow.pre_lookahead)
        return lambda graphs: hift.benches(graphs, frames, g.mel_cache_frames)

    def time(self, body, reset) -> dict:
        steps, warmup = self.args.steps, self.args.warmup
        if self.device.type == "cuda":
            return summarize(time_calls(body, reset, self.device, steps, warmup))
        return time_cpu_calls(body, reset, steps, warmup)

    def measure_mode(self, benches, graphs: bool) -> dict:
        """Every stage and step of a part in one mode; a body shared by a stage and a step is timed once."""
        stages, steps = benches(graphs)
        out: dict = {"stages": {}, "steps": {}}
        timed: dict[int, dict] = {}
        for kind, entries in (("stages", stages), ("steps", steps)):
            for name, (body, reset) in entries.items():
                if id(body) in timed:
                    out[kind][name] = timed[id(body)]
                    continue
                result = section(out[kind], name, lambda body=body, reset=reset: self.time(body, reset))
                if result is not None:
                    timed[id(body)] = result
            out[f"{kind}_seconds"] = out[kind].pop("seconds", {})  # wall time per entry, measuring included
        return out

    def measure_part(self, part: str) -> dict:
        begin = time.perf_counter()
        with torch.inference_mode():
            views = build_part(self.shapes, part, self.device, self.dtype)
            synchronize(self.device)
            info: dict = {"build_seconds": round(time.perf_counter() - begin, 2), "parameters": parameter_count(views)}
            generator = torch.Generator(device=self.device).manual_seed(0)
            benches = self.benches_of(part, views, generator)
            if self.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
            section(info, "eager", lambda: self.measure_mode(benches, False))
            if self.device.type == "cuda":
                section(info, "graphs", lambda: self.measure_mode(benches, True))
            else:
                info["graphs"] = {"skipped": "CUDA graphs need a CUDA device"}
            if part == "decoder":
                info["units_per_call"] = self._decoder.units_per_call
                self._decoder = None  # it holds the decoder's modules
            info["memory"] = memory_mb(self.device)
            info["host_peak_rss_gb"] = host_peak_rss_gb()
        return info  # the part's modules go with this frame; run() then returns their GPU memory

    def run(self) -> dict:
        torch.backends.cuda.matmul.allow_tf32 = False  # fp32 stays fp32 (bf16/fp16 runs are unaffected)
        torch.backends.cudnn.allow_tf32 = False
        if self.device.type == "cpu":
            # Shared cores: OpenMP threads fighting other processes make single steps erratic.
            torch.set_num_threads(self.args.threads)
        self.section(self.report, "environment", lambda: environment(self.device))
        if self.section(self.report, "setup", self.setup) is None:
            return self.report
        for part in self.args.parts:
            self.section(self.report["parts"], part, lambda part=part: self.measure_part(part))
            if self.device.type == "cuda":
                torch.cuda.empty_cache()
        self.section(self.report, "timeline", lambda: timeline(self.report["parts"], self.shapes.name == "1b"))
        self.section(self.report, "rates", lambda: rates(self.report["parts"], self.shapes, self.geometry))
        return self.report


# --- derived numbers ----------------------------------------------------------------------------


# Timing views: (label, mode measured, statistic). eager_cpu is the eager run's process CPU time (CPU only).
VIEWS = (("eager", "eager", "median"), ("graphs", "graphs", "median"), ("eager_cpu", "eager", "cpu_median"))


def _median(parts: dict, part: str, mode: str, kind: str, name: str, key: str = "median") -> float | None:
    return parts.get(part, {}).get(mode, {}).get(kind, {}).get(name, {}).get(key)


def timeline(parts: dict, published_shapes: bool) -> dict:
    """Per mode: each stage's ms and the cumulative ms since the end of the turn.

    The ratio to the paper's figures is only given at the published shapes: toy widths say nothing about it.
    """
    out: dict = {"stages": list(STAGES), "paper": PAPER}
    for label, mode, key in VIEWS:
        get = lambda part, name, mode=mode, key=key: _median(parts, part, mode, "stages", name, key)
        pieces = {"listen": [get("listen", "listen")], "first_text_token": [get("llm", "first_text_token")],
                  "first_speech_tokens": [get("llm", "first_chunk_llm"), get("decoder", "first_chunk_decoder")],
                  "first_mel": [get("flow", "first_mel")], "first_pcm": [get("hift", "first_pcm")]}
        if any(v is None for values in pieces.values() for v in values):
            out[label] = {"skipped": "a stage was not measured in this mode (see parts)"}
            continue
        stage_ms = {stage: sum(values) for stage, values in pieces.items()}
        cumulative, total = {}, 0.0
        for stage in STAGES:
            total += stage_ms[stage]
            cumulative[stage] = total
        out[label] = {"stage_ms": stage_ms, "cumulative_ms": cumulative,
                      "vocoder_ms": stage_ms["first_mel"] + stage_ms["first_pcm"],
                      "after_listen_ms": total - stage_ms["listen"]}
        if published_shapes:
            out[label]["first_pcm_over_paper"] = total / PAPER["first_pcm_ms"]
            out[label]["vocoder_over_paper"] = out[label]["vocoder_ms"] / PAPER["vocoder_ms"]
    return out


def rates(parts: dict, shapes, geometry: ReplyGeometry) -> dict:
    """MTP units per call, speech-token rate vs real time, vocoder real-time factor per chunk."""
    heads, token_rate = shapes.decoder.heads_per_step, shapes.flow.input_frame_rate
    chunk_seconds = geometry.chunk_advance / token_rate  # audio one non-final flow call hands on
    cycles = math.ceil(geometry.units_per_chunk / heads)
    frames = shapes.flow.token_mel_ratio * (geometry.chunk_tokens - shapes.flow.pre_lookahead)
    out: dict = {"mtp_units_per_step": heads, "units_per_call_measured": parts.get("decoder", {}).get("units_per_call"),
                 "real_time_tokens_per_s": token_rate, "chunk_audio_seconds": chunk_seconds}
    for label, mode, key in VIEWS:
        get = lambda part, name, mode=mode, key=key: _median(parts, part, mode, "steps", name, key)
        decode, text = get("llm", "llm_decode"), get("decoder", f"speech_text_{geometry.text_rows_per_chunk}")
        units = get("decoder", f"speech_units_{heads}")
        row: dict = {}
        if units:
            row["decoder_units_per_s"] = heads / units * 1e3
            row["decoder_x_real_time"] = row["decoder_units_per_s"] / token_rate
        if units and decode and text:
            chunk_ms = geometry.text_rows_per_chunk * decode + text + cycles * units
            row["text_to_units_chunk_ms"] = chunk_ms
            row["units_per_s_with_llm"] = geometry.units_per_chunk / chunk_ms * 1e3
            row["x_real_time_with_llm"] = row["units_per_s_with_llm"] / token_rate
        for which, hift in (("first", f"hift_chunk_first_{frames}"),
                            ("late", f"hift_chunk_{frames + geometry.mel_cache_frames}")):
            flow, vocoder = get("flow", f"flow_call_{which}"), get("hift", hift)
            if flow and vocoder:
                row[f"vocoder_{which}_chunk_ms"] = flow + vocoder
                row[f"vocoder_{which}_chunk_rtf"] = (flow + vocoder) / 1e3 / chunk_seconds
        if row:
            out[label] = row
    return out


# --- summary ------------------------------------------------------------------------------------


def _ms(value) -> str:
    return f"{value:10.1f}" if isinstance(value, (int, float)) else f"{'-':>10}"  # 10 wide


def timeline_table(report: dict) -> list[str]:
    tl = report.get("timeline", {})
    views = [tl.get(label, {}) for label, _, _ in VIEWS]
    head = "".join(f"{label:>11}" for label, _, _ in VIEWS) + "".join(f"{'cum ' + label:>15}" for label, _, _ in VIEWS)
    lines = [f"  {'end of turn ->':<34}{head}{'paper, L20':>12}"]
    for stage in STAGES:
        own = "".join(f" {_ms(v.get('stage_ms', {}).get(stage))}" for v in views)
        cum = "".join(f"     {_ms(v.get('cumulative_ms', {}).get(stage))}" for v in views)
        paper = PAPER["first_pcm_ms"] if stage == "first_pcm" else ""
        lines.append(f"  {STAGE_LABELS[stage]:<34}{own}{cum}{paper:>12}")
    own = "".join(f" {_ms(v.get('vocoder_ms'))}" for v in views)
    lines.append(f"  {'vocoder (flow + HiFT) of that':<34}{own}{'':>45}{PAPER['vocoder_ms']:>12}")
    ratios = [f"{label} {v['first_pcm_over_paper']:.2f}x" for (label, _, _), v in zip(VIEWS, views)
              if "first_pcm_over_paper" in v]
    if ratios:
        lines.append(f"  first PCM / the paper's 320 ms: {', '.join(ratios)}")
    lines.append("  (paper column: the VocalNet paper's figures for VocalNet-1B on an L20, not measured here; "
                 "eager_cpu: process CPU time of the eager run)")
    return lines


def steps_table(report: dict) -> list[str]:
    lines = [f"  {'step':<34}{'eager ms':>11}{'graphs ms':>11}{'cpu ms':>11}"]
    for part, entry in report.get("parts", {}).items():
        if "error" in entry:
            lines.append(f"  {part}: error {entry['error'][:90]}")
            continue
        for name, step in entry.get("eager", {}).get("steps", {}).items():
            graphs = entry.get("graphs", {}).get("steps", {}).get(name, {})
            lines.append(f"  {name:<34} {_ms(step.get('median'))} {_ms(graphs.get('median'))} {_ms(step.get('cpu_median'))}")
    return lines


def rates_lines(report: dict) -> list[str]:
    r = report.get("rates", {})
    lines = [(f"  MTP: {r.get('mtp_units_per_step')} units per decoder step (measured "
              f"{r.get('units_per_call_measured')}); real time = {r.get('real_time_tokens_per_s')} units/s")]
    for label, _, _ in VIEWS:
        row = r.get(label, {})
        if row:
            lines.append(f"  {label}: decoder {row.get('decoder_x_real_time', 0):.2f}x real time, with the LLM "
                         f"{row.get('x_real_time_with_llm', 0):.2f}x; vocoder RTF per {r.get('chunk_audio_seconds')} s "
                         f"chunk: first {row.get('vocoder_first_chunk_rtf', 0):.2f}, "
                         f"late {row.get('vocoder_late_chunk_rtf', 0):.2f}")
    return lines


def summary(report: dict) -> str:
    env, setup = report.get("environment", {}), report.get("setup", {})
    lines = [(f"vocalnet_gpu_bench {report['date']}: {env.get('gpu') or 'CPU'}, torch {env.get('torch')}, "
              f"shapes {setup.get('shapes', {}).get('name')}, {setup.get('dtype')}")]
    lines += timeline_table(report) + steps_table(report) + rates_lines(report)
    errors = [k for k, v in report.items() if isinstance(v, dict) and "error" in v]
    errors += [f"parts/{k}" for k, v in report.get("parts", {}).items() if "error" in v]
    if errors:
        lines.append(f"  sections with errors: {', '.join(errors)}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", choices=("cuda", "cpu"), default="cuda")
    parser.add_argument("--shapes", choices=("1b", "tiny"), default="1b", help="1b: published; tiny: smoke test")
    parser.add_argument("--dtype", choices=tuple(DTYPES), default=None, help="default: bf16 on cuda, fp32 on cpu")
    parser.add_argument("--steps", type=int, default=20, help="timed calls per stage and per step")
    parser.add_argument("--warmup", type=int, default=None, help="untimed calls first (default: 3, 1 below 5 steps)")
    parser.add_argument("--turn-seconds", type=float, default=3.0, help="the user's turn the encoder hears")
    parser.add_argument("--parts", default=",".join(PARTS), help="which parts to build and time")
    parser.add_argument("--threads", type=int, default=1, help="torch threads on the CPU")
    parser.add_argument("--out", type=Path, default=Path(os.environ.get("OUT", ".")) / "vocalnet_gpu_bench.json")
    args = parser.parse_args(argv)
    args.dtype = args.dtype or ("bf16" if args.device == "cuda" else "fp32")
    args.warmup = args.warmup if args.warmup is not None else (3 if args.steps >= 5 else 1)
    args.parts = tuple(args.parts.split(","))
    unknown = set(args.parts) - set(PARTS)
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}; choose from {', '.join(PARTS)}")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    report = Run(args).run()
    print(summary(report))
    print(f"wrote {args.out}")
    return report


if __name__ == "__main__":
    main()
