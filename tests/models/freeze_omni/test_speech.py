"""Freeze-Omni speech path in torch against the reference's golden tensors, for every fixture set.

Tolerances follow the fixture README: the reference re-run in float64 moves tts_logits by 7e-7
and codec_full_wav by 2.9e-6 relative to max |ref|, so a float32 reimplementation that sums in
another order is held to rtol 1e-4 with atol 1e-4 * max|ref| (two orders of magnitude above that
noise, far below any real mistake: a wrong mask or position moves logits by O(1)). Token ids and
sample counts must be exact (the smallest top-1/top-2 logit gap in the goldens is ~1e-2).
"""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from freeze_omni_sets import fixture_set_params, golden_speech, require_set, speech_limits

from edgevoice.models.freeze_omni.speech_decoder import speech_decoder_steps
from edgevoice.runtime.freeze_omni.speech_tokens import (
    CodecStreamConfig,
    CodecTokenFifo,
    SpeechAudioStream,
    SpeechTokenRule,
    generate_speech_tokens,
)
from edgevoice.weights.freeze_omni.speech import load_speech


def assert_close(actual, expected, what: str, rel: float = 1e-4) -> float:
    actual, expected = np.asarray(actual, dtype=np.float64), np.asarray(expected, dtype=np.float64)
    assert actual.shape == expected.shape, f"{what}: shape {actual.shape} vs {expected.shape}"
    scale = float(np.abs(expected).max())
    err = float(np.abs(actual - expected).max())
    assert np.allclose(actual, expected, rtol=rel, atol=rel * scale), f"{what}: max |diff| {err:.3g} (max |ref| {scale:.3g})"
    return err


@pytest.fixture(scope="module", params=fixture_set_params())
def fixture_set(request):
    path = require_set(request.param)
    golden, meta = golden_speech(path)
    speech = load_speech(path / "checkpoints", **speech_limits(golden))
    return path, golden, meta, speech


def golden_prefix_text(golden) -> tuple[torch.Tensor, torch.Tensor]:
    return golden["tts_prefix_in"][None], golden["tts_hidden_in"][None]  # (1, P, D), (1, N, D)


@torch.no_grad()
def run_steps(speech, prefix, text, max_tokens: int) -> tuple[list[int], np.ndarray]:
    """Greedy tokens and every step's logits through the three step views, state carried along."""
    steps = speech_decoder_steps(speech.decoder)
    state = speech.decoder.empty_state(1)
    state = steps["speech_prefix"].step(prefix, *state)
    state = steps["speech_text"].step(text, *state)
    logits_seen = []

    def token_step(token: int) -> np.ndarray:
        nonlocal state
        logits, *state = steps["speech_token"].step(torch.tensor([[token]]), *state)
        logits_seen.append(logits[0].numpy())
        return logits[0].numpy()

    config = speech.decoder_config
    rule = SpeechTokenRule(config.sos_id, config.eos_id, max_tokens=max_tokens)
    tokens = list(generate_speech_tokens(token_step, rule))
    return tokens, np.stack(logits_seen)


# --- converter -----------------------------------------------------------------------------


def test_dimensions_come_from_the_checkpoints(fixture_set):
    _, golden, meta, speech = fixture_set
    decoder, codec = speech.decoder_config, speech.codec_config
    assert decoder.width == golden["tts_hidden_in"].shape[1]
    assert decoder.vocab_size == golden["tts_logits"].shape[1]
    assert codec.hop * golden["codec_fixed_tokens"].shape[0] == golden["codec_full_wav"].shape[0]
    assert list(speech.global_tokens) == meta["codec"]["global_tokens"]
    assert any("'encoder'" in entry for entry in speech.unused_by_design)
    assert_close(speech.codec.global_vector, golden["codec_global_feature"], "global vector", rel=1e-6)


# --- decoder -------------------------------------------------------------------------------


