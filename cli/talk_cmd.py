"""`edgevoice talk`: a conversation with a cascade package, live or from a recording.

Live (no --input): the default sound devices, a live view, Ctrl-C ends it with a summary.
File mode (--input/--output): the recording is the microphone on a virtual clock — several turns,
pauses and barge-ins play out exactly as they would live, faster than real time — and --output
gets what the agent said, time-aligned with the input.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console
from rich.table import Table

from edgevoice.audio.wav import check_writable
from edgevoice.errors import EdgevoiceError


def talk(
    package: Path = typer.Option(..., help="Engine package exported with --model cascade (or freeze-omni / tiny)."),
    input: Path = typer.Option(None, help="A recording of the user (any rate/channels); without it, the microphone."),
    output: Path = typer.Option(None, help="File mode: where to write what the agent said (WAV, aligned with --input)."),
    events: Path = typer.Option(None, help="Write every event as a JSON line to this file."),
    backend: str = typer.Option("ort", help="ort (onnxruntime) or trt (TensorRT engines)."),
    device: str = typer.Option("cpu", help="cpu, cuda or auto."),
    input_device: str = typer.Option(None, help="Live: microphone index or part of its name (see `edgevoice devices`)."),
    output_device: str = typer.Option(None, help="Live: speaker index or part of its name."),
    audio_backend: str = typer.Option("sounddevice", help="Live: sounddevice or pyaudio."),
    echo_cancellation: bool = typer.Option(None, help="Cancel the agent's own voice from the microphone (open speakers). "
                                           "Default: on live; off for a recording, which cannot contain the agent's voice."),
    think_while_listening: bool = typer.Option(True, help="Prepare the answer while the user is still speaking."),
    semantic_endpointing: bool = typer.Option(True, help="End turns on the package's end-of-turn model (a thinking "
                                              "pause is not the end); off: a fixed 600 ms of silence."),
    text_endpointing: bool = typer.Option(True, help="Cascade: the transcript votes too (unfinished words such as "
                                          "\"I would like to know\" hold the turn); needs semantic endpointing and "
                                          "think while listening."),
    backchannels: bool = typer.Option(False, help="Cascade: say a quiet \"mhm\" now and then at pauses of a long "
                                      "user turn (never over the user, at most one per 6 s of their speech)."),
    knowledge: Path = typer.Option(None, help="Cascade: a text/markdown file or folder of the deployment's facts "
                                   "(opening hours, a room map); each question retrieves what it needs into the prompt."),
    system_prompt: str = typer.Option(None, help="Instructions for the language model."),
    max_new_tokens: int = typer.Option(None, "--max-new-tokens", "--max-reply-tokens", min=1,
                                       help="Longest reply, in LLM tokens (default: 64 for cascade, 500 for "
                                            "freeze-omni/tiny, the reference server's)."),
    seed: int = typer.Option(0, help="Seed for sampling and the voice's noise."),
    json_output: bool = typer.Option(False, "--json", help="File mode: print the conversation as JSON."),
) -> None:
    """Talk with the agent: live on the sound devices, or through a recorded conversation (--input/--output)."""
    from edgevoice.runtime.agent import Agent
    from edgevoice.runtime.backchannel import BackchannelOptions
    from edgevoice.runtime.cascade.session import SessionOptions

    if (input is None) != (output is None):
        raise EdgevoiceError("file mode needs both --input RECORDING.wav and --output REPLY.wav (or neither, to talk live)")
    if input is None and json_output:
        raise EdgevoiceError("--json describes a recorded conversation; use --events FILE to record a live one")
    # Every check that can fail runs here, before the engines load (seconds to minutes).
    _check_backend_and_device(backend, device)
    recording = None if input is None else check_recording(input, output)
    if events is not None:
        check_writable(events, "--events", audio=False)
    if knowledge is not None:
        from edgevoice.runtime.knowledge import read_sources

        read_sources(knowledge)  # missing, empty or not text: one line, before the engines load
    if input is None:
        _check_sound_devices(audio_backend, input_device, output_device)
    if echo_cancellation is None:
        echo_cancellation = input is None
    options = SessionOptions(echo_cancellation=echo_cancellation, think_while_listening=think_while_listening,
                             semantic_endpointing=semantic_endpointing, text_endpointing=text_endpointing,
                             backchannels=BackchannelOptions() if backchannels else None)
    agent = Agent(package, backend=backend, device=device, system_prompt=system_prompt,
                  max_new_tokens=max_new_tokens, seed=seed, options=options, knowledge=knowledge)
    event_file = _open_events(events)
    if event_file is not None:
        agent.write_events(event_file)
    try:
        if input is None:
            _live(agent, audio_backend, input_device, output_device)
        else:
            _from_file(agent, recording, output, json_output)
    finally:
        if event_file is not None:
            event_file.close()


def check_recording(input: Path, output: Path) -> tuple:
    """File mode's checks, before any engine loads: the recording reads whole and is sane, --output is writable.

    Returns (samples, rate) so the file is read once.
    """
    from edgevoice.audio.resample import mixdown
    from edgevoice.audio.wav import check_range, read_audio, validate_pcm

    check_writable(output, "--output")
    samples, rate = read_audio(input)  # missing, unreadable or truncated: one line
    mono = validate_pcm(mixdown(samples), rate, rate, source=str(input))  # NaN/inf refused, not silently repaired
    check_range(mono, source=str(input))
    return samples, rate


def _from_file(agent, recording: tuple, output: Path, json_output: bool) -> None:
    from edgevoice.audio.io import FileIO
    from edgevoice.runtime import events as ev

    samples, rate = recording
    io = FileIO(samples, recording_rate=rate, mic_rate=agent.mic_rate, speaker_rate=agent.speaker_rate)
    session = agent.run(io)
    _write_played(io, output)
    turns = conversation_turns(session.events.history())
    summary = session.summary()
    if json_output:
        print(json.dumps({"turns": turns, "summary": summary, "output": str(output)}, indent=2, default=str))
        return
    print_conversation(Console(), turns, session.events.history(ev.WARNING), summary, io, output)


def print_conversation(console: Console, turns: list[dict], warnings, summary: dict, io, output: Path) -> None:
    """What a recorded conversation printed: each turn, the warnings, the summary, the --output written."""
    for turn in turns:
        console.print(f"[bold]you:[/] {turn['transcript'] or '—'}", highlight=False)
        if turn["reply"] or turn["interrupted"]:
            cut = " [dim](interrupted)[/]" if turn["interrupted"] else ""
            console.print(f"[bold]agent:[/] {turn['reply'] or '—'}{cut}", highlight=False)
    for warning in warnings:
        console.print(f"warning: {warning.data}", highlight=False)
    console.print(summary_table(summary))
    console.print(f"wrote {output} ({len(io.played()) / io.speaker_rate:.1f} s: what the agent said, aligned with the input)")


def _live(agent, audio_backend: str, input_device: str | None, output_device: str | None) -> None:
    from edgevoice.cli.talk_view import run_live_view

    io = agent.microphone(audio_backend, input_device=_device_spec(input_device), output_device=_device_spec(output_device))
    console = Console()
    agent.start(io)
    try:
        run_live_view(agent, console)
    except KeyboardInterrupt:
        pass
    finally:
        agent.stop()
    console.print(summary_table(agent.session.summary()))
    if agent.error is not None:
        raise EdgevoiceError(f"the conversation stopped: {agent.error}")


def conversation_turns(history) -> list[dict]:
    """Per user turn of a recorded conversation: what was heard, what the agent answered (or had
    said when interrupted), and its first-audio latency: as a live run would have had it (compute
    included, estimated) and as measured on the virtual clock (where compute takes no time)."""
    from edgevoice.runtime import events as ev
    from edgevoice.runtime.loop import ESTIMATED_LIVE_KEY, SPEECH_END_ESTIMATED_LIVE_KEY, VIRTUAL_CLOCK_KEY

    estimates = ev.estimated_live_first_audio(history)
    after_speech = ev.estimated_live_after_speech_end(history)
    turns: dict[int, dict] = {}
    for event in history:
        turn = turns.setdefault(event.turn, {"turn": event.turn, "transcript": "", "reply": "", "interrupted": False,
                                             ESTIMATED_LIVE_KEY: _rounded(estimates.get(event.turn)),
                                             SPEECH_END_ESTIMATED_LIVE_KEY: _rounded(after_speech.get(event.turn)),
                                             VIRTUAL_CLOCK_KEY: None})
        if event.kind == ev.TRANSCRIPT:  # the last one of a turn counts (a dropped speculation comes first)
            turn["transcript"] = event.data["text"]
        elif event.kind == ev.REPLY_TEXT:
            turn["reply"] = event.data["text"]
        elif event.kind == ev.CANCEL_DONE:
            turn["interrupted"] = True
        elif event.kind == ev.USER_SPEECH_END:
            turn["_end"] = event.time
        elif event.kind == ev.FIRST_AUDIO and "_end" in turn and turn[VIRTUAL_CLOCK_KEY] is None:
            turn[VIRTUAL_CLOCK_KEY] = round(event.time - turn["_end"], 3)
    return [{k: v for k, v in t.items() if not k.startswith("_")} for t in turns.values() if t["transcript"] or t["reply"]]


def _rounded(seconds: float | None) -> float | None:
    return None if seconds is None else round(seconds, 3)


def summary_table(summary: dict) -> Table:
    from edgevoice.runtime.loop import (ESTIMATED_LIVE_KEY, SPEECH_END_ESTIMATED_LIVE_KEY, SPEECH_END_KEY,
                                        VIRTUAL_CLOCK_KEY)

    labels = {  # rows whose key alone would not say what they measure
        ESTIMATED_LIVE_KEY: "first audio after endpoint (estimated live, compute included), s",
        SPEECH_END_ESTIMATED_LIVE_KEY: "first audio after end of speech (estimated live, endpoint silence and compute "
                                       "included), s",
        SPEECH_END_KEY: "first audio after end of speech (endpoint silence included), s",
        VIRTUAL_CLOCK_KEY: "first audio after endpoint (virtual clock, compute not included), s",
    }
    table = Table("conversation", "", title=None)
    for key, value in summary.items():
        label = labels.get(key, key.replace("_", " "))
        table.add_row(label, f"{value:.3f}" if isinstance(value, float) else str(value))
    return table


def _check_backend_and_device(backend: str, device: str) -> None:
    from edgevoice.backends.cuda import cuda_device_count

    if backend not in ("ort", "trt"):
        raise EdgevoiceError(f"--backend {backend} is not one talk runs; choose ort or trt")
    if device not in ("cpu", "cuda", "auto"):
        raise EdgevoiceError(f"--device {device} is unknown; choose cpu, cuda or auto")
    if (backend == "trt" or device == "cuda") and cuda_device_count() == 0:
        what = "--backend trt" if backend == "trt" else "--device cuda"
        raise EdgevoiceError(f"{what} needs an NVIDIA GPU and none was found; use --backend ort --device cpu")


def _check_sound_devices(audio_backend: str, input_device: str | None, output_device: str | None) -> None:
    from edgevoice.audio.device_io import DeviceConfig
    from edgevoice.audio.portaudio import open_duplex

    config = DeviceConfig(input_device=_device_spec(input_device), output_device=_device_spec(output_device))
    open_duplex(audio_backend, config)  # resolves both devices and checks their settings; opens nothing


def _device_spec(spec: str | None) -> int | str | None:
    return int(spec) if spec is not None and spec.isdigit() else spec


def _open_events(path: Path | None):
    if path is None:
        return None
    try:
        return path.open("w", encoding="utf-8")
    except OSError as exc:
        raise EdgevoiceError(f"cannot write events to {path} ({exc.strerror}); choose another --events path") from exc


def _write_played(io, path: Path) -> None:
    try:
        io.save_played(path)
    except OSError as exc:
        raise EdgevoiceError(f"cannot write {path} ({exc.strerror}); choose another --output") from exc
