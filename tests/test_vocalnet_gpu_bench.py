"""The VocalNet GPU benchmark script: its CPU path at tiny widths end to end, and what its timings stand for.

The script runs as the device will run it (a separate process, JSON out), so a broken part shows
up here before a lent GPU's minutes are spent on it. The bound steps are then checked against the
runtime's own loops, so the times measure the work a reply really does.
"""

from __future__ import annotations

import itertools
import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from conftest import SHARED_FIXTURES

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "vocalnet_gpu_bench.py"
sys.path.insert(0, str(SCRIPT.parent))  # the script's helper modules
STAGES = ("listen", "first_text_token", "first_speech_tokens", "first_mel", "first_pcm")
STEPS = {"listen": ("vn_listen",), "llm": ("llm_prefill_64", "llm_decode"),
         "decoder": ("speech_text_5", "speech_units_3"),
         "flow": ("flow_encoder_first", "flow_step_first", "flow_call_first", "flow_encoder_late", "flow_step_late",
                  "flow_call_late"),
         "hift": ("hift_chunk_first_24", "hift_chunk_32")}


def errors_in(value, path: str = "") -> list[str]:
    """Every recorded error in the report, with where it sits."""
    if isinstance(value, dict):
        found = [f"{path}: {value['error']}"] if "error" in value else []
        return found + [e for k, v in value.items() if k != "error" for e in errors_in(v, f"{path}/{k}")]
    return []


@pytest.fixture(scope="module")
def tiny_report(tmp_path_factory) -> dict:
    out = tmp_path_factory.mktemp("vocalnet-bench") / "vocalnet_gpu_bench.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--device", "cpu", "--shapes", "tiny", "--steps", "2",
                           "--out", str(out)], capture_output=True, text=True, timeout=300, cwd=REPO, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "first PCM (HiFT)" in done.stdout and "paper" in done.stdout
    return json.loads(out.read_text())


def test_every_stage_is_timed_and_the_stages_add_up_in_order(tiny_report):
    assert errors_in(tiny_report) == []
    eager = tiny_report["timeline"]["eager"]
    assert list(eager["stage_ms"]) == list(STAGES) and all(ms > 0 for ms in eager["stage_ms"].values())
    cumulative = [eager["cumulative_ms"][stage] for stage in STAGES]
    assert all(a < b for a, b in itertools.pairwise(cumulative))
    assert cumulative[-1] == pytest.approx(sum(eager["stage_ms"].values()))
    assert eager["vocoder_ms"] == pytest.approx(eager["stage_ms"]["first_mel"] + eager["stage_ms"]["first_pcm"])
    assert "skipped" in tiny_report["timeline"]["graphs"]  # no CUDA graphs on the CPU
    cpu_time = tiny_report["timeline"]["eager_cpu"]  # the same eager runs, in process CPU time
    assert list(cpu_time["stage_ms"]) == list(STAGES) and all(ms > 0 for ms in cpu_time["stage_ms"].values())
    assert tiny_report["paper"]["first_pcm_ms"] == 320 and tiny_report["paper"]["vocoder_ms"] == 225
    assert "first_pcm_over_paper" not in eager  # toy widths are not the paper's shapes


def test_timeline_adds_the_parts_stages_and_compares_published_shapes_with_the_paper():
    from vocalnet_gpu_bench import timeline

    def part(**stages):
        return {"graphs": {"stages": {name: {"median": ms} for name, ms in stages.items()}}}

    parts = {"listen": part(listen=20.0), "llm": part(first_text_token=30.0, first_chunk_llm=8.0),
             "decoder": part(first_chunk_decoder=12.0), "flow": part(first_mel=150.0), "hift": part(first_pcm=100.0)}
    graphs = timeline(parts, published_shapes=True)["graphs"]
    assert graphs["stage_ms"]["first_speech_tokens"] == 20.0  # the LLM's 4 steps + the decoder's chunk
    assert list(graphs["cumulative_ms"].values()) == [20.0, 50.0, 70.0, 220.0, 320.0]
    assert graphs["first_pcm_over_paper"] == 1.0 and graphs["vocoder_over_paper"] == pytest.approx(250 / 225)
    assert "skipped" in timeline(parts, published_shapes=True)["eager"]  # no eager stages given


