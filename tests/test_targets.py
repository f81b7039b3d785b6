"""Target profiles in hw/*.json and their reader, edgevoice.targets."""

from __future__ import annotations

import json

import pytest

from edgevoice import targets
from edgevoice.errors import EdgevoiceError
from edgevoice.targets import TargetProfile, check_precision, list_targets, load_target

EXPECTED = [
    "cpu",
    "h100",
    "jetson-orin-agx",
    "jetson-orin-nano",
    "jetson-orin-nx",
    "rtx-3090",
    "rtx-4090",
]
JETSONS = ["jetson-orin-nano", "jetson-orin-nx", "jetson-orin-agx"]


def test_list_targets_is_sorted_and_excludes_aliases():
    assert list_targets() == EXPECTED


def test_hw_dir_holds_the_profiles():
    assert (targets.hw_dir() / "aliases.json").is_file()


@pytest.mark.parametrize("name", EXPECTED)
def test_every_target_loads_and_round_trips(name):
    profile = load_target(name)
    assert profile.name == name
    assert profile.supports(profile.default_precision)
    assert TargetProfile.from_dict(profile.to_dict()) == profile
    # the data is valid JSON as written by to_dict
    json.dumps(profile.to_dict())


def test_alias_resolves_to_agx():
    assert load_target("jetson-orin") is load_target("jetson-orin-agx")


def test_unknown_target_lists_known_names():
    with pytest.raises(EdgevoiceError) as err:
        load_target("jetson-thor")
    message = str(err.value)
    assert "unknown target 'jetson-thor'" in message
    assert "known targets: " + ", ".join(EXPECTED) in message
    assert "jetson-orin -> jetson-orin-agx" in message


def test_fp8_only_on_ada_and_hopper():
    with_fp8 = [n for n in EXPECTED if load_target(n).supports("fp8")]
    assert with_fp8 == ["h100", "rtx-4090"]


@pytest.mark.parametrize("name", JETSONS)
def test_jetson_profiles(name):
    profile = load_target(name)
    assert profile.kind == "jetson" and profile.is_gpu
    assert profile.tensorrt_version == "10.3"
    assert profile.memory_shared_with_cpu
    assert profile.compute_capability == "8.7"
    assert "bf16" in profile.precisions


def test_dla_cores():
    assert load_target("jetson-orin-nano").dla_cores == 0
    assert load_target("jetson-orin-nx").dla_cores == 2
    assert load_target("jetson-orin-agx").dla_cores == 2


def test_cpu_profile():
    cpu = load_target("cpu")
    assert not cpu.is_gpu
    assert cpu.compute_capability is None and cpu.tensorrt_version is None
    assert cpu.precisions == ("fp32", "int8")
    assert cpu.default_precision == "fp32"


def test_check_precision():
    check_precision("rtx-4090", "fp8")
    check_precision(load_target("jetson-orin-nano"), "fp16")
    with pytest.raises(EdgevoiceError, match=r"does not support precision 'fp8'; supported: fp32, fp16, bf16, int8"):
        check_precision("jetson-orin", "fp8")
    with pytest.raises(EdgevoiceError, match="'bf16'"):
        check_precision("cpu", "bf16")


def _write_profile(directory, stem, **changes):
    """Write a valid profile (a copy of rtx-3090) as <stem>.json, with `changes` applied on top."""
    data = load_target("rtx-3090").to_dict()
    data["name"] = stem
    data.update(changes)
    path = directory / f"{stem}.json"
    path.write_text(json.dumps(data))
    return path


def test_custom_directory(tmp_path):
    _write_profile(tmp_path, "mybox")
    (tmp_path / "aliases.json").write_text(json.dumps({"box": "mybox"}))
    assert list_targets(tmp_path) == ["mybox"]
    assert load_target("box", directory=tmp_path).name == "mybox"


def test_monkeypatched_hw_dir(tmp_path, monkeypatch):
    _write_profile(tmp_path, "mybox")
    monkeypatch.setattr(targets, "hw_dir", lambda: tmp_path)
    assert list_targets() == ["mybox"]
    assert load_target("mybox").name == "mybox"


@pytest.mark.parametrize(
    "changes, key",
    [
        ({"colour": "green"}, "colour"),
        ({"precisions": ["fp16", "fp64"]}, "precisions"),
        ({"memory_gb": "lots"}, "memory_gb"),
        ({"dla_cores": True}, "dla_cores"),
        ({"kind": "tpu"}, "kind"),
        ({"default_precision": "fp8"}, "default_precision"),
        ({"build": {"workspace_mb": 1, "max_batch": 1, "opt_batch": 1}}, "build.builder_optimization_level"),
        ({"name": "other"}, "name"),
    ],
)
def test_malformed_profile_names_file_and_key(tmp_path, changes, key):
    path = _write_profile(tmp_path, "broken", **changes)
    with pytest.raises(EdgevoiceError) as err:
        load_target("broken", directory=tmp_path)
    assert str(path) in str(err.value)
    assert f"'{key}'" in str(err.value)


def test_missing_key_names_file_and_key(tmp_path):
    path = _write_profile(tmp_path, "broken")
    data = json.loads(path.read_text())
    del data["tensorrt_version"]
    path.write_text(json.dumps(data))
    with pytest.raises(EdgevoiceError, match=r"broken\.json: missing key 'tensorrt_version'"):
        load_target("broken", directory=tmp_path)


def test_invalid_json_names_file(tmp_path):
    (tmp_path / "broken.json").write_text("{not json")
    with pytest.raises(EdgevoiceError, match=r"broken\.json is not valid JSON"):
        load_target("broken", directory=tmp_path)
