"""The Freeze-Omni GPU benchmark script: its CPU path end to end, and its CUDA path where a GPU exists.

The script is run as the device will run it (a separate process, JSON out), at the tiny widths,
so a broken section shows up here before a lent GPU's minutes are spent on it.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
SCRIPT = REPO / "benchmarks" / "fo_gpu_bench.py"
sys.path.insert(0, str(SCRIPT.parent))  # the script's helper modules
SECTIONS = ("environment", "build", "bandwidth", "steps", "timeline", "memory", "parity")
STEPS = ("fo_frontend", "fo_encoder", "fo_adapter", "fo_llm_listen", "fo_llm_prefill", "fo_llm_decode",
         "speech_prefix", "speech_text", "speech_token", "codec_first_window", "codec_window")
STAGES = ("first_text_chunk", "speech_decoder_prefill", "first_speech_token_chunk", "first_pcm")


def run_bench(tmp_path: Path, *args: str) -> dict:
    out = tmp_path / "fo_gpu_bench.json"
    done = subprocess.run([sys.executable, str(SCRIPT), "--dims", "tiny", "--quick", "--out", str(out), *args],
                          capture_output=True, text=True, timeout=300, cwd=REPO)
    assert done.returncode == 0, done.stderr[-3000:]
    assert "respond -> first PCM" in done.stdout
    return json.loads(out.read_text())


def errors_in(value, path: str = "") -> list[str]:
    """Every recorded error in the report, with where it sits."""
    if isinstance(value, dict):
        found = [f"{path}: {value['error']}"] if "error" in value else []
        return found + [e for k, v in value.items() if k != "error" for e in errors_in(v, f"{path}/{k}")]
    if isinstance(value, list):
        return [e for i, v in enumerate(value) for e in errors_in(v, f"{path}[{i}]")]
    return []


def check_report(report: dict, graphs: bool) -> None:
    assert all(name in report for name in SECTIONS), sorted(report)
    assert errors_in(report) == []
    steps = report["steps"]
    for name in STEPS:
        assert steps[name]["eager"]["median"] > 0 and steps[name]["weight_mb"] > 0
        assert ("median" in steps[name]["graphs"]) == graphs
    mode = "graphs" if graphs else "eager"
    cumulative = report["timeline"][mode]["4"]["cumulative_ms"]
    times = [cumulative[stage] for stage in STAGES]
    assert times == sorted(times) and times[0] > 0
    assert report["timeline"]["first_window_tokens"] == 30  # the server's first chunk 20 + 10 look-ahead
    assert report["parity"]["all_ok"], report["parity"]


def test_cpu_quick_run_has_every_section_without_errors(tmp_path):
    report = run_bench(tmp_path, "--device", "cpu")
    check_report(report, graphs=False)
    assert report["steps"]["fo_llm_decode"]["graphs"] == {"skipped": "CUDA graphs need a CUDA device"}
    assert set(report["parity"]["components"]) == {"fo_llm_decode", "speech_token", "codec"}
    assert "speedup_vs_paper" not in report["timeline"]["headline"]  # tiny widths are not the paper's shapes


@pytest.fixture(scope="module")
def tiny_stack():
    from fo_gpu_bench_device import build_stack

    return build_stack("tiny", torch.device("cpu"), torch.float32, context=64, max_segment=4)


@torch.inference_mode()
def test_bound_llm_steps_equal_the_full_sequence(tiny_stack):
    """Prefill + decode over static tensors (state written back in place) choose what one full pass would."""
    from fo_gpu_bench_device import LlmSession, bind_llm

    llm = LlmSession(tiny_stack, start=0)
    prompt = torch.tensor([tiny_stack.listen.prompt.response_prefix_ids])
    bind_llm(tiny_stack.views["prefill"], llm, prompt)()
    chosen = [int(llm.next_id)]
    decode = bind_llm(tiny_stack.views["decode"], llm, llm.next_id)
    for _ in range(4):
        decode()
        chosen.append(int(llm.next_id))
    sequence = torch.cat([prompt, torch.tensor([chosen[:-1]])], dim=1)
    greedy = tiny_stack.listen.llm(sequence)[0, prompt.shape[1] - 1 :].argmax(-1)
    assert chosen == greedy.tolist() and int(llm.position) == sequence.shape[1]


@torch.inference_mode()
def test_bound_speech_steps_equal_teacher_forcing(tiny_stack):
    """Prefix, text and token bodies sharing one static state give the decoder's own teacher-forced choices."""
    from fo_gpu_bench_device import SpeechSession, bind_speech_prefix, bind_speech_text, bind_speech_token

    decoder, embed = tiny_stack.speech.decoder, tiny_stack.listen.llm.model.embed_tokens
    hidden = torch.randn(3, tiny_stack.listen.llm.config.hidden, generator=torch.Generator().manual_seed(1))
    ids = torch.tensor([[5, 9, 2]])
    speech = SpeechSession(tiny_stack)
    bind_speech_prefix(tiny_stack.views["speech_prefix"], speech, hidden)()
    bind_speech_text(tiny_stack.views["speech_text"], speech, ids, embed)()
    token = bind_speech_token(tiny_stack.views["speech_token"], speech)
    fed = [int(speech.token)] + [int(token()) for _ in range(6)]
    width = decoder.config.width
    logits = decoder(hidden.view(1, -1, width), embed(ids).view(1, -1, width), torch.tensor([fed[:-1]]))
    assert fed[1:] == logits[0, :, : decoder.config.odim].argmax(-1).tolist()


def test_first_codec_window_follows_the_fifo():
    from fo_gpu_bench_timeline import SERVER_FIRST_CHUNK, first_window_tokens

    from edgevoice.runtime.freeze_omni.speech_tokens import CodecStreamConfig

    assert first_window_tokens(CodecStreamConfig(first_chunk=SERVER_FIRST_CHUNK)) == 30  # server.json: 20 + 10
    assert first_window_tokens(CodecStreamConfig()) == 50  # inference.py: 40 + 10


@pytest.mark.gpu
def test_cuda_quick_run_captures_graphs(tmp_path):
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU")
    report = run_bench(tmp_path, "--device", "cuda", "--dtype", "fp32")
    check_report(report, graphs=True)
    assert all(entry["compare"]["graphs_on"]["graphs_captured"] >= 1 for entry in report["parity"]["components"].values())