def test_the_tiny_shapes_were_the_ones_built(tiny_report):
    from edgevoice.recipes.vocalnet.tiny import TinyDims

    dims, shapes = TinyDims(), tiny_report["setup"]["shapes"]
    assert shapes["name"] == "tiny" and tiny_report["setup"]["dtype"] == "fp32"
    assert (shapes["llm"]["hidden"], shapes["llm"]["layers"]) == (dims.llm_hidden, dims.llm_layers)
    assert shapes["encoder"]["width"] == dims.encoder_width and shapes["decoder"]["width"] == dims.llm_hidden
    assert shapes["flow"]["encoder_width"] == dims.flow_width and shapes["hift"]["base_channels"] == dims.hift_channels
    assert shapes["voice_tokens"] == dims.prompt_tokens
    # What was built, not only what was asked: every tiny part is far below the 1B parts' sizes.
    assert all(0 < tiny_report["parts"][part]["parameters"] < 3_000_000 for part in STEPS)


def test_every_step_is_timed_and_the_rates_follow(tiny_report):
    for part, names in STEPS.items():
        entry = tiny_report["parts"][part]
        for name in names:
            assert entry["eager"]["steps"][name]["median"] > 0, (part, name)
        assert entry["graphs"] == {"skipped": "CUDA graphs need a CUDA device"}
    rates = tiny_report["rates"]
    assert rates["mtp_units_per_step"] == 3 and rates["units_per_call_measured"] == 3.0  # main + 2 MTP heads
    assert rates["real_time_tokens_per_s"] == 25 and rates["chunk_audio_seconds"] == pytest.approx(0.48)
    eager = rates["eager"]
    assert eager["decoder_units_per_s"] > eager["units_per_s_with_llm"] > 0
    assert eager["vocoder_late_chunk_rtf"] > 0 and eager["vocoder_first_chunk_rtf"] > 0


def test_gpu_suite_runs_it_as_a_section(tmp_path):
    """benchmarks/gpu_suite.py's vocalnet section: the script in a child process, its timeline kept."""
    import argparse
    import importlib.util

    spec = importlib.util.spec_from_file_location("gpu_suite", REPO / "benchmarks" / "gpu_suite.py")
    suite = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(suite)
    result = suite.vocalnet_bench(argparse.Namespace(device="cpu", vocalnet="tiny", quick=True), tmp_path)
    assert Path(result["json"]).is_file() and result["shapes"] == "tiny"
    assert result["first_pcm_ms"]["eager"] > 0 and result["first_pcm_ms"]["graphs"] is None
    assert result["paper_first_pcm_ms"] == 320


def test_reply_constants_match_the_recipe_and_the_prompt():
    """Chunk sizes are the manifest's speech.txt_token_num / speech_token_num
    (edgevoice/recipes/vocalnet/recipe.py ``package_config``); the template rows are those of
    edgevoice/models/vocalnet/prompt.py ``llama3_prompt_ids`` on the fixture's Llama-3 tokenizer."""
    import vocalnet_gpu_bench as bench
    from vocalnet_gpu_bench_parts import LLAMA3_TEMPLATE_ROWS

    from edgevoice.models.vocalnet.prompt import SPEECH_PLACEHOLDER, llama3_prompt_ids
    from edgevoice.recipes.vocalnet.recipe import package_config
    from edgevoice.recipes.vocalnet.tiny import TINY_LIMITS, TinyDims, random_parts

    speech = package_config(random_parts(TinyDims(), TINY_LIMITS, seed=0), TINY_LIMITS, [])["speech"]
    assert (bench.TEXT_ROWS_PER_CHUNK, bench.UNITS_PER_CHUNK) == (speech["txt_token_num"], speech["speech_token_num"])
    ids = llama3_prompt_ids(SHARED_FIXTURES / "vocalnet_small" / "checkpoints" / "VocalNet-1B" / "tokenizer.json")
    assert LLAMA3_TEMPLATE_ROWS == len(ids) - 1 and int((ids == SPEECH_PLACEHOLDER).sum()) == 1


def test_published_shapes_come_from_the_recipe():
    from vocalnet_gpu_bench import geometry_for
    from vocalnet_gpu_bench_parts import shape_set

    from edgevoice.models.vocalnet.flow import FlowConfig
    from edgevoice.models.vocalnet.hift import HiftConfig
    from edgevoice.recipes.vocalnet.published import LLMS, WHISPER_LARGE_V3
    from edgevoice.recipes.vocalnet.recipe import VocalNetLimits

    shapes, limits = shape_set("1b"), VocalNetLimits()
    assert shapes.llm == replace(LLMS["VocalNet-1B"], max_context=limits.max_context,
                                 prefill_max_tokens=limits.prefill_max_tokens)
    assert shapes.whisper == WHISPER_LARGE_V3 and (shapes.projector_k, shapes.projector_inner) == (5, 2048)
    assert shapes.decoder.width == 2048 and shapes.decoder.heads_per_step == 3
    assert shapes.flow == FlowConfig() and shapes.hift == HiftConfig()
    geometry = geometry_for(shapes, 3.0)
    assert geometry.speech_rows == 30 and geometry.prompt_rows == 102  # 3 s at 10 rows/s + the template


