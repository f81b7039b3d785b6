"""Tool calling with the real LLM: does a request get the call it needs, and is the call valid?

    python benchmarks/tool_bench.py --package engines/cpu [--out benchmarks/tool_bench.json] [--spoken]

Three example tools (get_weather(city), set_timer(minutes), get_time()) and 24 typed requests,
12 that need one of them and 12 that do not (four of those use a tool's words: "weather",
"minutes", "time", "city"). Each request is one turn, as the cascade prompts it (its system
prompt with the tools listed), greedy, up to 48 new tokens. Ways of deciding and writing calls:

* ``model``: the model decides alone (``ToolDecoding(decide="model")``); a call it opens is
  written under the grammar;
* ``router``: the lexical router decides and forces the opening; the model fills the arguments
  under the grammar (the default);
* ``router_no_grammar``: the router's forced opening, then free decoding (what the grammar buys);
* ``both`` is derived: the router's reply where it fired, the model's otherwise.

Per way: precision and recall of "a call was made" against "the request needs a tool", the share
of calls that parse and validate against the tool's schema, and the share of tool requests
answered with the right tool and the right arguments. The router alone is also scored at a few
thresholds (no LLM needed). With ``--spoken`` four tool requests and four others are spoken by
espeak-ng, transcribed by the package's Whisper, then routed. Prints and writes one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from dataclasses import replace
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
CITY = {"type": "object", "properties": {"city": {"type": "string"}}, "required": ["city"]}
MINUTES = {"type": "object", "properties": {"minutes": {"type": "integer", "minimum": 1}}, "required": ["minutes"]}
NEEDS_TOOL = (  # (request, tool, arguments)
    ("What's the weather like in Paris?", "get_weather", {"city": "Paris"}),
    ("Is it going to rain in London today?", "get_weather", {"city": "London"}),
    ("How cold is it in Berlin right now?", "get_weather", {"city": "Berlin"}),
    ("Tell me the weather forecast for Tokyo.", "get_weather", {"city": "Tokyo"}),
    ("What's the temperature in Madrid?", "get_weather", {"city": "Madrid"}),
    ("Set a timer for ten minutes.", "set_timer", {"minutes": 10}),
    ("Start a 5 minute timer please.", "set_timer", {"minutes": 5}),
    ("Can you set a timer for 20 minutes?", "set_timer", {"minutes": 20}),
    ("Remind me in 15 minutes with a timer.", "set_timer", {"minutes": 15}),
    ("What time is it?", "get_time", {}),
    ("Tell me the current time.", "get_time", {}),
    ("What's the time right now?", "get_time", {}),
)
NO_TOOL = (
    "Tell me a joke.",
    "What is the capital of France?",
    "Why is the sky blue?",
    "Who wrote Romeo and Juliet?",
    "How do I boil an egg?",
    "What is two plus two?",
    "Tell me a fun fact about cats.",
    "Can you recommend a good book?",
    "What is the difference between weather and climate?",
    "How many minutes are in an hour?",
    "Write a short poem about time.",
    "What does a city council do?",
)
SPOKEN = ("What's the weather like in Paris?", "Set a timer for ten minutes.", "Can you set a timer for 20 minutes?",
          "What time is it?", *NO_TOOL[:4])
MAX_NEW_TOKENS = 48
THRESHOLDS = (0.5, 0.75, 1.0, 1.5)


def example_tools():
    from edgevoice.runtime.tools import Tool

    return [
        Tool("get_weather", lambda city: f"sunny in {city}", "Current weather conditions and temperature for a city.", CITY),
        Tool("set_timer", lambda minutes: f"timer set for {minutes} minutes",
             "Start a countdown timer that rings after the given number of minutes.", MINUTES),
        Tool("get_time", lambda: "15:10", "The current local time.", {"type": "object", "properties": {}}),
    ]


class PrefixOnly:
    """The router's forced opening with free decoding after it: what the grammar is compared with."""

    def __init__(self, prefix: str):
        self.prefix = prefix

    def pick(self, logits, text, sample, pieces, stop_ids):
        return sample(logits)

    def finished(self, text: str) -> bool:
        return "</tool_call>" in text


def run_way(llm, runner, system: str, requests: list[str], way: str) -> list[dict]:
    """One reply per request: its text, its calls and whether each call validates."""
    from edgevoice.runtime.tool_router import ToolDecoding
    from edgevoice.runtime.tools import parse_tool_calls

    decide = "model" if way == "model" else "router"
    runner.decoding = replace(ToolDecoding(), decide=decide)
    rows = []
    for request in requests:
        messages = [{"role": "system", "content": system}, {"role": "user", "content": request}]
        constraint = runner.constraint(messages)
        if way == "router_no_grammar":
            constraint = PrefixOnly(constraint.prefix) if constraint.prefix else None
        start = time.perf_counter()
        text = "".join(p.text for p in llm.generate(messages, MAX_NEW_TOKENS, commit=False, constraint=constraint))
        _, calls = parse_tool_calls(text)
        rows.append({"request": request, "reply": text, "seconds": round(time.perf_counter() - start, 2),
                     "calls": [{"name": c.name, "arguments": c.arguments, "problem": runner._problem(c)} for c in calls]})
        print(f"[{way}] {request!r} -> {text!r}", file=sys.stderr)
    return rows


