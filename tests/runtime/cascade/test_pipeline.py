"""One spoken turn through the cascade engines: a spoken question in, a spoken sensible answer out."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import numpy as np
import pytest
from conftest import REPO, espeak

from edgevoice.audio.resample import resample
from edgevoice.audio.wav import read_audio
from edgevoice.runtime.cascade.pipeline import CascadePipeline

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def agent(cascade_package) -> CascadePipeline:
    return CascadePipeline(cascade_package)


def words(text: str) -> list[str]:
    return re.findall(r"[a-z']+", text.lower())


def heard_back(agent: CascadePipeline, audio: np.ndarray, rate: int) -> str:
    """Our own ASR on the agent's reply: what a listener would hear."""
    return agent.asr.transcribe(resample(audio, rate, 16000), 16000).text


def test_capital_of_france(agent):
    samples, rate = read_audio(REPO / "examples" / "question.wav")
    turn = agent.respond(samples, rate)
    assert "capital" in words(turn.transcript) and "france" in words(turn.transcript)
    assert "paris" in words(turn.reply)
    assert turn.sample_rate == 22050 and len(turn.audio) > 0.5 * 22050
    assert "paris" in words(heard_back(agent, turn.audio, turn.sample_rate))
    for stage in ("asr", "first_token", "first_audio", "total"):
        assert 0 < turn.latency[stage]


@pytest.mark.parametrize("question", ["Can you tell me a fun fact about cats?", "What should I cook for dinner tonight?"])
def test_unscripted_question_gets_an_intelligible_answer(cascade_package, question):
    agent = CascadePipeline(cascade_package)
    speech = np.concatenate([np.zeros(8000, np.float32), espeak(question), np.zeros(8000, np.float32)])
    turn = agent.respond(speech, 16000)
    assert len(words(turn.reply)) >= 3
    said, heard = set(words(turn.reply)), set(words(heard_back(agent, turn.audio, turn.sample_rate)))
    assert len(said & heard) >= 0.6 * len(said), (turn.reply, heard)


def test_conversation_keeps_history(cascade_package):
    agent = CascadePipeline(cascade_package)
    samples, rate = read_audio(REPO / "examples" / "question.wav")
    agent.respond(samples, rate)
    agent.respond(samples, rate)
    assert [m["role"] for m in agent.history] == ["user", "assistant", "user", "assistant"]


def test_silence_is_a_defined_outcome(agent):
    quiet = np.random.default_rng(0).standard_normal(32000).astype(np.float32) * 1e-4
    turn = agent.respond(quiet, 16000)
    assert turn.transcript == "" and turn.reply == "" and turn.audio.size == 0
    assert turn.notes == ("no speech found in the input audio",)


def test_runtime_does_not_import_torch(cascade_package):
    code = (
        "import sys; from edgevoice.runtime.cascade.pipeline import CascadePipeline; "
        "from edgevoice.audio.wav import read_audio; "
        f"a = CascadePipeline({str(cascade_package.directory)!r}); "
        f"s, r = read_audio({str(REPO / 'examples' / 'question.wav')!r}); a.respond(s, r); "
        "assert not [m for m in sys.modules if m.split('.')[0] == 'torch'], 'torch imported'"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]


def test_manifest_records_licenses_and_files(cascade_package):
    licenses = cascade_package.config["licenses"]
    assert set(licenses) >= {"vad", "asr", "llm", "tts", "phonemizer"} and "lessac" in licenses["tts"]
    assert cascade_package.component("asr_decoder").files == ("asr_tokenizer.json",)
    assert all(c.license for c in cascade_package.components.values())


