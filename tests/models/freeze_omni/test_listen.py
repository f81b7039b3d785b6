"""Freeze-Omni listen path against the reference's golden tensors, chunk by chunk, for every fixture set.

Tolerances: the goldens are the reference run in float32 on CPU; we also run float32, so only
summation order differs. The fixture README measured the reference's own float32-vs-float64
spread at <= 3.2e-6 of max |ref|; ``REL_TOL`` = 1e-4 of max |ref| leaves 30x room for a different
accumulation order while any formula slip (a wrong eps, position, scale) shows up at >= 1e-3.
The fbank is an independent implementation of Kaldi's (a float64-built DFT basis instead of an
FFT): log-domain atol 1e-3, the README's bound for independent Kaldi ports (its own cross-check
of two Kaldi implementations: 3.6e-4).
"""

from __future__ import annotations

import pytest
import torch
from fo_fixtures import fixture_params, load_listen_of, load_set, meta_entry, rel_err

from edgevoice.recipes.freeze_omni.listen import turn_start_embeds
from edgevoice.runtime.freeze_omni.turn_state import decide_batch

REL_TOL = 1e-4  # of max |golden|, float32 vs float32 (see module docstring)
FBANK_ATOL = 1e-3  # log-mel units, independent Kaldi implementation

pytestmark = pytest.mark.parametrize("root", fixture_params())


def golden_feats(fixture, listen, i: int) -> torch.Tensor:
    return listen.frontend.normalize(fixture.golden["fbank"][i : i + 1])  # (1, 19, 80) CMVN'd


@torch.no_grad()
def test_fbank_and_cmvn(root):
    fixture, listen = load_set(root), load_listen_of(root)
    frontend, audio = listen.frontend, torch.from_numpy(fixture.audio).view(1, -1)
    chunk = frontend.config.chunk_samples
    state, raw, normed = frontend.init_state(), [], []
    for i in range(fixture.chunks):
        fbank, *_ = frontend.raw_step(audio[:, i * chunk : (i + 1) * chunk], *state)
        feats, *state = frontend.step(audio[:, i * chunk : (i + 1) * chunk], *state)
        raw.append(fbank[0]), normed.append(feats[0])
    assert (torch.stack(raw) - fixture.golden["fbank"]).abs().max() <= FBANK_ATOL
    assert torch.equal(raw[0][:3], torch.zeros_like(raw[0][:3]))  # the feature ring starts at raw zeros
    istd = frontend.cmvn_istd.abs().max()
    assert (normed[0] - fixture.golden["cmvn_out_chunk0"]).abs().max() <= FBANK_ATOL * istd


@torch.no_grad()
def test_encoder_chunk_by_chunk(root):
    fixture, listen = load_set(root), load_listen_of(root)
    encoder, golden = listen.encoder, fixture.golden
    state, subsampled, encoded = encoder.init_state(), [], []
    for i in range(fixture.chunks):
        feats = golden_feats(fixture, listen, i)  # teacher-forced: each chunk from the golden fbank
        subsampled.append(encoder.subsampling(feats)[0])
        if i in (0, fixture.chunks - 1):
            pe, visible, _ = encoder.key_window(state[0], state[1])
            rows = pe[0][visible.view(-1)]  # the reference builds only the rows of real keys
            name = "pos_emb_chunk0" if i == 0 else "pos_emb_last_chunk"
            assert rel_err(rows, golden[name]) <= REL_TOL, name
        out, *state = encoder.step(feats, *state)
        encoded.append(out[0])
    assert rel_err(torch.stack(subsampled), golden["subsampling_out"]) <= REL_TOL
    assert rel_err(torch.stack(encoded), golden["encoder_out"]) <= REL_TOL
    layers = encoder.config.layers
    assert rel_err(torch.stack([state[2 + 2 * i][0] for i in range(layers)]), golden["encoder_cache_k_final"]) <= REL_TOL
    assert rel_err(torch.stack([state[3 + 2 * i][0] for i in range(layers)]), golden["encoder_cache_v_final"]) <= REL_TOL
    last = fixture.meta["listen"]["chunks"][-1]
    assert int(state[0]) == last["pe_index_out"] and int(state[1]) == meta_entry(last, "encoder_cache_shape_after")[0][2]


@torch.no_grad()
def test_adapter_chunk_by_chunk(root):
    fixture, listen = load_set(root), load_listen_of(root)
    state, outs = listen.adapter.init_state(), []
    for i in range(fixture.chunks):
        out, *state = listen.adapter.step(fixture.golden["encoder_out"][i : i + 1], *state)
        outs.append(out[0])
    assert rel_err(torch.stack(outs), fixture.golden["adapter_out"]) <= REL_TOL
    assert rel_err(state[0][0], fixture.golden["adapter_cache_final"]) <= REL_TOL