def test_text_decoder_matches_golden(fixture_set):
    _, golden, _, speech = fixture_set
    with torch.no_grad():
        out = speech.decoder.text_pass(golden["tts_hidden_in"][None])[0]
    assert_close(out, golden["tts_pre_nn_out"], "tts_pre_nn_out")


def test_step_logits_and_greedy_tokens_match_golden(fixture_set):
    _, golden, meta, speech = fixture_set
    expected = golden["tts_tokens"].tolist()
    tokens, logits = run_steps(speech, *golden_prefix_text(golden), max_tokens=meta["speech_decoder"]["max_tokens"])
    assert tokens == expected
    assert_close(logits, golden["tts_logits"], "tts_logits")


def test_teacher_forced_pass_equals_the_steps(fixture_set):
    """Chunked == full: one causal pass over all fed tokens gives the step-by-step logits."""
    _, golden, _, speech = fixture_set
    prefix, text = golden_prefix_text(golden)
    tokens = golden["tts_tokens"]
    fed = torch.cat([torch.tensor([speech.decoder_config.sos_id]), tokens[:-1]])[None]
    full = speech.decoder(prefix, text, fed)[0].numpy()
    _, stepped = run_steps(speech, prefix, text, max_tokens=len(tokens))
    assert np.abs(full - stepped).max() <= 1e-4


def test_appending_tokens_never_changes_earlier_logits(fixture_set):
    _, golden, _, speech = fixture_set
    prefix, text = golden_prefix_text(golden)
    fed = torch.cat([torch.tensor([speech.decoder_config.sos_id]), golden["tts_tokens"]])[None]
    cut = fed.shape[1] // 2
    short, long = speech.decoder(prefix, text, fed[:, :cut]), speech.decoder(prefix, text, fed)
    assert torch.abs(short - long[:, :cut]).max().item() <= 1e-5


def test_without_prefix_the_state_means_no_prefix(fixture_set):
    """Zero state = no prefix: skipping speech_prefix equals the reference's prefix=None path."""
    _, golden, _, speech = fixture_set
    text = golden["tts_hidden_in"][None]
    fed = torch.tensor([[speech.decoder_config.sos_id]])
    steps = speech_decoder_steps(speech.decoder)
    with torch.no_grad():
        state = steps["speech_text"].step(text, *speech.decoder.empty_state(1))
        logits = steps["speech_token"].step(fed, *state)[0]
    assert torch.abs(logits - speech.decoder(None, text, fed)[:, 0]).max().item() <= 1e-5
    assert state[-1].item() == text.shape[1] + 1 and state[-2].item() == 0


# --- codec ---------------------------------------------------------------------------------


def codec_decode(speech):
    return lambda tokens: speech.codec(torch.from_numpy(tokens)[None])[0].detach().numpy()


def test_codec_full_decode_matches_golden(fixture_set):
    _, golden, _, speech = fixture_set
    with torch.no_grad():
        pcm = speech.codec(golden["codec_fixed_tokens"][None])[0]
    assert_close(pcm, golden["codec_full_wav"], "codec_full_wav")


def test_codec_fifo_windows_are_the_references(fixture_set):
    _, golden, meta, _ = fixture_set
    fifo = CodecTokenFifo(CodecStreamConfig())
    windows = [w for t in golden["tts_tokens"].tolist() if (w := fifo.push(t)) is not None] + [fifo.finish()]
    calls = meta["speech_decoder"]["codec_calls_in_run"]
    assert [w.tokens.tolist() for w in windows] == [c["tokens"] for c in calls]
    # Context trimmed on the left from the second window on; look-ahead on the right except at the end.
    pad = CodecStreamConfig().padding
    assert [(w.skip, w.drop) for w in windows] == [(0 if i == 0 else pad, pad if i < len(windows) - 1 else 0)
                                                  for i in range(len(windows))]


REFERENCE_THRESHOLD = 0.01  # llm2TTS.run's default seg_threshold