@pytest.fixture(scope="module")
def tiny_shapes():
    from vocalnet_gpu_bench_parts import shape_set

    return shape_set("tiny")


@torch.inference_mode()
def test_bound_llm_steps_choose_what_one_full_pass_would(tiny_shapes):
    """Prefill chunks + decode steps over static tensors (caches written back in place) pick the
    greedy tokens of one full-sequence pass (edgevoice/models/llm.py ``LlmModel.run``)."""
    from vocalnet_gpu_bench import geometry_for
    from vocalnet_gpu_bench_parts import LlmPart, build_part

    views = build_part(tiny_shapes, "llm", torch.device("cpu"), torch.float32)
    part = LlmPart(views, geometry_for(tiny_shapes, 3.0), torch.Generator().manual_seed(1))
    assert len(part.chunks) == 2  # 102 rows in prefill chunks of 64: the second call continues the cache
    stages, _ = part.benches(graphs=False)
    (first_token, reset), (rest, _) = stages["first_text_token"], stages["first_chunk_llm"]
    reset()
    chosen = [first_token(), *rest()]
    llm = views["decode"].llm
    sequence = torch.cat([part.prompt, llm.model.embed_tokens(torch.tensor([chosen[:-1]]))], dim=1)
    caches = llm.empty_cache(1, capacity=sequence.shape[1])
    hidden, _ = llm.run(sequence, torch.zeros(1, dtype=torch.long), caches)
    greedy = llm.logits(hidden[0, part.prompt.shape[1] - 1:]).argmax(-1)
    assert len(chosen) == 5 and chosen == greedy.tolist()


class _TorchDecoderGraphs:
    """The decoder views behind the runtime's MtpDecoderGraphs protocol (numpy in and out)."""

    def __init__(self, views: dict):
        self.text_view, self.units_view = views["speech_text"], views["speech_units"]
        self.state = tuple(s.zeros(1) for s in self.text_view.state_specs())
        self.logits: list[np.ndarray] = []  # (N, V) per cycle

    def text(self, rows, prenn_len, text_len):
        self.state = self.text_view.step(torch.from_numpy(rows)[None], torch.tensor([prenn_len]),
                                         torch.tensor([text_len]), *self.state)

    def units(self, tokens, text_len, speech_len):
        logits, *self.state = self.units_view.step(torch.tensor([list(tokens)]), torch.tensor([text_len]),
                                                   torch.tensor([list(speech_len)]), *self.state)
        self.logits.append(logits[0].numpy())
        return self.logits[-1]


@torch.inference_mode()
def test_bound_decoder_chunk_gives_the_runtimes_units(tiny_shapes):
    """The first decoder chunk over static tensors (lengths advanced on the device) yields the units
    of edgevoice/runtime/vocalnet/speech_tokens.py ``StreamingUnits`` (greedy, penalty off) on the
    same module and rows: same cycles, same positions."""
    from vocalnet_gpu_bench import geometry_for
    from vocalnet_gpu_bench_parts import DecoderPart, build_part

    from edgevoice.runtime.vocalnet.speech_tokens import MtpRule, StreamingUnits

    views = build_part(tiny_shapes, "decoder", torch.device("cpu"), torch.float32)
    part = DecoderPart(views, geometry_for(tiny_shapes, 3.0), torch.Generator().manual_seed(2))
    stages, _ = part.benches(graphs=False)
    first_chunk, reset = stages["first_chunk_decoder"]
    seen, choose = [], part._choose
    part._choose = lambda logits: seen.append(logits[0].numpy().copy()) or choose(logits)  # what the host read
    reset()
    bound = first_chunk()
    config = tiny_shapes.decoder
    rule = MtpRule.streaming(config.sos_id, config.eos_id, config.heads_per_step, penalty_window=0,
                             max_tokens=config.max_speech_rows - config.heads_per_step)
    graphs = _TorchDecoderGraphs(views)
    expected = StreamingUnits(graphs, rule)(np.asarray(part.rows[0]), last=False)
    assert config.eos_id not in expected  # random weights: the runtime would have stopped early otherwise
    assert len(bound) == 15 and bound == expected and part.calls == 5
    # Random weights barely let the text rows move the argmax: the logits show a wrong position or mask.
    assert len(seen) == len(graphs.logits) == 5
    for ours, runtime in zip(seen, graphs.logits):
        np.testing.assert_allclose(ours, runtime, rtol=0, atol=1e-5)
