"""The knowledge memory on the kiosk sample: answers with and without it, and what it adds per turn.

    python benchmarks/knowledge_bench.py --package engines/cpu [--knowledge examples/kiosk.md] [--out FILE] [--repeats 20] [--spoken]

The 8 questions about ``examples/kiosk.md`` (``tests/knowledge_fixtures.py``: question, the passage
that answers it, the fact a right answer contains) are asked as typed text, one turn each, as the
cascade prompts them (its system prompt; greedy; up to 48 new tokens): once without the memory,
once with the retrieved passages in the system prompt. An answer is right when it contains the fact.

Added latency per turn, measured apart from the LLM: embedding the question (one ``embed`` graph
call), ranking the index (numpy dot products, top-k), and fitting the facts into the prompt (LLM
tokenizer counts); each question ``--repeats`` times. Also: the index build at start, the prompt
tokens the facts add, and the LLM's prefill of a whole prompt with and without them (what the facts
cost when nothing was prefilled while the user spoke). With ``--spoken`` each question is also
spoken by espeak-ng into the whole duplex agent on the virtual clock, with and without the memory:
right answers, whether retrieval ran on a partial transcript, and the first-audio delay after the
endpoint as a live run would have it (``events.estimated_live_first_audio``: compute included).

A package without the ``embed`` component (exported before it existed) gets one: the component is
exported alone into a temp dir and linked next to the package's files (``knowledge_fixtures``), so
the package itself is not touched. Prints and writes one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "tests"))
MAX_NEW_TOKENS = 48


def open_package(package: Path, workdir: Path):
    from knowledge_fixtures import export_embed, with_embed

    from edgevoice.manifest import read_manifest

    manifest = read_manifest(package, recipe="cascade")
    if "embed" in manifest.components:
        return manifest
    print("the package has no embed component: exporting it alone into", workdir, file=sys.stderr)
    entry, _ = export_embed(workdir / "embed")
    return with_embed(manifest, workdir / "embed", entry, workdir / "package")


def percentiles(values: list[float]) -> dict[str, float]:
    ordered = sorted(values)
    return {"median_ms": round(1000 * statistics.median(ordered), 2),
            "p90_ms": round(1000 * ordered[int(0.9 * (len(ordered) - 1))], 2)}


def answers(pipeline, questions) -> list[dict]:
    from edgevoice.runtime.cascade.pipeline import prompt_messages

    rows = []
    for question, heading, facts in questions:
        bare = prompt_messages(pipeline.system_prompt, [{"role": "user", "content": question}])
        recall = pipeline.knowledge.search(question)
        remembered = pipeline.with_facts(bare, recall)
        row = {"question": question, "passage": heading,
               "top1": recall.hits[0].passage.text.split(":")[0] if recall.hits else None}
        for name, messages in (("without", bare), ("with", remembered)):
            reply = pipeline.llm.reply(messages, max_new_tokens=MAX_NEW_TOKENS, sampling=pipeline.sampling)
            row[name] = {"reply": reply.strip(), "right": any(f in reply.lower() for f in facts)}
        rows.append(row)
    return rows


def latency(pipeline, questions, repeats: int) -> dict:
    from edgevoice.runtime.cascade.pipeline import prompt_messages

    knowledge, llm = pipeline.knowledge, pipeline.llm
    embed_s, rank_s, search_s, fit_s = [], [], [], []
    added_tokens, prefill = [], {"without": [], "with": []}
    count = lambda messages: len(llm.tokenizer.encode(llm.formatter.render(messages)))
    for question, _, _ in questions:
        bare = prompt_messages(pipeline.system_prompt, [{"role": "user", "content": question}])
        for _ in range(repeats):
            t0 = time.perf_counter()
            vector = knowledge.embedder.embed([question])[0]  # the split of a search: the graph call ...
            t1 = time.perf_counter()
            (knowledge.vectors @ vector).argsort()[::-1][: knowledge.options.top_k]  # ... and the ranking
            t2 = time.perf_counter()
            recall = knowledge.search(question)  # both, as the runtime runs them
            t3 = time.perf_counter()
            remembered = pipeline.with_facts(bare, recall)
            t4 = time.perf_counter()
            embed_s.append(t1 - t0)
            rank_s.append(t2 - t1)
            search_s.append(t3 - t2)
            fit_s.append(t4 - t3)
        added_tokens.append(count(remembered) - count(bare))
        for name, messages in (("without", bare), ("with", remembered)):
            llm.reset()
            t = time.perf_counter()
            llm.prepare(llm.prompt_ids(messages, MAX_NEW_TOKENS))
            prefill[name].append(time.perf_counter() - t)
    return {
        "embed_question": percentiles(embed_s),
        "rank_index": percentiles(rank_s),
        "search": percentiles(search_s),
        "fit_into_prompt": percentiles(fit_s),
        "per_turn_total": percentiles([a + b for a, b in zip(search_s, fit_s)]),
        "prompt_tokens_added": {"median": statistics.median(added_tokens), "max": max(added_tokens)},
        "cold_prefill": {name: percentiles(values) for name, values in prefill.items()},
    }


def spoken(package_dir: Path, knowledge_path: Path, questions) -> dict:
    """Each question spoken by espeak-ng through the whole duplex agent on the virtual clock, with
    and without the memory (same engines): right answers and the estimated live first-audio delay."""
    import numpy as np
    from conftest import espeak

    from edgevoice import Agent
    from edgevoice.audio.io import FileIO
    from edgevoice.runtime import events as ev
    from edgevoice.runtime.loop import ESTIMATED_LIVE_KEY

    agent = Agent(package_dir, knowledge=knowledge_path)
    memory = agent.pipeline.knowledge
    out = {"without": [], "with": []}
    for question, _, facts in questions:
        audio = np.concatenate([np.zeros(8000, np.float32), espeak(question), np.zeros(24000, np.float32)])
        for name in ("without", "with"):
            agent.pipeline.knowledge = memory if name == "with" else None
            agent.pipeline.history.clear()
            seen: list = []
            unsubscribe = agent.on(None, seen.append)
            agent.run(FileIO(audio, recording_rate=16000))
            unsubscribe()
            replies = [e.data["text"] for e in seen if e.kind == ev.REPLY_TEXT and not e.data["cancelled"]]
            final = [e.data for e in seen if e.kind == ev.KNOWLEDGE and e.data["stage"] == "final"]
            out[name].append({
                "question": question, "reply": replies[-1] if replies else "",
                "right": bool(replies) and any(f in replies[-1].lower() for f in facts),
                "first_audio_estimated_live_s": next(e.data for e in seen if e.kind == ev.SESSION_END).get(ESTIMATED_LIVE_KEY),
                "partial_retrieval": any(e.kind == ev.KNOWLEDGE and e.data["stage"] == "partial" for e in seen),
                "final_retrieval": final[-1] if final else None,
            })
    delays = {name: [r["first_audio_estimated_live_s"] for r in rows if r["first_audio_estimated_live_s"] is not None]
              for name, rows in out.items()}
    return {
        "right_without": sum(r["right"] for r in out["without"]), "right_with": sum(r["right"] for r in out["with"]),
        "first_audio_estimated_live_median_s": {k: round(statistics.median(v), 3) if v else None for k, v in delays.items()},
        "retrieved_while_speaking": sum(r["partial_retrieval"] for r in out["with"]),
        "final_reused_partial": sum(bool(r["final_retrieval"] and r["final_retrieval"].get("reused")) for r in out["with"]),
        "turns": out,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--package", type=Path, default=REPO / "engines" / "cpu")
    parser.add_argument("--knowledge", type=Path, default=REPO / "examples" / "kiosk.md")
    parser.add_argument("--out", type=Path, default=None)
    parser.add_argument("--repeats", type=int, default=20)
    parser.add_argument("--spoken", action="store_true", help="also ask each question aloud through the duplex agent")
    args = parser.parse_args()

    import onnxruntime
    from knowledge_fixtures import KIOSK_QUESTIONS

    from edgevoice.runtime.cascade.pipeline import CascadePipeline

    with tempfile.TemporaryDirectory(prefix="edgevoice-knowledge-") as tmp:
        manifest = open_package(args.package, Path(tmp))
        pipeline = CascadePipeline(manifest, knowledge=args.knowledge)
        rows = answers(pipeline, KIOSK_QUESTIONS)
        timings = latency(pipeline, KIOSK_QUESTIONS, args.repeats)
        aloud = spoken(manifest.directory, args.knowledge, KIOSK_QUESTIONS) if args.spoken else None
    result = {
        "machine": f"{platform.machine()}, {platform.processor() or 'cpu'}",
        "versions": {"python": platform.python_version(), "onnxruntime": onnxruntime.__version__},
        "knowledge": str(args.knowledge), "passages": len(pipeline.knowledge.passages),
        "index_build_s": round(pipeline.knowledge.build_s, 3), "options": dict(vars(pipeline.knowledge.options)),
        "right_without": sum(r["without"]["right"] for r in rows),
        "right_with": sum(r["with"]["right"] for r in rows),
        "retrieved_right_passage_first": sum(r["top1"] == r["passage"] for r in rows),
        "questions": len(rows), "latency": timings, "answers": rows, "spoken": aloud,
    }
    text = json.dumps(result, indent=2)
    print(text)
    if args.out is not None:
        args.out.write_text(text + "\n")


if __name__ == "__main__":
    main()
