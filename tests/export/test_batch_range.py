"""The batch range per target: the sessions its memory holds, the engines' profiles and the manifest.

Measured on the tiny recipe's components (seeded weights; their sizes, not their values, matter) and
on Silero VAD exported for the Orin AGX, against the cpu, jetson-orin-nano and h100 profiles in hw/.
"""

from __future__ import annotations

import dataclasses
import re

import pytest
from edgevoice.export import build as build_module
from edgevoice.export import export_package
from edgevoice.export.budget import (
    GB,
    budget_for,
    budget_lines,
    measure,
    memory_budget,
    package_batch_range,
)
from edgevoice.export.build_script import BUILD_SCRIPT, write_build_script

from edgevoice.manifest import read_manifest, write_manifest
from edgevoice.recipes import load_recipe
from edgevoice.targets import TargetProfile, load_target

TARGETS = ("cpu", "jetson-orin-nano", "h100")


@pytest.fixture(scope="module")
def tiny_components():
    return load_recipe("tiny").components


def with_memory(target: TargetProfile, memory_gb: float, max_batch: int | None = None) -> TargetProfile:
    """``target`` with another memory size (and cap), everything else as hw/ says."""
    build = target.build if max_batch is None else dataclasses.replace(target.build, max_batch=max_batch)
    return dataclasses.replace(target, memory_gb=memory_gb, build=build)


@pytest.mark.parametrize("name", TARGETS)
def test_max_batch_sessions_fit_the_budget_and_one_more_would_not(tiny_components, name):
    """Uncapped, the range ends exactly where ``memory_budget`` at that many sessions stops fitting."""
    real = load_target(name)
    precision = real.default_precision
    one = memory_budget(tiny_components, real, precision).batch_range()
    assert 1 <= one.max_batch <= real.build.max_batch
    assert memory_budget(tiny_components, real, precision, sessions=one.max_batch).fits
    # A target just big enough for the weights and about 2.5 sessions, with no cap: memory decides.
    base = memory_budget(tiny_components, with_memory(real, 0.0), precision)
    room = base.weight_bytes + base.workspace_bytes + base.runtime_bytes + base.reserved_bytes + 2.5 * one.per_session_bytes
    tight = with_memory(real, room / GB, max_batch=1000)
    held = memory_budget(tiny_components, tight, precision).batch_range()
    assert (held.sessions_held, held.max_batch, held.limited_by) == (2, 2, "memory")
    assert memory_budget(tiny_components, tight, precision, sessions=2).fits
    assert not memory_budget(tiny_components, tight, precision, sessions=3).fits


@pytest.mark.parametrize("name", TARGETS)
def test_more_memory_never_holds_fewer_sessions(tiny_components, name):
    real = load_target(name)
    measured = measure(tiny_components, real.default_precision)  # once: only the target changes below
    floor = budget_for(measured, with_memory(real, 0.0), real.default_precision)
    start = (floor.needed_bytes - floor.state_bytes - floor.io_bytes + floor.reserved_bytes) / GB
    held = [budget_for(measured, with_memory(real, start + 0.01 * step, max_batch=10**6),
                       real.default_precision).batch_range().sessions_held for step in range(12)]
    assert held == sorted(held) and held[-1] > held[0], held


def test_the_package_count_agrees_with_the_torch_budget(tiny_components, tiny_package):
    """build.sh and `edgevoice build` count from the package's files; the export counts torch modules."""
    for name in TARGETS:
        target = load_target(name)
        from_files = package_batch_range(tiny_package.directory, tiny_package.components, target)
        from_torch = memory_budget(tiny_components, target, "fp32").batch_range()
        assert from_files.per_session_bytes == pytest.approx(from_torch.per_session_bytes, rel=0.02)
        assert abs(from_files.sessions_held - from_torch.sessions_held) <= 0.02 * from_torch.sessions_held
        assert from_files.max_batch == from_torch.max_batch == target.build.max_batch  # the cap, here


