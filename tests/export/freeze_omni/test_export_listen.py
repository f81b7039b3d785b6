"""Freeze-Omni listen graphs: exported with export_onnx, run on onnxruntime CPU with state fed back, against the goldens.

Each stage is teacher-forced from the golden input of that stage (the fixture README's advice),
so an error is pinned to one graph. Tolerance: float32 graphs on onnxruntime vs float32
reference goldens, 1e-4 of max |golden| (onnxruntime reorders sums and fuses ops; measured
<= 3e-6, and the reference's own float32-vs-float64 spread is 3.2e-6). The front end, an
independent Kaldi port, keeps its 1e-3 log-domain bound, scaled by CMVN's largest istd.
"""

from __future__ import annotations

import numpy as np
import onnxruntime as ort
import pytest
import torch
from edgevoice.export.to_onnx import export_onnx
from edgevoice.export.trt_check import check_trt_compatibility
from fo_fixtures import fixture_params, load_listen_of, load_set, rel_err

from edgevoice.recipes.freeze_omni.listen import listen_components, turn_start_embeds
from edgevoice.runtime.freeze_omni.turn_state import decide_batch

REL_TOL = 1e-4  # of max |golden|, float32 graph vs float32 reference
FBANK_ATOL = 1e-3  # log-mel units, independent Kaldi implementation


class Graph:
    """One exported component on onnxruntime, holding its state between calls like the runtime does."""

    def __init__(self, component, path):
        export_onnx(component, path, "fp32", max_batch=2)
        self.trt = check_trt_compatibility(str(path), "10.3")
        self.session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        self.outputs = component.module.output_names()
        self.state_names = [s.name for s in component.module.state_specs()]
        self.state = [s.numpy() for s in component.module.init_state(1)]

    def __call__(self, *inputs: np.ndarray) -> list[np.ndarray]:
        names = [i.name for i in self.session.get_inputs()][: len(inputs)]
        results = self.session.run(None, {**dict(zip(names, inputs)), **dict(zip(self.state_names, self.state))})
        self.state = results[len(self.outputs) :]
        return results[: len(self.outputs)]


@pytest.fixture(scope="module", params=fixture_params())
def graphs(request, tmp_path_factory):
    listen = load_listen_of(request.param)
    out = tmp_path_factory.mktemp("fo_listen")
    return request.param, {c.name: Graph(c, out / f"{c.name}.onnx") for c in listen_components(listen)}


def test_every_graph_parses_on_tensorrt_10_3(graphs):
    _, built = graphs
    assert set(built) == {"fo_frontend", "fo_encoder", "fo_adapter", "fo_llm_listen", "fo_llm_prefill", "fo_llm_decode"}
    for name, graph in built.items():
        assert graph.trt.ok, f"{name}: {graph.trt.summary()}"


def test_frontend_graph(graphs):
    root, built = graphs
    fixture, listen = load_set(root), load_listen_of(root)
    chunk = listen.frontend.config.chunk_samples
    feats = [built["fo_frontend"](fixture.audio[None, i * chunk : (i + 1) * chunk])[0][0] for i in range(fixture.chunks)]
    expected = listen.frontend.normalize(fixture.golden["fbank"])
    atol = FBANK_ATOL * float(listen.frontend.cmvn_istd.abs().max())
    assert np.abs(np.stack(feats) - expected.numpy()).max() <= atol


def test_encoder_and_adapter_graphs(graphs):
    root, built = graphs
    fixture, listen = load_set(root), load_listen_of(root)
    golden = fixture.golden
    encoded, embeds = [], []
    for i in range(fixture.chunks):
        feats = listen.frontend.normalize(golden["fbank"][i : i + 1]).numpy()
        encoded.append(built["fo_encoder"](feats)[0][0])
        embeds.append(built["fo_adapter"](golden["encoder_out"][i : i + 1].numpy())[0][0])
    assert rel_err(np.stack(encoded), golden["encoder_out"]) <= REL_TOL
    layers = listen.encoder.config.layers
    state = built["fo_encoder"].state
    assert rel_err(np.stack([state[2 + 2 * i][0] for i in range(layers)]), golden["encoder_cache_k_final"]) <= REL_TOL
    assert rel_err(np.stack(embeds), golden["adapter_out"]) <= REL_TOL
    assert rel_err(built["fo_adapter"].state[0][0], golden["adapter_cache_final"]) <= REL_TOL


def test_listen_llm_graph_hidden_and_turn_state(graphs):
    root, built = graphs
    fixture, listen = load_set(root), load_listen_of(root)
    golden, llm = fixture.golden, built["fo_llm_listen"]
    first = turn_start_embeds(listen, golden["adapter_out"][:1])
    rows = [golden["pre_llm_inputs_embeds"][None], first] + [golden["adapter_out"][i : i + 1] for i in range(1, fixture.chunks)]
    position, hidden, logits, probs = 0, [], [], []
    for x in rows:
        _, h, state_logits, state_probs = llm(x.numpy(), np.array([position], dtype=np.int64))
        position += x.shape[1]
        hidden.append(h[0]), logits.append(state_logits[0]), probs.append(state_probs[0])
    assert rel_err(hidden[0], golden["pre_last_hidden"]) <= REL_TOL
    assert rel_err(np.stack(hidden[1:]), golden["llm_last_hidden"]) <= REL_TOL
    assert rel_err(np.stack(logits[1:]), golden["state_logits"]) <= REL_TOL
    assert rel_err(np.stack(probs[1:]), golden["state_probs"]) <= REL_TOL
    assert decide_batch(np.stack(probs[1:])) == [c["stat_out"] for c in fixture.meta["listen"]["chunks"]]


@torch.no_grad()
def test_id_graphs_continue_the_listen_cache(graphs):
    """fo_llm_prefill/decode read the KV the listen graph wrote: the system prompt by ids equals it by embeds."""
    root, built = graphs
    fixture, listen = load_set(root), load_listen_of(root)
    ids = np.asarray([fixture.meta["prompt"]["system_role_ids"]], dtype=np.int64)
    _, hidden = built["fo_llm_prefill"](ids, np.array([0], dtype=np.int64))
    assert rel_err(hidden[0], fixture.golden["pre_last_hidden"]) <= REL_TOL
    decode = built["fo_llm_decode"]
    decode.state = built["fo_llm_prefill"].state  # hand the cache over, as the host does
    token = listen.prompt.response_prefix_ids[0]
    _, hidden = decode(np.array([[token]], dtype=np.int64), np.array([ids.shape[1]], dtype=np.int64))
    sequence = listen.llm.model.embed_tokens(torch.tensor([list(ids[0]) + [token]]))
    one_pass, _ = listen.llm.run(sequence, torch.zeros(1, dtype=torch.long), listen.llm.empty_cache(1, ids.shape[1] + 1))
    assert rel_err(hidden[0], one_pass[0, -1]) <= REL_TOL
