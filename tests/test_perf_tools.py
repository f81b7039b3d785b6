"""edgevoice plan and bench on the CPU package, plan vs measured, and the GPU suite's CPU path."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys

import pytest

from edgevoice.bench import BenchConfig, run_bench
from edgevoice.plan import _evaluate_dim, plan_package
from edgevoice.targets import load_target

from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_plan_counts_the_llm_and_shares_jetson_memory(cascade_package):
    plan = plan_package(cascade_package, load_target("jetson-orin-nano"))
    decode, prefill = plan.component("llm:decode"), plan.component("llm:prefill")  # one graph, two profiles
    # SmolLM2-135M: ~2 FLOPs per weight per token plus attention over a 1024-token cache.
    assert 0.25e9 < decode.flops < 0.5e9 and not decode.flops_partial and decode.bound == "memory"
    assert decode.state_bytes == 30 * 2 * 3 * 1024 * 64 * 4
    assert decode.dims["tokens"] == 1 and prefill.dims["tokens"] == 16 and 10 * decode.flops < prefill.flops
    assert decode.param_bytes == prefill.param_bytes  # the same weights, planned once per role
    assert plan.component("tts").flops_partial  # data-dependent frame count: said, not guessed
    memory = plan.memory
    assert memory["shared_with_cpu"] and memory["available_bytes"] < 8e9 and memory["fits"]
    assert plan.turn["first_audio_s"] == pytest.approx(sum(plan.turn["stages_s"].values()))


def test_exported_dim_expressions_are_evaluated():
    # The LLM's tail_logits keep the last min(tokens, 8) positions; the exporter writes it with Max.
    tail = "Max(0, tokens - Max(0, tokens - 8))"
    assert [_evaluate_dim(tail, {"tokens": t}) for t in (1, 8, 16)] == [1, 8, 8]
    assert _evaluate_dim("3*tokens", {"tokens": 5}) == 15 and _evaluate_dim("Min(tokens, 4)", {"tokens": 9}) == 4
    assert _evaluate_dim("Max(tokens, cache)", {"tokens": 1}) is None  # an unknown dim stays unknown
    assert _evaluate_dim("Floor(tokens)", {"tokens": 2}) is None  # a function not understood is not guessed


def test_plan_is_a_lower_bound_of_measured_steps_on_this_cpu(cascade_package):
    names = ("vad", "asr_decoder", "llm")
    plan = plan_package(cascade_package, load_target("cpu"), components=names)
    result = run_bench(cascade_package, BenchConfig(steps=5, warmup=2, components=names, turn=False))
    planned = {"llm": "llm:prefill"}  # bench steps a component at its opt dims: the LLM's prefill profile
    for c in result["components"]:
        predicted_ms = plan.component(planned.get(c["name"], c["name"])).lower_bound_s * 1e3
        ratio = c["latency_ms"]["median"] / predicted_ms
        print(f"{c['name']}: measured {c['latency_ms']['median']:.3f} ms, predicted >= {predicted_ms:.3f} ms, ratio {ratio:.1f}")
        assert ratio > 1.0, f"{c['name']} ran faster than its roofline lower bound: the planner undercounts"


def run_cli(*args, cwd=REPO):
    return subprocess.run([sys.executable, "-m", "edgevoice.cli.main", *args], cwd=cwd, capture_output=True, text=True,
                          timeout=600, check=False)


def test_bench_json_record_and_turn(cascade_package, tmp_path):
    (tmp_path / "BENCHMARKS.md").write_text("# Benchmarks\n\nintro\n\n## 2026-01-01 — older entry\n")
    done = run_cli("bench", "--package", str(cascade_package.directory), "--component", "vad", "--steps", "3",
                   "--json", "--record", cwd=tmp_path)
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["schema"] == "edgevoice.bench/1" and result["backend"] == "ort"
    (vad,) = result["components"]
    assert vad["steps"] == 3 and vad["timer"] == "perf_counter" and 0 < vad["rtf"] < 1
    assert vad["latency_ms"]["median"] <= vad["latency_ms"]["p90"]
    turn = result["turn"]
    assert turn["error"] is None and "capital" in turn["transcript"].lower()
    assert 0 < turn["latency_s"]["asr"] < turn["latency_s"]["first_token"] < turn["latency_s"]["first_audio"]
    recorded = (tmp_path / "BENCHMARKS.md").read_text()
    assert recorded.index("`edgevoice bench` cascade, backend ort") < recorded.index("older entry")
    assert "| vad |" in recorded and "--record" in recorded


def test_bench_torch_backend_and_errors(cascade_package):
    result = run_bench(cascade_package, BenchConfig(backend="torch", steps=2, warmup=1, components=("vad", "tts")))
    vad, tts = result["components"]
    assert vad["error"] is None and vad["latency_ms"]["median"] > 0
    assert "imported graph" in tts["error"]
    assert "engines only" in result["turn"]["error"]
    done = run_cli("bench", "--package", str(cascade_package.directory), "--backend", "tvm")
    assert done.returncode == 1 and "choose one of: ort, trt, torch" in done.stderr


def test_plan_cli_json(cascade_package):
    done = run_cli("plan", "--package", str(cascade_package.directory), "--target", "h100", "--json")
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert plan["schema"] == "edgevoice.plan/1" and plan["target"] == "h100"
    # one plan per component, per optimization profile where it has several (llm:prefill, llm:decode)
    assert {c["name"].split(":")[0] for c in plan["components"]} == set(cascade_package.components)
    assert {"llm:prefill", "llm:decode"} <= {c["name"] for c in plan["components"]}


def load_gpu_suite():
    spec = importlib.util.spec_from_file_location("gpu_suite", REPO / "benchmarks" / "gpu_suite.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gpu_suite_cpu_path(cascade_package, tmp_path):
    suite = load_gpu_suite()
    out = tmp_path / "suite.json"
    suite.main(["--package", str(cascade_package.directory), "--device", "cpu", "--quick",
                "--component", "vad", "--component", "tts", "--out", str(out)])
    report = json.loads(out.read_text())
    vad = report["components"]["vad"]
    assert vad["parity"]["graphs_off"]["ok"] and vad["parity"]["graphs_on"]["ok"]
    assert vad["latency"]["eager"]["timer"] == "perf_counter"
    assert report["plan"]["components"]["vad"]["measured_over_predicted"] > 1
    assert "imported graph" in report["components"]["tts"]["module"]["error"]  # recorded, the rest ran


def test_gpu_suite_random_source(tmp_path):
    suite = load_gpu_suite()
    out = tmp_path / "suite.json"
    report = suite.main(["--source", "random", "--device", "cpu", "--quick", "--component", "vad", "--out", str(out)])
    assert report["components"]["vad"]["parity"]["graphs_on"]["ok"], report["components"]["vad"]
    assert "error" not in report["plan"]