def recorded_cuts(codec_meta: dict) -> list[tuple[float, list[int]]]:
    """(threshold, yielded segment sizes) pairs in meta.json; other thresholds are named in their key."""
    pattern = re.compile(r"chunked_seg_threshold_([0-9.eE+-]+)_yielded_segment_samples")
    cuts = [(REFERENCE_THRESHOLD, codec_meta["chunked_yielded_segment_samples"])]
    return cuts + [(float(m.group(1)), value) for key, value in codec_meta.items() if (m := pattern.fullmatch(key))]


def test_chunked_codec_equals_full_decode_and_cuts_like_the_reference(fixture_set):
    _, golden, meta, speech = fixture_set
    cuts = recorded_cuts(meta["codec"])
    assert len(cuts) >= 2  # the default (no cut on loud audio) and at least one splitting threshold
    for threshold, expected in cuts:
        stream = SpeechAudioStream(codec_decode(speech), CodecStreamConfig(hop=speech.codec_config.hop, quiet_threshold=threshold))
        with torch.no_grad():
            pieces = [p for t in golden["codec_fixed_tokens"].tolist() if (p := stream.push(t)) is not None]
            pieces.append(stream.finish())
        assert [len(p) for p in pieces if len(p)] == expected, f"threshold {threshold}"
        assert_close(np.concatenate(pieces), golden["codec_full_wav"], "chunked codec vs full")


def test_decoded_speech_matches_golden_wav(fixture_set):
    _, golden, meta, speech = fixture_set
    stream = SpeechAudioStream(codec_decode(speech), CodecStreamConfig(hop=speech.codec_config.hop))
    with torch.no_grad():
        pieces = [p for t in golden["tts_tokens"].tolist() if (p := stream.push(t)) is not None]
        pieces.append(stream.finish())
    assert [len(p) for p in pieces if len(p)] == meta["speech_decoder"]["yielded_segment_samples"]
    assert_close(np.concatenate(pieces), golden["tts_wav"], "tts_wav")


# --- converter refusals and dtypes ----------------------------------------------------------


@pytest.fixture
def checkpoint_copy(fixture_set, tmp_path):
    """A writable copy of the set's decoder and codec folders."""
    import shutil

    path = fixture_set[0]
    for part in ("decoder", "codec"):
        shutil.copytree(path / "checkpoints" / part, tmp_path / part)
    return tmp_path


def rewrite(path, edit) -> None:
    checkpoint = torch.load(path, weights_only=True)
    edit(checkpoint)
    torch.save(checkpoint, path)


def test_bf16_decoder_checkpoint_loads(fixture_set, checkpoint_copy):
    _, golden, _, speech = fixture_set
    rewrite(checkpoint_copy / "decoder" / "final.pt",
            lambda c: c.update(model={k: v.to(torch.bfloat16) for k, v in c["model"].items()}))
    bf16 = load_speech(checkpoint_copy, **speech_limits(golden))
    prefix, text = golden_prefix_text(golden)
    fed = golden["tts_tokens"][None, :8]
    ours, reference = bf16.decoder(prefix, text, fed), speech.decoder(prefix, text, fed)
    # bf16 keeps 8 mantissa bits: weights move by up to 2^-9 relative, logits by a few percent of their range.
    assert torch.abs(ours - reference).max().item() <= 0.05 * reference.abs().max().item()
    assert next(bf16.decoder.parameters()).dtype == torch.float32


@pytest.mark.parametrize("edit, message", [
    (lambda m: m.update({"layers.0.extra.weight": torch.zeros(2)}), r"unexpected \['layers.0.extra.weight'\]"),
    (lambda m: m.pop("norm.weight"), r"missing \['norm.weight'\]"),
    (lambda m: m.update({"out_fnn.bias": torch.zeros(7)}), r"tensor 'out_fnn.bias' .* has shape \(7,\)"),
])
def test_decoder_accounting_names_the_keys(checkpoint_copy, edit, message):
    from edgevoice.errors import EdgevoiceError

    rewrite(checkpoint_copy / "decoder" / "final.pt", lambda c: edit(c["model"]))
    with pytest.raises(EdgevoiceError, match=message):
        load_speech(checkpoint_copy)


