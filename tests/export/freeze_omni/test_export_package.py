"""freeze-omni and tiny exported end to end: every graph, the TensorRT 10.3 check, the manifest config the glue reads.

One tiny package (through the command line, as CI does) and one package per fixture set (with
--verify) are exported per module and shared by the tests. The graphs are then driven with
numpy + onnxruntime from the manifest alone, the way the run-time glue will: token ids become
rows of the shipped table, the prompt rows come from the shipped .npy, sizes from the config.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys

import numpy as np
import onnx
import pytest
from edgevoice.export import export_package
from edgevoice.export.budget import measure
from freeze_omni_sets import fixture_set_params, require_set
from safetensors.numpy import load_file

from edgevoice.backends.ort import OrtRunner
from edgevoice.manifest import read_manifest
from edgevoice.recipes import load_recipe
from edgevoice.recipes.freeze_omni.recipe import PIPELINE

REL_TOL = 1e-4  # of max |golden|: float32 graphs vs the float32 reference (see test_export_listen.py)


def run_cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "edgevoice.cli.main", *args], capture_output=True, text=True, timeout=600)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("tiny") / "engines"
    result = run_cli("export", "--model", "tiny", "--target", "cpu", "--out", str(out))
    assert result.returncode == 0, result.stderr
    return read_manifest(out), result.stdout


@pytest.fixture(scope="module", params=fixture_set_params())
def published(request, tmp_path_factory):
    root = require_set(request.param)
    out = tmp_path_factory.mktemp("freeze-omni")
    manifest = export_package("freeze-omni", "cpu", out, verify=True, weights=root / "checkpoints", llm=root / "llm")
    return root, manifest


class Graphs:
    """The package's graphs on onnxruntime, each keeping its state like the host does."""

    def __init__(self, manifest):
        self.manifest = manifest
        self.runners = {name: OrtRunner(manifest.component(name), manifest.path(f"{name}.onnx"), threads=2)
                        for name in manifest.config["pipeline"]}
        self.state = {name: runner.initial_state(1) for name, runner in self.runners.items()}
        config = manifest.config
        self.table = np.load(manifest.path(config["llm"]["embed_tokens"]), mmap_mode="r")
        self.prompt = np.load(manifest.path(config["prompt"]["embeddings_file"]))
        self.position = 0

    def __call__(self, name: str, state_of: str | None = None, **feeds: np.ndarray) -> dict[str, np.ndarray]:
        owner = state_of or name
        outputs = self.runners[name].infer({**feeds, **self.state[owner]})
        wiring = self.runners[name].component.state
        self.state[owner] = {wiring[k]: outputs.pop(k) for k in list(outputs) if k in wiring}
        return outputs

    def rows(self, ids) -> np.ndarray:
        return np.asarray(self.table[np.asarray(ids)], dtype=np.float32)

    def llm(self, rows: np.ndarray) -> dict[str, np.ndarray]:
        out = self("fo_llm_listen", input_embeds=rows[None], position=np.array([self.position], dtype=np.int64))
        self.position += rows.shape[0]
        return out


def initializer_bytes(path) -> int:
    model = onnx.load(str(path))
    return sum(math.prod(t.dims) * onnx.helper.tensor_dtype_to_np_dtype(t.data_type).itemsize for t in model.graph.initializer)


# --- tiny ------------------------------------------------------------------------------------


def test_tiny_package_has_every_graph_checked_for_tensorrt_10_3(tiny):
    manifest, stdout = tiny
    assert manifest.recipe == "tiny" and set(manifest.components) == {"vad", *PIPELINE}  # Silero gates the LLM
    for component in manifest.components.values():
        assert ": OK" in component.trt_check["10.3"], f"{component.name}: {component.trt_check}"
    shipped = set(manifest.component("fo_llm_listen").files)
    config = manifest.config
    assert shipped == {config["tokenizer"], config["prompt"]["embeddings_file"], config["llm"]["embed_tokens"]}
    assert config["memory_budget"]["fits"] and "memory budget on cpu at fp32" in stdout


def test_inspect_reads_the_tiny_package(tiny):
    manifest, _ = tiny
    result = run_cli("inspect", str(manifest.directory), "--json")
    assert result.returncode == 0, result.stderr
    described = json.loads(result.stdout)
    assert described["recipe"] == "tiny" and set(described["components"]) == {"vad", *PIPELINE}


def test_budget_weights_match_the_graphs_initializers(tiny):
    manifest, _ = tiny
    budget = {m.name: m.weight_bytes for m in measure(load_recipe("tiny").components, "fp32")}
    graphs = {name: initializer_bytes(manifest.path(f"{name}.onnx")) for name in manifest.components}
    # Per graph the counts differ a little: the exporter drops what no output needs (the prefix graph
    # keeps only the prefix stacks' keys and values) and folds rotary tables into constants.
    for name in PIPELINE:
        assert 0.75 * graphs[name] <= budget[name] <= 1.4 * graphs[name], (name, budget[name], graphs[name])
    assert abs(sum(budget.values()) - sum(graphs.values())) <= 0.05 * sum(graphs.values())


