"""One LLM graph vs two: the same SmolLM2 through a package's `llm` graph and an older package's
`llm_prefill` + `llm_decode`, on onnxruntime CPU, side by side in one process.

    python benchmarks/llm_graphs_bench.py --old engines/cpu --new /tmp/cascade-single [--rounds 3]
        [--tokens 48] [--greedy 32]

Both sessions come from ``LlmSession.from_manifest`` (the runtime's own way to open either layout,
onnxruntime's default threads). Per round, old and new alternate (so load from other processes
hits both alike):
* decode tokens/s: greedy, one token per call after a chat prompt, ``--tokens`` calls timed;
* prefill seconds: the whole prompt (system prompt + question) from an empty cache, per prompt.
Then greedy agreement: each prompt's reply (``--greedy`` tokens, stop tokens honoured) from both.
Prints one JSON object: medians over rounds, LLM file bytes of each package.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import time
from pathlib import Path

import numpy as np

PROMPTS = (
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three uses of a paperclip.",
    "Explain what a battery does in one sentence.",
)
SYSTEM = "You are a helpful voice assistant. Answer in one or two short, plain sentences, without lists or markdown."


def chat(prompt: str) -> list[dict[str, str]]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": prompt}]


def decode_rate(session, tokens: int) -> float:
    """Greedy tokens/s, one token per call (stop tokens ignored so every round times the same count)."""
    session.reset()
    logits = session.prepare(session.prompt_ids(chat(PROMPTS[0]), tokens + 2))
    logits = session.feed([int(np.argmax(logits))])  # warm-up call
    start = time.perf_counter()
    for _ in range(tokens):
        logits = session.feed([int(np.argmax(logits))])
    return tokens / (time.perf_counter() - start)


def prefill_seconds(session, prompt: str) -> tuple[int, float]:
    session.reset()
    ids = session.prompt_ids(chat(prompt), 32)
    start = time.perf_counter()
    session.prepare(ids)
    return len(ids), time.perf_counter() - start


def greedy(session, prompt: str, tokens: int) -> list[int]:
    session.reset()
    return [p.token_id for p in session.generate(chat(prompt), max_new_tokens=tokens)]


def llm_bytes(manifest) -> int:
    from edgevoice.runtime.llm import llm_components

    return sum(manifest.path(manifest.component(n).onnx).stat().st_size for n in llm_components(manifest))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--old", type=Path, required=True, help="a package with llm_prefill + llm_decode")
    parser.add_argument("--new", type=Path, required=True, help="a package with the one llm graph")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--tokens", type=int, default=48)
    parser.add_argument("--greedy", type=int, default=32)
    args = parser.parse_args()

    import onnxruntime

    from edgevoice.manifest import read_manifest
    from edgevoice.runtime.llm import LlmSession

    manifests = {"old": read_manifest(args.old), "new": read_manifest(args.new)}
    sessions = {name: LlmSession.from_manifest(m) for name, m in manifests.items()}
    assert not sessions["old"].one_graph and sessions["new"].one_graph, "pass a two-graph --old and a one-graph --new"
    rates = {name: [] for name in sessions}
    prefill = {name: {p: [] for p in PROMPTS} for name in sessions}
    lengths = {}
    for _ in range(args.rounds):
        for name, session in sessions.items():
            rates[name].append(decode_rate(session, args.tokens))
            for prompt in PROMPTS:
                lengths[prompt], seconds = prefill_seconds(session, prompt)
                prefill[name][prompt].append(seconds)
    replies = {name: [greedy(s, p, args.greedy) for p in PROMPTS] for name, s in sessions.items()}
    report = {
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
        "onnxruntime": onnxruntime.__version__,
        "decode_tokens_per_s": {n: {"median": statistics.median(r), "rounds": [round(x, 1) for x in r]} for n, r in rates.items()},
        "prompt_tokens": [lengths[p] for p in PROMPTS],
        "prefill_s_median": {n: [round(statistics.median(by[p]), 4) for p in PROMPTS] for n, by in prefill.items()},
        "greedy_identical": [a == b for a, b in zip(replies["old"], replies["new"])],
        "greedy_tokens": [len(r) for r in replies["new"]],
        "llm_bytes": {n: llm_bytes(m) for n, m in manifests.items()},
        "package_bytes": {n: sum(r["bytes"] for r in m.files.values()) for n, m in manifests.items()},
    }
    print(json.dumps(report, indent=2))


if __name__ == "__main__":
    main()