def replay_rows(fixture, listen) -> list[torch.Tensor]:
    """The reference's LLM inputs in order: system prompt, turn start + chunk 0, then 2 rows per chunk."""
    golden = fixture.golden
    first = turn_start_embeds(listen, golden["adapter_out"][:1])
    return [golden["pre_llm_inputs_embeds"][None], first] + [golden["adapter_out"][i : i + 1] for i in range(1, fixture.chunks)]


@torch.no_grad()
def test_llm_hidden_and_turn_state(root):
    from edgevoice.models.freeze_omni.state_head import ListenLlmStep

    fixture, listen = load_set(root), load_listen_of(root)
    golden, prompt = fixture.golden, fixture.meta["prompt"]
    system_ids = torch.tensor([prompt["system_role_ids"]])
    assert tuple(prompt["system_role_ids"][: len(listen.prompt.system_prefix_ids)]) == listen.prompt.system_prefix_ids
    assert list(listen.prompt.turn_prefix_ids) == meta_entry(prompt, "turn_prefix_ids")
    assert list(listen.prompt.response_prefix_ids) == meta_entry(prompt, "response_suffix_ids")
    assert rel_err(listen.llm.model.embed_tokens(system_ids)[0], golden["pre_llm_inputs_embeds"]) <= REL_TOL
    rows = replay_rows(fixture, listen)
    assert rel_err(rows[1][0], golden["llm_inputs_embeds_first"]) <= REL_TOL

    step = ListenLlmStep(listen.llm, listen.state_head)
    caches, position, hidden, logits, probs = step.init_state(), torch.zeros(1, dtype=torch.long), [], [], []
    for k, x in enumerate(rows):
        if k == 1:  # every row of the turn's first chunk, not just the last
            full, _ = listen.llm.run(x, position, caches)
            assert rel_err(full[0], golden["llm_hidden_first"]) <= REL_TOL
        _, h, state_logits, state_probs, *caches = step.step(x, position, *caches)
        position = position + x.shape[1]
        hidden.append(h[0]), logits.append(state_logits[0]), probs.append(state_probs[0])
    assert rel_err(hidden[0], golden["pre_last_hidden"]) <= REL_TOL
    assert rel_err(logits[0], torch.tensor(fixture.meta["pre_step"]["state_logits_last"])) <= REL_TOL
    assert rel_err(torch.stack(hidden[1:]), golden["llm_last_hidden"]) <= REL_TOL
    assert rel_err(torch.stack(logits[1:]), golden["state_logits"]) <= REL_TOL
    assert rel_err(torch.stack(probs[1:]), golden["state_probs"]) <= REL_TOL
    assert int(position) == fixture.meta["listen"]["chunks"][-1]["llm_kv_len_out"]
    decisions = decide_batch(torch.stack(probs[1:]).numpy())
    assert decisions == [c["stat_out"] for c in fixture.meta["listen"]["chunks"]]


@torch.no_grad()
def test_whole_path_from_the_wav(root):
    """No teacher forcing: our fbank feeds our encoder, adapter and LLM, as the runtime chains them.

    The fbank's 3e-4 log-domain differences propagate, so this compares at 1e-3 of max |ref|;
    decisions must still agree wherever the golden probability is clear of the 0.5 threshold.
    """
    from edgevoice.models.freeze_omni.state_head import ListenLlmStep

    fixture, listen = load_set(root), load_listen_of(root)
    chunk = listen.frontend.config.chunk_samples
    audio = torch.from_numpy(fixture.audio).view(1, -1)
    front, enc, ada = (m.streamer() for m in (listen.frontend, listen.encoder, listen.adapter))
    step, position = ListenLlmStep(listen.llm, listen.state_head), torch.zeros(1, dtype=torch.long)
    caches = step.init_state()
    system = fixture.golden["pre_llm_inputs_embeds"][None]
    _, _, _, _, *caches = step.step(system, position, *caches)
    position, probs = position + system.shape[1], []
    for i in range(fixture.chunks):
        embeds = ada(enc(front(audio[:, i * chunk : (i + 1) * chunk])))
        x = turn_start_embeds(listen, embeds) if i == 0 else embeds
        _, _, _, p, *caches = step.step(x, position, *caches)
        position, probs = position + x.shape[1], probs + [p[0]]
    probs = torch.stack(probs)
    assert rel_err(probs, fixture.golden["state_probs"]) <= 1e-3
    clear = ((fixture.golden["state_probs"][:, 1:] - 0.5).abs() > 1e-2).all(dim=1)
    ours, theirs = decide_batch(probs.numpy()), [c["stat_out"] for c in fixture.meta["listen"]["chunks"]]
    assert [o for o, c in zip(ours, clear) if c] == [t for t, c in zip(theirs, clear) if c]