@pytest.mark.parametrize("edit, message", [
    (lambda c: c["generator"].update({"conv_post.scale": torch.ones(1)}), r"does not use: \['conv_post.scale'\]"),
    (lambda c: c["quantizer"].update({"quantizer_modules2.0.embedding.weight": torch.ones(2, 2)}),
     r"does not use: \['quantizer_modules2.0.embedding.weight'\]"),
    (lambda c: c["generator"].pop("ups.0.weight_g"), r"no tensor 'ups.0.weight_g'"),
    (lambda c: c.update(mpd={"w": torch.ones(1)}), r"has parts \['mpd'\]"),
])
def test_codec_accounting_names_the_keys(checkpoint_copy, edit, message):
    from edgevoice.errors import EdgevoiceError

    rewrite(checkpoint_copy / "codec" / "final.pt", edit)
    with pytest.raises(EdgevoiceError, match=message):
        load_speech(checkpoint_copy)


def test_decoder_model_json_must_agree_with_itself(checkpoint_copy):
    import json

    from edgevoice.errors import EdgevoiceError

    path = checkpoint_copy / "decoder" / "model.json"
    idim, odim, args = json.loads(path.read_text())
    path.write_text(json.dumps([idim + 1, odim, args]))
    with pytest.raises(EdgevoiceError, match="must agree"):
        load_speech(checkpoint_copy)


# --- generated weights ----------------------------------------------------------------------


def test_random_tiny_speech_decodes_tokens_to_audio():
    from edgevoice.recipes.freeze_omni.speech import TINY_SPEECH, random_speech

    speech = random_speech(TINY_SPEECH, seed=3, max_prefix_rows=16, max_text_rows=16, max_speech_tokens=64)
    generator = torch.Generator().manual_seed(0)
    prefix, text = (torch.randn(1, 8, TINY_SPEECH.width, generator=generator) for _ in range(2))
    tokens, _ = run_steps(speech, prefix, text, max_tokens=50)
    assert 0 < len(tokens) <= 50 and all(0 <= t < TINY_SPEECH.odim for t in tokens)
    pcm = codec_decode(speech)(np.asarray(tokens[:20], dtype=np.int64))
    assert pcm.shape == (20 * 600,) and 0.01 < np.abs(pcm).mean() < 0.9  # audible, not saturated
    again = random_speech(TINY_SPEECH, seed=3, max_prefix_rows=16, max_text_rows=16, max_speech_tokens=64)
    assert run_steps(again, prefix, text, max_tokens=50)[0] == tokens  # the seed fixes everything


def test_random_speech_at_published_sizes():
    from edgevoice.recipes.freeze_omni.speech import PUBLISHED_SPEECH, random_speech

    speech = random_speech(PUBLISHED_SPEECH, seed=0, max_prefix_rows=8, max_text_rows=8, max_speech_tokens=8)
    decoder = speech.decoder_config
    assert (decoder.width, decoder.heads, decoder.head_dim, decoder.ffn) == (896, 14, 64, 4864)
    assert (decoder.prefix_layers, decoder.pre_nn_layers, decoder.ar_layers) == (4, 2, 4)
    # 94 tensors, 164.7 M values: the size the research notes derive for decoder/final.pt.
    params = dict(speech.decoder.named_parameters())
    assert len(params) == 94 and round(sum(p.numel() for p in params.values()) / 1e6, 1) == 164.7
    codec = speech.codec_config
    assert codec.stage_channels == (256, 128, 64, 32) and codec.hop == 600 and codec.resblock_kernels == (3, 7, 11)
    with torch.no_grad():
        pcm = speech.codec(torch.tensor([[1, 2, 3]]))
    assert pcm.shape == (1, 1800) and torch.isfinite(pcm).all()


