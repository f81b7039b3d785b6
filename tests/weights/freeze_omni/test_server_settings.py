"""checkpoints/server.json, read at export as bin/server.py reads it at start-up."""

from __future__ import annotations

import json
import shutil
from dataclasses import asdict

import pytest
from fo_fixtures import fixture_params, load_set

from edgevoice.errors import EdgevoiceError
from edgevoice.runtime.freeze_omni.speech_tokens import LivePlan
from edgevoice.weights.freeze_omni.server_settings import ServerSettings, read_server_settings

PUBLISHED = {"decoder_first_chunk_size": 20, "decoder_chunk_size": 40, "decoder_chunk_overlap_size": 10,
             "decoder_top_k": 2, "decoder_penalty_window_size": -1, "decoder_penalty": 1.1, "decoder_N": 2401,
             "decoder_seg_threshold_first_pack": 0.1, "decoder_seg_threshold": 0.015}


def write(folder, data) -> None:
    (folder / "server.json").write_text(json.dumps(data))


def test_published_values_become_the_live_plan(tmp_path):
    """bin/server.py ``decoder``: first segment chunk ``decoder_first_chunk_size`` and threshold
    ``decoder_seg_threshold_first_pack``, later ``decoder_chunk_size`` / ``decoder_seg_threshold``,
    overlap ``decoder_chunk_overlap_size``, window ``decoder_N``; first packet trimmed at 0.03."""
    write(tmp_path, PUBLISHED)
    settings = read_server_settings(tmp_path)
    assert asdict(settings) == PUBLISHED
    plan = LivePlan.from_config(settings.live_plan(hop=600))
    assert (plan.first.chunk, plan.first.padding, plan.first.quiet_threshold, plan.first.quiet_window) == (20, 10, 0.1, 2401)
    assert (plan.later.chunk, plan.later.padding, plan.later.quiet_threshold) == (40, 10, 0.015)
    assert plan.trim_level == 0.03 and plan.first.hop == 600


def test_missing_file_missing_keys_and_bad_values(tmp_path):
    assert read_server_settings(tmp_path) is None
    write(tmp_path, {"decoder_first_chunk_size": 16, "unrelated": "kept out"})
    assert read_server_settings(tmp_path) == ServerSettings(decoder_first_chunk_size=16)
    for bad in ({"decoder_chunk_size": "40"}, {"decoder_chunk_size": 40.5}, {"decoder_N": 0}, [1, 2]):
        write(tmp_path, bad)
        with pytest.raises(EdgevoiceError, match="server.json") as err:
            read_server_settings(tmp_path)
        assert "\n" not in str(err.value)
    (tmp_path / "server.json").write_text("{not json")
    with pytest.raises(EdgevoiceError, match="not valid JSON"):
        read_server_settings(tmp_path)


@pytest.fixture(params=fixture_params())
def fixture_root(request):
    return load_set(request.param).root


def test_export_exposes_server_json_in_the_manifest_config(fixture_root, tmp_path):
    """bin/server.py reads checkpoints/server.json; the package records its values and the plan;
    without the file the package keeps the offline settings of bin/inference.py."""
    from edgevoice.recipes import load_recipe

    checkpoints = tmp_path / "checkpoints"  # a copy: the test decides whether server.json is there
    shutil.copytree(fixture_root / "checkpoints", checkpoints, ignore=shutil.ignore_patterns("server.json"))
    plain = load_recipe("freeze-omni", weights=checkpoints, llm=fixture_root / "llm").config
    assert plain["server"] is None and plain["codec"]["live"] is None
    assert plain["codec"]["fifo"]["chunk"] == 40 and plain["codec"]["fifo"]["quiet_threshold"] == 0.01

    write(checkpoints, {**PUBLISHED, "decoder_top_k": 3})
    config = load_recipe("freeze-omni", weights=checkpoints, llm=fixture_root / "llm").config
    settings = read_server_settings(checkpoints)
    assert config["server"] == asdict(settings)
    assert config["codec"]["live"] == settings.live_plan(config["codec"]["hop"])
    assert config["speech"]["top_k"] == 3
    assert config["codec"]["fifo"] == plain["codec"]["fifo"]  # the offline FIFO stays recorded

    write(checkpoints, {**PUBLISHED, "decoder_chunk_size": 400})  # wider than the codec graph
    with pytest.raises(EdgevoiceError, match="codec windows of 420 tokens"):
        load_recipe("freeze-omni", weights=checkpoints, llm=fixture_root / "llm")
