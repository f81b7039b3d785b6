"""--verify's upstream checks: each cascade part against its upstream implementation, same weights."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import pytest
from edgevoice.export.package import _check_upstream, imported_parity_failures

from edgevoice.errors import EdgevoiceError
from edgevoice.recipes.base import Recipe, UpstreamCheck
from edgevoice.recipes.cascade import upstream
from edgevoice.recipes.cascade.kokoro import LENGTH_TOLERANCE, PARITY_TOLERANCE, KokoroComponent


def test_every_measurement_has_its_own_limit():
    checks = upstream.cascade_checks()
    assert set(checks) == {"turn", "asr", "llm"}
    assert checks["asr"].limits == {"encoder_max_abs": 2e-3, "transcript_differs": 0.0}
    assert checks["llm"].limits == {"logits_max_abs": 2e-3, "step_logits_max_abs": 2e-3, "greedy_tokens_differ": 0.0}


def test_llm_greedy_check_runs_the_one_graph_step_in_both_roles():
    """The check's greedy tokens come from the shipped step, prompt in chunks then one token per call,
    and equal greedy argmax over full-sequence calls (what transformers' ``generate`` computes,
    ``GenerationMixin._sample`` with do_sample=False), here on a small random model."""
    import torch

    from edgevoice.models.llm import LlmConfig, LlmModel, LlmStep

    torch.manual_seed(0)
    config = LlmConfig(vocab_size=64, hidden=32, layers=2, heads=4, kv_heads=2, head_dim=8, ffn=48,
                       max_context=32, prefill_max_tokens=4)
    model = LlmModel(config).eval()
    ids = [3, 17, 5, 40, 9, 22, 8]  # 7 tokens: chunks of 4 and 3
    step = LlmStep(model, tokens=None)
    calls = []
    original = step.step
    step.step = lambda first, *rest: calls.append(first.shape[1]) or original(first, *rest)
    with torch.no_grad():
        got, prompt_logits = upstream._greedy_through_step(step, ids, 5)
        tokens = list(ids)
        for _ in range(5):
            tokens.append(int(model(torch.tensor([tokens]))[0, -1].argmax()))
        full = model(torch.tensor([ids]))[0, -1]
    assert got == tokens[len(ids):]
    assert calls == [4, 3, 1, 1, 1, 1]  # prefill chunks, then single tokens through the same step
    torch.testing.assert_close(prompt_logits, full, atol=1e-4, rtol=0)


def test_a_measurement_over_its_limit_fails_the_export_naming_it():
    check = UpstreamCheck("a reference", lambda: {"error": 0.5, "ok": 0.0}, {"error": 0.1, "ok": 0.0})
    recipe = Recipe(name="demo", components=[], config={}, upstream={"part": check})
    with pytest.raises(EdgevoiceError, match=r"demo part: our torch port differs from a reference \(error 0.5 > 0.1\)"):
        _check_upstream(recipe, lambda stage: None)
    assert check.failures({"unlisted": 1e-9}) == ["unlisted 1e-09 > 0"]  # no limit: nothing passes silently


def test_measurements_within_limits_are_recorded():
    check = UpstreamCheck("a reference", lambda: {"error": 0.05}, {"error": 0.1})
    recipe = Recipe(name="demo", components=[], config={}, upstream={"part": check})
    stages = []
    _check_upstream(recipe, stages.append)
    assert recipe.config["upstream"] == {"part": {"against": "a reference", "error": 0.05, "limits": {"error": 0.1}}}
    assert stages == ["part: checking against a reference"]


@dataclass
class _Imported:
    parity: dict[str, float]
    parity_tolerance: float = PARITY_TOLERANCE
    parity_limits: dict[str, float] = field(default_factory=lambda: {"float_vs_int8_length_diff": LENGTH_TOLERANCE})
    onnx_path: Path = Path("tts.onnx")


def test_kokoro_length_has_its_own_limit():
    # A 30 % duration change used to pass under the 0.3 spectral tolerance.
    assert KokoroComponent.__dataclass_fields__["parity_limits"].default_factory() == {
        "float_vs_int8_length_diff": LENGTH_TOLERANCE}
    longer = _Imported({"float_vs_int8_spectral_nsr": 0.1, "float_vs_int8_length_diff": 0.3})
    assert imported_parity_failures(longer) == ["float_vs_int8_length_diff 3.00e-01 > 0.02"]
    same = _Imported({"float_vs_int8_spectral_nsr": 0.1, "float_vs_int8_length_diff": 0.005})
    assert imported_parity_failures(same) == []


@pytest.mark.slow
def test_whisper_port_agrees_with_faster_whisper():
    measured = upstream.whisper_vs_faster_whisper()
    assert upstream.cascade_checks()["asr"].failures(measured) == [], measured


@pytest.mark.slow
def test_llm_port_agrees_with_transformers_on_the_same_gguf():
    measured = upstream.llm_vs_transformers()
    assert upstream.cascade_checks()["llm"].failures(measured) == [], measured


@pytest.mark.slow
def test_smart_turn_agrees_with_the_shipped_graph():
    measured = upstream.smart_turn_vs_shipped()
    assert upstream.cascade_checks()["turn"].failures(measured) == [], measured
