"""``evaluate``: a script's conversations played to a package's agent, scored, plotted: one report.

Everything that can fail on the user's input fails before the engines load: the script is parsed,
its speech synthesized, the output folder and the plotting library checked.
"""

from __future__ import annotations

import os
import platform
import time
from dataclasses import asdict
from pathlib import Path

from edgevoice.errors import EdgevoiceError
from edgevoice.eval.score import score_conversation, summarize
from edgevoice.eval.script import Conversation, Silence, Speech, load_script
from edgevoice.eval.synth import render

REPORT_NAME = "eval.json"
WARM_UP = Conversation("warm-up", (Silence(0.3), Speech("say", ("Hello there.",)), Silence(0.5)))


def prepare_out(out: Path) -> Path:
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise EdgevoiceError(f"cannot create --out {out} ({exc.strerror}); choose another folder") from exc
    if not os.access(out, os.W_OK):
        raise EdgevoiceError(f"--out {out} is not writable; choose another folder")
    return out


def evaluate(package: str | Path, script: str | Path, out: Path, *, plots: bool = True, backend: str = "ort",
             device: str = "cpu", seed: int = 0, warm_up: bool = True, progress=None) -> dict:
    """Play every conversation of ``script`` to the agent of ``package``; returns the report (also
    written to ``out/eval.json``, with one ``<name>.png`` timeline per conversation when ``plots``).

    ``warm_up``: first play one short unscored question, so that the engines' first-run costs do
    not inflate the first scored turn's compute (and so its live estimate)."""
    from edgevoice.eval.plot import plot_timeline, require_matplotlib
    from edgevoice.eval.run import Runner

    parsed = load_script(script)
    if plots:
        require_matplotlib()
    out = prepare_out(Path(out))
    rendered = [render(c) for c in parsed.conversations]  # espeak-ng runs here, before the engines load
    started = time.perf_counter()
    runner = Runner(package, backend=backend, device=device, seed=seed)
    load_s = time.perf_counter() - started
    warm_up_s = None
    if warm_up:  # onnxruntime's first runs are slow: they would land on the first scored turn
        t0 = time.perf_counter()
        runner.play(render(WARM_UP))
        warm_up_s = round(time.perf_counter() - t0, 2)
    results = []
    for item in rendered:
        name = item.conversation.name
        if progress is not None:
            progress(name)
        t0 = time.perf_counter()
        observed = runner.play(item)
        wall_s = time.perf_counter() - t0
        scored = score_conversation(item.spans, observed.events, observed.agent_spans)
        png = None
        if plots:
            title = f"{name}  ({_options_line(item.conversation.options)})"
            png = str(plot_timeline(out / f"{name}.png", title, item.spans, observed.events, observed.agent_spans,
                                    observed.seconds))
        results.append({"name": name, "options": {**asdict(item.conversation.options),
                                                         "echo_cancellation": item.conversation.options.cancels_echo},
                        "recording_s": round(item.seconds, 3), "session_s": round(observed.seconds, 3),
                        "wall_s": round(wall_s, 2), "timeline_png": png,
                        "agent_audible_s": [list(s) for s in observed.agent_spans], **scored})
    report = {
        "eval": "conversation_scorecard",
        "script": str(script),
        "package": str(package),
        "recipe": runner.recipe,
        "date": time.strftime("%Y-%m-%d"),
        "machine": machine(),
        "load_average": [round(x, 2) for x in os.getloadavg()] if hasattr(os, "getloadavg") else None,
        "versions": versions(),
        "engine_load_s": round(load_s, 2),
        "warm_up_s": warm_up_s,
        "wall_s": round(time.perf_counter() - started, 2),
        "summary": summarize(results),
        "conversations": results,
    }
    _write_report(out / REPORT_NAME, report)
    return report


def _options_line(options) -> str:
    speakers = f"open speakers, echo {options.echo_delay_s * 1000:.0f} ms" if options.open_speakers else "headset"
    flags = [f"echo cancellation {'on' if options.cancels_echo else 'off'}"]
    flags += [name.replace("_", " ") for name in ("agent_backchannels",) if getattr(options, name)]
    flags += [f"no {name.replace('_', ' ')}" for name in ("think_while_listening", "semantic_endpointing", "text_endpointing")
              if not getattr(options, name)]
    return ", ".join([speakers, *flags])


def _write_report(path: Path, report: dict) -> None:
    import json

    try:
        path.write_text(json.dumps(report, indent=2, default=str) + "\n", encoding="utf-8")
    except OSError as exc:
        raise EdgevoiceError(f"cannot write {path} ({exc.strerror}); choose another --out") from exc


def machine() -> str:
    model = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{platform.machine()}, {model}, {os.cpu_count()} cores"


def versions() -> dict:
    import subprocess
    from importlib.metadata import PackageNotFoundError, version

    import edgevoice

    found = {"edgevoice": edgevoice.__version__, "python": platform.python_version()}
    for name in ("numpy", "onnxruntime"):
        try:
            found[name] = version(name)
        except PackageNotFoundError:
            pass
    try:
        line = subprocess.run(["espeak-ng", "--version"], capture_output=True, text=True, timeout=10,
                              check=False).stdout
        found["espeak-ng"] = next((w for w in line.split() if w[:1].isdigit()), line.strip())
    except (OSError, subprocess.TimeoutExpired):
        pass
    return found