def test_config_drives_every_graph_from_numpy(tiny):
    manifest, _ = tiny
    config, graphs = manifest.config, Graphs(manifest)
    graphs.llm(graphs.rows(config["prompt"]["system_prompt_ids"]))
    audio = np.random.default_rng(0).standard_normal((1, config["chunk_samples"])).astype(np.float32) * 0.1
    feats = graphs("fo_frontend", chunk=audio)["feats"]
    encoded = graphs("fo_encoder", feats=feats)["encoded"]
    embeds = graphs("fo_adapter", encoded=encoded)
    audio_rows = next(iter(embeds.values()))[0]
    turn = np.concatenate([graphs.rows(config["prompt"]["turn_prefix_ids"]), graphs.prompt, audio_rows])
    out = graphs.llm(turn)
    assert out["state_probs"].shape == (1, len(config["turn_state"]["classes"]))
    assert abs(float(out["state_probs"].sum()) - 1.0) < 1e-5
    speech = config["speech"]
    hidden = out["hidden"].reshape(speech["rows_per_hidden"], speech["width"])  # one LLM vector -> decoder rows
    graphs("speech_prefix", prefix=hidden[None])
    text = graphs.rows([72, 105]).reshape(-1, speech["width"])
    graphs("speech_text", state_of="speech_prefix", text=text[None])
    logits = graphs("speech_token", state_of="speech_prefix", token=np.array([[speech["sos_id"]]], dtype=np.int64))["logits"]
    assert logits.shape == (1, speech["odim"] + 4)
    codec = config["codec"]
    window = np.arange(codec["max_tokens"], dtype=np.int64)[None] % speech["odim"]
    pcm = next(iter(graphs("codec", tokens=window).values()))
    assert pcm.size == codec["max_tokens"] * codec["hop"] and np.isfinite(pcm).all()


def test_a_second_export_keeps_the_up_to_date_package(tiny):
    manifest, _ = tiny
    stages = []
    again = export_package("tiny", "cpu", manifest.directory, progress=stages.append)
    assert stages == ["the package is up to date"] and again.files == manifest.files


# --- a published checkpoint (the fixture sets) ---------------------------------------------------


def test_fixture_export_verifies_every_graph(published):
    _, manifest = published
    assert manifest.recipe == "freeze-omni" and set(manifest.components) == {"vad", *PIPELINE}
    for component in manifest.components.values():
        assert component.parity, f"{component.name}: parity was not run"
        assert ": OK" in component.trt_check["10.3"], f"{component.name}: {component.trt_check}"
    assert "--weights=" in manifest.export_command and "--verify" in manifest.export_command
    assert manifest.config["memory_budget"]["fits"]


def test_the_fixture_package_stays_up_to_date_for_the_same_folders(published):
    root, manifest = published
    stages = []
    export_package("freeze-omni", "cpu", manifest.directory, verify=True, weights=root / "checkpoints", llm=root / "llm",
                   progress=stages.append)
    assert stages == ["the package is up to date"]


def test_ids_through_the_shipped_table_reproduce_the_reference_llm(published):
    """The system prompt and a turn's first chunk, as the glue feeds them, against the goldens."""
    root, manifest = published
    golden = load_file(str(root / "golden" / "listen.safetensors"))
    speech_golden = load_file(str(root / "golden" / "speech.safetensors"))
    config, graphs = manifest.config, Graphs(manifest)
    system = graphs.llm(graphs.rows(config["prompt"]["system_prompt_ids"]))
    assert rel_err(system["hidden"][0], golden["pre_last_hidden"]) <= REL_TOL
    turn = np.concatenate([graphs.rows(config["prompt"]["turn_prefix_ids"]), graphs.prompt, golden["adapter_out"][0]])
    first = graphs.llm(turn)
    assert rel_err(first["hidden"][0], golden["llm_last_hidden"][0]) <= REL_TOL
    assert rel_err(first["state_probs"][0], golden["state_probs"][0]) <= REL_TOL
    text_rows = graphs.rows(speech_golden["tts_text_ids"])
    assert rel_err(text_rows, speech_golden["reply_text_embeds"]) <= REL_TOL
    assert rel_err(text_rows.reshape(-1, config["speech"]["width"]), speech_golden["tts_hidden_in"]) <= REL_TOL


def rel_err(ours, ref) -> float:
    ours, ref = np.asarray(ours, dtype=np.float64), np.asarray(ref, dtype=np.float64)
    assert ours.shape == ref.shape, f"shape {ours.shape} vs golden {ref.shape}"
    return float(np.abs(ours - ref).max() / max(np.abs(ref).max(), 1e-30))