def test_talk_command(cascade_package, tmp_path):
    out = tmp_path / "reply.wav"
    cmd = [sys.executable, "-m", "edgevoice.cli.main", "talk", "--package", str(cascade_package.directory),
           "--input", str(REPO / "examples" / "question.wav"), "--output", str(out), "--json"]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr
    [turn] = json.loads(result.stdout)["turns"]
    assert "paris" in words(turn["reply"]) and out.is_file() and turn["first_audio_after_endpoint_virtual_clock_s"] >= 0
    # Compute adds to the virtual clock's figure, never removes. After the endpoint it can add nothing:
    # the answer starts at 64 ms of silence and may be ready by the 600 ms endpoint on a fast machine.
    live_after_endpoint = turn["first_audio_after_endpoint_estimated_live_s"]
    assert live_after_endpoint >= turn["first_audio_after_endpoint_virtual_clock_s"]
    assert turn["first_audio_after_speech_end_estimated_live_s"] > live_after_endpoint  # the endpoint silence
    import soundfile

    stereo_48k = tmp_path / "48k.wav"  # any rate and channel count is converted for the models
    question, rate = read_audio(REPO / "examples" / "question.wav")
    soundfile.write(str(stereo_48k), np.repeat(resample(question[:, 0], rate, 48000)[:, None], 2, axis=1), 48000)
    again = subprocess.run(cmd[:-5] + ["--input", str(stereo_48k), "--output", str(out), "--json"],
                           capture_output=True, text=True, timeout=600)
    assert again.returncode == 0 and "paris" in words(json.loads(again.stdout)["turns"][0]["reply"])
    nan = tmp_path / "nan.wav"
    soundfile.write(str(nan), np.full(16000, np.nan, np.float32), 16000, subtype="FLOAT")
    bad = subprocess.run(cmd[:-5] + ["--input", str(nan), "--output", str(out)], capture_output=True, text=True, timeout=600)
    assert bad.returncode == 1 and "NaN" in bad.stderr and "Traceback" not in bad.stderr


def test_talk_ends_turns_on_the_end_of_turn_model_unless_told_not_to(cascade_package, tmp_path):
    def turn_taken(*flags: str) -> dict:
        events = tmp_path / "events.jsonl"
        cmd = [sys.executable, "-m", "edgevoice.cli.main", "talk", "--package", str(cascade_package.directory),
               "--input", str(REPO / "examples" / "question.wav"), "--output", str(tmp_path / "o.wav"),
               "--events", str(events), *flags]
        result = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
        assert result.returncode == 0, result.stderr
        [taken] = [e["data"] for e in map(json.loads, events.read_text().splitlines()) if e["kind"] == "turn_taken"]
        return taken

    # "What is the capital of France?": words sure enough to end the turn at text_sure_min_silence_ms.
    semantic = turn_taken()
    assert semantic["endpoint"] == "words" and semantic["text_eot_prob"] >= 0.7 and 400 <= semantic["silence_ms"] < 500
    audio_only = turn_taken("--no-text-endpointing")
    assert audio_only["endpoint"] == "model" and audio_only["eot_prob"] >= 0.5 and audio_only["silence_ms"] < 300
    vad_only = turn_taken("--no-semantic-endpointing")
    assert vad_only["endpoint"] == "vad" and vad_only["eot_prob"] is None and vad_only["silence_ms"] >= 600


def test_talk_plays_a_recorded_conversation(cpu_conversation):
    """examples/conversation.wav: two questions, a barge-in ("Wait, tell me about dogs instead.")
    in the middle of the second answer, then a "mhm" during the third answer."""
    report, out, events = cpu_conversation["report"], cpu_conversation["said"], cpu_conversation["events"]
    turns = report["turns"]
    assert len(turns) == 3 and "paris" in words(turns[0]["reply"])
    assert "cats" in words(turns[1]["transcript"]) and "cats" in words(turns[1]["reply"]) and turns[1]["interrupted"]
    assert "dog" in turns[2]["transcript"].lower() and not turns[2]["interrupted"]  # the "mhm" did not stop it
    assert report["summary"]["barge_ins"] == 1 and report["summary"]["reply_gaps"] == 0
    kinds = [json.loads(line)["kind"] for line in events.read_text().splitlines()]
    assert "backchannel" in kinds and kinds[-1] == "session_end"
    played, rate = read_audio(out)
    assert len(played) / rate >= 22.0  # from the input's time 0, until the last answer ended


def test_talk_live_without_a_sound_card_exits_with_a_clear_message(cascade_package):
    cmd = [sys.executable, "-m", "edgevoice.cli.main", "talk", "--package", str(cascade_package.directory)]
    result = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert result.returncode == 1 and "Traceback" not in result.stderr
    assert "device" in result.stderr
