"""The freeze-omni and tiny recipes without exporting: config, tokenizer, full-size shapes, memory budget, converter errors.

The budget runs on meta tensors (published Freeze-Omni: Qwen2-7B), so these checks take seconds.
Converter errors go through the real command line: one line naming the tensor, exit code 1.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys

import pytest
import torch
from edgevoice.export.budget import check_memory, memory_budget
from freeze_omni_sets import fixture_set_params, require_set

from edgevoice.errors import EdgevoiceError
from edgevoice.recipes import RECIPES, load_recipe
from edgevoice.recipes.freeze_omni.recipe import PIPELINE, TINY, full_size, llm_shapes, speech_configs
from edgevoice.recipes.freeze_omni.speech import TINY_SPEECH, random_speech
from edgevoice.recipes.tiny import byte_tokenizer_json

# Qwen2-7B-Instruct's config.json, the LLM of the published Freeze-Omni (shapes only; no weights anywhere).
QWEN2_7B = {"model_type": "qwen2", "hidden_size": 3584, "num_attention_heads": 28, "num_key_value_heads": 4,
            "num_hidden_layers": 28, "intermediate_size": 18944, "vocab_size": 152064, "rope_theta": 1000000.0,
            "rms_norm_eps": 1e-6, "tie_word_embeddings": False, "use_sliding_window": False}
GB = 1e9


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgevoice.cli.main", *args], capture_output=True, text=True, timeout=300)


STAGE_LINE = re.compile(r"^\d\d:\d\d:\d\d \+\d+\.\ds \S")  # export's progress when stderr is no terminal


def one_line_error(result: subprocess.CompletedProcess) -> str:
    """The one error line, last on stderr; anything before it must be a timestamped stage line."""
    assert result.returncode == 1, result.stderr + result.stdout
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr and lines and lines[-1].startswith("error: "), result.stderr
    assert all(STAGE_LINE.match(line) for line in lines[:-1]), result.stderr
    return lines[-1]


@pytest.fixture(scope="module")
def tiny():
    return load_recipe("tiny")


@pytest.fixture(scope="module")
def full():
    return full_size(device="meta")


def test_both_recipes_are_registered():
    assert {"freeze-omni", "tiny"} <= set(RECIPES)
    with pytest.raises(EdgevoiceError, match="--weights CHECKPOINTS_DIR"):
        load_recipe("freeze-omni")


def test_tiny_components_and_config(tiny):
    assert [c.name for c in tiny.components] == ["vad", *PIPELINE]  # Silero VAD first: the gate
    config = tiny.config
    assert config["pipeline"] == ["vad", *PIPELINE]
    assert (config["input_sample_rate"], config["output_sample_rate"], config["chunk_samples"]) == (16000, 24000, 2560)
    speech, llm = config["speech"], config["llm"]
    assert speech["width"] * speech["rows_per_hidden"] == llm["hidden"] == TINY.listen.llm.hidden
    assert (speech["bos_id"], speech["sos_id"], speech["eos_id"], speech["pad_id"]) == tuple(speech["odim"] + i for i in range(4))
    assert config["codec"]["fifo"]["hop"] == config["codec"]["hop"] == 600
    assert config["codec"]["max_tokens"] >= 2 * config["codec"]["fifo"]["padding"] + config["codec"]["fifo"]["chunk"]
    assert config["turn_state"] == {"threshold": 0.5, "classes": ["cl", "ss", "el"], "head_outputs": 4}
    listen = next(c for c in tiny.components if c.name == "fo_llm_listen")
    assert set(listen.files) == {config["tokenizer"], config["prompt"]["embeddings_file"], llm["embed_tokens"]}
    for path in listen.files.values():
        assert path.is_file()


def test_tiny_tokenizer_is_byte_level_and_makes_the_prompt_ids(tiny):
    from tokenizers import Tokenizer

    tokenizer = Tokenizer.from_str(byte_tokenizer_json())
    text = "Hé, 12 ü!"
    assert tokenizer.encode(text, add_special_tokens=False).ids == list(text.encode())
    prompt = tiny.config["prompt"]
    assert tokenizer.id_to_token(prompt["eod_id"]) == "<|im_end|>"
    assert tokenizer.decode(prompt["turn_prefix_ids"], skip_special_tokens=False) == "<|im_end|>\n<|im_start|>user\n"
    assert tokenizer.decode(prompt["response_prefix_ids"], skip_special_tokens=False) == "<|im_end|>\n<|im_start|>assistant\n"
    assert tokenizer.decode(prompt["system_prompt_ids"], skip_special_tokens=False) == "<|im_start|>system\n" + prompt["system_role"]
    assert max(prompt["system_prompt_ids"] + prompt["turn_prefix_ids"]) < tiny.config["llm"]["vocab_size"]


@pytest.mark.parametrize("fixture", fixture_set_params())
def test_fixture_recipe_carries_the_reference_prompt_and_codec(fixture):
    root = require_set(fixture)
    meta = json.loads((root / "golden" / "meta.json").read_text())
    recipe = load_recipe("freeze-omni", weights=root / "checkpoints", llm=root / "llm")
    prompt = recipe.config["prompt"]
    assert prompt["eod_id"] == meta["prompt"]["eod_id"]
    assert prompt["system_prompt_ids"] == meta["prompt"]["system_role_ids"]
    turn = next(v for k, v in meta["prompt"].items() if k.startswith("turn_prefix_ids"))
    response = next(v for k, v in meta["prompt"].items() if k.startswith("response_suffix_ids"))
    assert (prompt["turn_prefix_ids"], prompt["response_prefix_ids"]) == (turn, response)
    assert recipe.config["codec"]["global_tokens"] == meta["codec"]["global_tokens"]
    assert recipe.config["checkpoint"]["weights"] == str((root / "checkpoints").resolve())
    assert recipe.config["llm"]["hidden"] == recipe.config["speech"]["width"] * recipe.config["speech"]["rows_per_hidden"]


def test_weights_stamp_changes_with_a_file(tmp_path):
    import os

    from edgevoice.recipes.freeze_omni.recipe import weights_stamp

    (tmp_path / "a").mkdir()
    (tmp_path / "a" / "final.pt").write_bytes(b"12")
    before = weights_stamp(tmp_path / "a")
    assert weights_stamp(tmp_path / "a") == before
    os.utime(tmp_path / "a" / "final.pt", ns=(1, 1))
    assert weights_stamp(tmp_path / "a") != before


def test_speech_shapes_match_random_speech():
    decoder, codec = speech_configs(TINY.speech, TINY.limits)
    generated = random_speech(TINY_SPEECH, **TINY.limits.__dict__)
    assert (decoder, codec) == (generated.decoder_config, generated.codec_config)


def test_full_shapes_are_meta_and_published_size(full):
    listen = next(c for c in full.components if c.name == "fo_llm_listen")
    assert all(p.is_meta for c in full.components for p in c.module.parameters())
    assert full.config["llm"]["hidden"] == 3584 and full.config["speech"]["width"] * 4 == 3584
    # Qwen2-7B is 7.62 B parameters; the listen graph has all but the 0.545 B of its input table.
    llm_params = sum(p.numel() for p in listen.module.parameters())
    assert 7.0e9 < llm_params < 7.1e9


def test_budget_refuses_full_size_on_orin_nano_and_names_what_fits(full):
    with pytest.raises(EdgevoiceError) as refused:
        check_memory(full.components, "jetson-orin-nano", "fp16", "freeze-omni")
    message = str(refused.value)
    assert "does not fit jetson-orin-nano" in message and "shared with the CPU" in message
    assert "h100 (fp16)" in message and "jetson-orin-agx (fp16)" in message and "jetson-orin-nx" not in message.split("fit:")[1]
    budget = memory_budget(full.components, "jetson-orin-nano", "fp16")
    assert 15 * GB < budget.weight_bytes < 16 * GB  # 7.7 B parameters at 2 bytes
    assert budget.reserved_bytes > 0 and budget.runtime_bytes >= 0.9 * GB  # the OS share and the host process count


def test_budget_accepts_full_size_on_h100_and_points_a_24_gb_card_to_fp16(full):
    h100 = check_memory(full.components, "h100", "fp16", "freeze-omni")
    assert h100.fits and h100.needed_bytes < h100.available_bytes
    assert not any(c.state_bytes for c in h100.components if c.name in ("speech_text", "speech_token"))  # one shared state set
    with pytest.raises(EdgevoiceError, match="export with --precision fp16"):
        check_memory(full.components, "rtx-4090", "fp32", "freeze-omni")


def test_llm_shapes_from_config_json_alone(tmp_path):
    (tmp_path / "config.json").write_text(json.dumps(QWEN2_7B))
    budget = memory_budget(llm_shapes(tmp_path), "h100", "fp16")
    assert 14.0 * GB < budget.weight_bytes < 14.3 * GB  # all of Qwen2-7B but its input table
    with pytest.raises(EdgevoiceError, match="no config.json"):
        llm_shapes(tmp_path / "missing")


def test_cli_refuses_a_7b_llm_on_orin_nano_before_loading(tmp_path):
    fixture = require_set(fixture_set_params()[0].values[0])
    llm = tmp_path / "qwen2-7b"
    llm.mkdir()
    (llm / "config.json").write_text(json.dumps(QWEN2_7B))  # no weights: the check must come first
    line = one_line_error(run_cli("export", "--model", "freeze-omni", "--weights", str(fixture / "checkpoints"),
                                  "--llm", str(llm), "--target", "jetson-orin-nano", "--precision", "fp16",
                                  "--out", str(tmp_path / "out")))
    assert "does not fit jetson-orin-nano" in line and "targets that fit" in line and "h100" in line


def _broken_checkpoints(fixture, tmp_path, part: str, change) -> str:
    folder = tmp_path / "checkpoints"
    shutil.copytree(fixture / "checkpoints", folder, ignore=shutil.ignore_patterns("codec"))
    (folder / "codec").symlink_to(fixture / "checkpoints" / "codec")
    path = folder / part / "final.pt"
    state = torch.load(path, weights_only=True)
    change(state["model"] if "model" in state else state)
    torch.save(state, path)
    return str(folder)


def _drop(key):
    return lambda state: state.pop(key)


def _add(key):
    return lambda state: state.__setitem__(key, torch.zeros(3))


def _reshape(key):
    return lambda state: state.__setitem__(key, torch.zeros(state[key].numel() + 1))


def test_cli_names_a_missing_tensor_in_one_line(tmp_path):
    fixture = require_set(fixture_set_params()[0].values[0])
    weights = _broken_checkpoints(fixture, tmp_path, "audiollm", _drop("adpter.project.bias"))
    line = one_line_error(run_cli("export", "--model", "freeze-omni", "--weights", weights, "--llm", str(fixture / "llm"),
                                  "--target", "cpu", "--out", str(tmp_path / "out")))
    assert "missing adpter.project.bias" in line and "audiollm/final.pt" in line


@pytest.mark.parametrize("change,key,words", [
    (_add, "layers.0.self_attn.extra_bias", "unexpected"),
    (_reshape, "norm.weight", "has shape (33,), expected (32,)"),
], ids=["extra", "mis-shaped"])
def test_export_names_an_extra_or_mis_shaped_tensor(tmp_path, change, key, words):
    from edgevoice.export import export_package

    fixture = require_set(fixture_set_params()[0].values[0])
    weights = _broken_checkpoints(fixture, tmp_path, "decoder", change(key))
    with pytest.raises(EdgevoiceError) as refused:
        export_package("freeze-omni", "cpu", tmp_path / "out", weights=weights, llm=fixture / "llm")
    message = str(refused.value)
    assert key in message and words in message and "decoder/final.pt" in message
    assert not (tmp_path / "out" / "manifest.json").exists()