def write_published_format(speech, folder) -> None:
    """``speech`` saved as Freeze-Omni's checkpoints/: model.json files, {'model'} and weight-normed generator."""
    import json

    dec, codec = speech.decoder_config, speech.codec_config
    (folder / "decoder").mkdir()
    (folder / "codec").mkdir()
    args = {"transformer_attention_dim": dec.width, "encoder_output_dim": dec.width, "transformer_num_blocks": dec.ar_layers,
            "transformer_attention_heads": dec.heads, "transformer_linear_units": dec.ffn, "kv_cache_prefix_finetune": 1}
    (folder / "decoder" / "model.json").write_text(json.dumps([dec.width, dec.odim, args]))
    torch.save({"model": speech.decoder.state_dict(), "optimizer": {"step": torch.tensor(3)}}, folder / "decoder" / "final.pt")
    generator = {}
    for name, value in speech.codec.state_dict().items():
        if name.endswith(".weight") and value.dim() == 3:  # unfold: v = w, g = |w| per output (dim 0)
            module = name[: -len(".weight")]
            generator[f"{module}.weight_v"] = value * 2.0
            generator[f"{module}.weight_g"] = value.norm(dim=(1, 2), keepdim=True)
        elif name.endswith(".bias"):
            generator[name] = value
    width = codec.global_dim // len(speech.global_tokens)
    quantizer = {"quantizer_modules.0.embedding.weight": speech.codec.codebook.weight.detach()}
    for j, token in enumerate(speech.global_tokens):
        table = torch.randn(codec.n_codes, width)
        table[token] = speech.codec.global_vector[j * width : (j + 1) * width]
        quantizer[f"quantizer_modules_globaltokens.{j}.embedding.weight"] = table
    torch.save({"generator": generator, "quantizer": quantizer, "encoder": {"conv_pre.bias": torch.zeros(3)}},
               folder / "codec" / "final.pt")
    (folder / "codec" / "model.json").write_text(json.dumps({
        "resblock": "1", "n_code_groups": 1, "residul_layer": 1, "n_codes": codec.n_codes, "sampling_rate": 24000,
        "upsample_initial_channel": codec.initial_channels, "upsample_rates": list(codec.upsample_rates),
        "upsample_kernel_sizes": list(codec.upsample_kernels), "resblock_kernel_sizes": list(codec.resblock_kernels),
        "resblock_dilation_sizes": [list(d) for d in codec.resblock_dilations], "global_tokens": list(speech.global_tokens),
    }))


def test_converter_round_trip_at_other_dimensions(tmp_path):
    """Nothing is sized from the fixture: a 48-wide, 3-head, 2-block decoder and a 3-kernel MRF codec load back."""
    from edgevoice.recipes.freeze_omni.speech import SpeechDims, random_speech

    dims = SpeechDims(width=48, heads=3, ffn=80, num_blocks=2, codec_initial_channels=64, upsample_kernels=(16, 11, 11, 5),
                      resblock_kernels=(3, 5, 7), resblock_dilations=((1, 3, 5), (1, 2, 4), (2, 3, 4)), odim=300, code_dim=24,
                      global_codes=4, global_code_dim=4)
    limits = {"max_prefix_rows": 16, "max_text_rows": 16, "max_speech_tokens": 16}
    original = random_speech(dims, seed=5, **limits)
    write_published_format(original, tmp_path)
    loaded = load_speech(tmp_path, **limits)
    assert loaded.decoder_config == original.decoder_config and loaded.codec_config == original.codec_config
    unused = loaded.unused_by_design
    assert len(unused) == 2 and "'optimizer'" in unused[0] and "'encoder'" in unused[1]
    generator = torch.Generator().manual_seed(1)
    prefix, text = torch.randn(1, 12, 48, generator=generator), torch.randn(1, 8, 48, generator=generator)
    fed = torch.tensor([[dims.odim + 1, 3, 7, 11]])
    assert torch.abs(loaded.decoder(prefix, text, fed) - original.decoder(prefix, text, fed)).max().item() == 0.0
    tokens = torch.tensor([[1, 5, 299, 42]])
    with torch.no_grad():
        assert torch.abs(loaded.codec(tokens) - original.codec(tokens)).max().item() <= 1e-5  # fold rounding only