def same_arguments(got: dict, expected: dict) -> bool:
    norm = lambda v: v.strip().lower() if isinstance(v, str) else v  # noqa: E731
    return {k: norm(v) for k, v in got.items()} == {k: norm(v) for k, v in expected.items()}


def score(rows: list[dict]) -> dict:
    """Precision/recall of making a call, validity of calls, right tool and arguments."""
    asked = {r["request"] for r in rows}
    needs = {r[0]: (r[1], r[2]) for r in NEEDS_TOOL if r[0] in asked}
    called = [r for r in rows if r["calls"]]
    true_calls = [r for r in called if r["request"] in needs]
    calls = [c for r in called for c in r["calls"]]
    right = sum(1 for r in true_calls if any(c["name"] == needs[r["request"]][0] and not c["problem"]
                                             and same_arguments(c["arguments"], needs[r["request"]][1]) for c in r["calls"]))
    return {
        "opened": sum(1 for r in rows if "<tool_call>" in r["reply"]),  # replies that opened a call, closed or not
        "calls": len(called),
        "precision": round(len(true_calls) / len(called), 3) if called else None,
        "recall": round(len(true_calls) / len(needs), 3),
        "valid_calls": round(sum(1 for c in calls if not c["problem"]) / len(calls), 3) if calls else None,
        "right_tool_and_arguments": round(right / len(needs), 3),
        "false_calls": [r["request"] for r in called if r["request"] not in needs],
        "missed": [q for q in needs if q not in {r["request"] for r in called}],
        "median_seconds": sorted(r["seconds"] for r in rows)[len(rows) // 2],
    }


def router_sweep(tools) -> dict:
    from edgevoice.runtime.tool_router import ToolDecoding, ToolRouter

    out = {}
    for threshold in THRESHOLDS:
        router = ToolRouter(tools, ToolDecoding(threshold=threshold))
        fired = {q: router.route(q).tool for q in [r[0] for r in NEEDS_TOOL] + list(NO_TOOL)}
        hits = sum(1 for q, tool, _ in NEEDS_TOOL if fired[q] == tool)
        made = sum(1 for t in fired.values() if t)
        true = sum(1 for q, _, _ in NEEDS_TOOL if fired[q])
        out[str(threshold)] = {"precision": round(true / made, 3) if made else None, "recall": round(true / len(NEEDS_TOOL), 3),
                               "right_tool": round(hits / len(NEEDS_TOOL), 3)}
    return out


def spoken(pipeline, runner, system: str) -> dict:
    """Requests spoken by espeak-ng, transcribed by the package's Whisper, routed, answered."""
    sys.path.insert(0, str(REPO / "tests"))
    from conftest import espeak

    heard = {q: pipeline.asr.transcribe(espeak(q), 16000).text.strip() for q in SPOKEN}
    rows = run_way(pipeline.llm, runner, system, list(heard.values()), "router")
    for row, (said, text) in zip(rows, heard.items()):
        row["request"], row["heard"] = said, text
    return {"transcripts": heard, **score(rows), "rows": rows}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", default=str(REPO / "engines" / "cpu"))
    parser.add_argument("--out", default=str(REPO / "benchmarks" / "tool_bench.json"))
    parser.add_argument("--ways", default="model,router,router_no_grammar")
    parser.add_argument("--spoken", action="store_true", help="also speak eight requests (espeak-ng -> Whisper)")
    args = parser.parse_args()

    import numpy
    import onnxruntime

    from edgevoice.runtime.cascade.pipeline import DEFAULT_SYSTEM_PROMPT, CascadePipeline
    from edgevoice.runtime.tools import ToolRunner

    pipeline = CascadePipeline(args.package)
    runner = ToolRunner(lambda outcome: None)
    for tool in example_tools():
        runner.register(tool)
    system = f"{DEFAULT_SYSTEM_PROMPT}\n\n{runner.prompt()}"
    requests = [r[0] for r in NEEDS_TOOL] + list(NO_TOOL)
    report = {"machine": platform.machine(), "python": platform.python_version(), "numpy": numpy.__version__,
              "onnxruntime": onnxruntime.__version__, "package": args.package, "max_new_tokens": MAX_NEW_TOKENS,
              "router_thresholds": router_sweep(runner.tools), "ways": {}}
    rows = {}
    for way in args.ways.split(","):
        rows[way] = run_way(pipeline.llm, runner, system, requests, way)
        report["ways"][way] = {**score(rows[way]), "rows": rows[way]}
    if "model" in rows and "router" in rows:
        both = [r if r["calls"] else m for r, m in zip(rows["router"], rows["model"])]
        report["ways"]["both"] = score(both)
    if args.spoken:
        report["spoken"] = spoken(pipeline, runner, system)
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k != "ways"} | {
        "ways": {w: {k: v for k, v in s.items() if k != "rows"} for w, s in report["ways"].items()}}, indent=2))


if __name__ == "__main__":
    main()
