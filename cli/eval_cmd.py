"""`edgevoice eval`: the conversation scorecard — scripted conversations played to a package's agent.

The conversations run as `talk --input` runs a recording (a virtual clock, stages inline), so the
numbers are deterministic; the script says what the user says and when (see docs/eval.md and
examples/eval/). The terminal gets one table per behaviour and a row per conversation; --json
prints the whole report (also written to OUT/eval.json), and OUT/<conversation>.png shows who
spoke when.
"""

from __future__ import annotations

import json
from contextlib import nullcontext
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Column, Table

from edgevoice.errors import EdgevoiceError

ONSET_LIVE = "response onset, estimated live (compute included), s"
ONSET_VIRTUAL = "response onset, virtual clock (compute not included), s"


def eval_(
    package: Path = typer.Option(..., help="Engine package (cascade; freeze-omni/tiny without agent backchannels)."),
    script: Path = typer.Option(..., help="Conversation script, YAML or JSON (examples/eval/; docs/eval.md)."),
    out: Path = typer.Option(Path("eval-results"), help="Folder for eval.json and one timeline PNG per conversation."),
    json_output: bool = typer.Option(False, "--json", help="Print the report as JSON (fields: docs/eval.md)."),
    plots: bool = typer.Option(True, help="Draw the timeline PNGs (needs matplotlib: the eval extra)."),
    backend: str = typer.Option("ort", help="ort (onnxruntime) or trt (TensorRT engines)."),
    device: str = typer.Option("cpu", help="cpu, cuda or auto."),
    seed: int = typer.Option(0, help="Seed for sampling and the voice's noise."),
    warm_up: bool = typer.Option(True, help="First answer one unscored question (engines' first-run costs)."),
) -> None:
    """Score scripted conversations: response onset, cut-offs at pauses, barge-in, backchannels, answers."""
    from edgevoice.eval.scorecard import evaluate

    if backend not in ("ort", "trt"):
        raise EdgevoiceError(f"--backend {backend} is not one eval runs; choose ort or trt")
    console = Console(stderr=True)
    status = console.status("loading", spinner="dots") if not json_output else nullcontext()
    with status as shown:
        def progress(name: str) -> None:
            if shown is not None:
                shown.update(f"conversation {name}")

        report = evaluate(package, script, out, plots=plots, backend=backend, device=device, seed=seed,
                          warm_up=warm_up, progress=progress)
    if json_output:
        print(json.dumps(report, indent=2, default=str))
        return
    render(Console(), report, out)


def render(console: Console, report: dict, out: Path) -> None:
    console.print(conversation_table(report["conversations"]))
    console.print(summary_table(report["summary"]))
    console.print(f"wrote {out / 'eval.json'}" + (" and the timelines (one PNG per conversation)"
                                                   if any(c["timeline_png"] for c in report["conversations"]) else ""))


def conversation_table(conversations: list[dict]) -> Table:
    """One row per conversation; its scores as one wrapping line, so a narrow terminal still reads."""
    table = Table(Column("conversation", no_wrap=True), "scores", title="per conversation")
    for c in conversations:
        s = c["summary"]
        parts = [f"{s['turns']} turn{'' if s['turns'] == 1 else 's'}", f"onset {_num(s['response_onset_estimated_live_s']['median'])} s live",
                 f"cut-offs {s['false_cutoffs']}/{s['pauses']}"]
        if s["barge_ins"]:
            parts.append(f"barge-in to silence {_num(s['barge_in_time_to_silence_s']['max'])} s")
        if s["user_backchannels"]:
            parts.append(f"user mhm tolerated {s['user_backchannels_tolerated']}/{s['user_backchannels_over_agent']}")
        if c["options"]["agent_backchannels"]:
            parts.append(f"agent mhm {s['agent_backchannels']}")
        parts += [f"self-interruptions {s['self_interruptions']}",
                  f"answers {s['answers_correct']}/{s['answers_expected']}"]
        table.add_row(c["name"], " · ".join(parts))
    return table


def summary_table(s: dict) -> Table:
    table = Table("behaviour", "", title="scorecard")
    live, virtual = s["response_onset_estimated_live_s"], s["response_onset_s"]
    rows = [
        (ONSET_LIVE + ", median / p90", f"{_num(live['median'])} / {_num(live['p90'])}  (n={live['n']})"),
        (ONSET_VIRTUAL + ", median / p90", f"{_num(virtual['median'])} / {_num(virtual['p90'])}  (n={virtual['n']})"),
        ("turns without an answer", f"{s['unanswered']} of {s['turns']}"),
        ("false cut-offs at thinking pauses", f"{s['false_cutoffs']} of {s['pauses']}"),
        ("barge-in: agent silent after, s (median / max)",
         f"{_num(s['barge_in_time_to_silence_s']['median'])} / {_num(s['barge_in_time_to_silence_s']['max'])}"
         f"  ({s['barge_ins_over_agent']} of {s['barge_ins']} over the agent, {s['barge_ins_cancelled']} cancelled)"),
        ("user backchannels tolerated", f"{s['user_backchannels_tolerated']} of {s['user_backchannels_over_agent']} "
                                        f"over the agent ({s['user_backchannels']} scripted)"),
        ("agent backchannels produced (cut / over the user)",
         f"{s['agent_backchannels']} ({s['agent_backchannels_cut']} / {s['agent_backchannels_over_user']})"),
        ("self-interruptions (phantom user turns)", f"{s['self_interruptions']} ({s['phantom_user_turns']})"),
        ("early tool calls (used / dropped)",
         f"{s['early_tool_calls']} ({s['early_tool_calls_used']} / {s['early_tool_calls_dropped']})"),
        ("answers correct", f"{s['answers_correct']} of {s['answers_expected']}"),
    ]
    for label, value in rows:
        table.add_row(label, value)
    return table


def _num(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"