@pytest.fixture()
def agx_vad(tmp_path):
    """Silero VAD exported for the Orin AGX (max_batch 4), its target's memory shrunk to hold two sessions."""
    manifest = export_package(model="silero-vad", target="jetson-orin-agx", out=tmp_path / "vad")
    real = TargetProfile.from_dict(manifest.target)
    per_session = package_batch_range(manifest.directory, manifest.components, real).per_session_bytes
    free_for_nothing = package_batch_range(manifest.directory, manifest.components, with_memory(real, 0.0)).free_bytes
    small = with_memory(real, (2.5 * per_session - free_for_nothing) / GB)
    write_manifest(dataclasses.replace(manifest, target=small.to_dict()))
    return read_manifest(manifest.directory), small


def test_export_records_the_range_and_its_summary_prints_it(agx_vad):
    """The export's budget (torch modules, the real Orin AGX) records the range; the table shows it."""
    manifest, _ = agx_vad
    budget = manifest.config["memory_budget"]
    held = budget["batch_range"]
    assert held["sessions_held"] > held["max"] == 4 and held["limited_by"] == "the profile's max_batch"
    rows = budget_lines(budget)
    assert rows[-1][0] == f"holds {held['sessions_held']} sessions at once" and rows[-1][1].startswith("batch 1..4")


def test_build_sh_profiles_carry_the_range(agx_vad):
    manifest, small = agx_vad
    exported = manifest.component("vad").dynamic_dims["batch"]
    assert exported.max == small.build.max_batch == 4  # export wrote the profile's cap
    write_build_script(manifest.directory, manifest.components, small)
    script = (manifest.directory / BUILD_SCRIPT).read_text()
    assert "holds 2 sessions at once" in script
    assert re.search(r"--minShapes=chunk:1x512,", script) and re.search(r"--maxShapes=chunk:2x512,", script)
    assert "lstm:2x2x128" in script  # the state's batch dim is its second


def test_build_profiles_and_manifest_carry_the_range(agx_vad, monkeypatch):
    manifest, _ = agx_vad
    specs = []

    def fake_build(spec):
        specs.append(spec)
        spec.engine_path.write_bytes(b"engine")
        spec.timing_cache_path.write_bytes(b"cache")
        return {"tensorrt_version": "10.3.0", "compute_capability": "8.7", "device_name": "Orin"}

    monkeypatch.setattr(build_module, "require_tensorrt_and_gpu", lambda: None)
    monkeypatch.setattr(build_module, "build_engine", fake_build)
    said = []
    built = build_module.build_package(manifest.directory, progress=said.append)
    (spec,) = specs
    assert spec.profiles[0]["chunk"] == ((1, 512), (1, 512), (2, 512))
    assert spec.profiles[0]["lstm"] == ((2, 1, 128), (2, 1, 128), (2, 2, 128))
    vad = built.component("vad")
    assert (vad.dynamic_dims["batch"].min, vad.dynamic_dims["batch"].max) == (1, 2)
    assert vad.engine.build_flags["batch"] == [1, 1, 2] and built.sessions_held == 2
    assert said[0].startswith("jetson-orin-agx holds 2 sessions at once")


def test_a_growing_kv_cache_is_budgeted_at_its_largest_capacity():
    # The session grows the cache up to max_context rows: memory must hold that, not the first step.
    from edgevoice.models.llm import LlmConfig, LlmModel, LlmStep
    from edgevoice.recipes.base import RecipeComponent

    model = LlmModel(LlmConfig(vocab_size=64, hidden=32, layers=2, heads=4, kv_heads=2, head_dim=8, ffn=48,
                               max_context=64, prefill_max_tokens=8))
    fixed, growing = (RecipeComponent(name, LlmStep(model, tokens=None, cache_step=step), {}, "test")
                      for name, step in (("fixed", 0), ("growing", 16)))
    by_name = {m.name: m for m in measure([fixed, growing], "fp32", sessions=2)}
    two_sessions_full = 2 * (2 * 2) * (2 * 2 * 64 * 8 * 4)  # ping-pong x (k, v per layer) x (2 sessions, kv, rows, dim, fp32)
    assert by_name["growing"].state_bytes == by_name["fixed"].state_bytes == two_sessions_full
    assert by_name["growing"].io_bytes == by_name["fixed"].io_bytes > 0
