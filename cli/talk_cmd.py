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
    system_prompt: str = typer.Option(None, help="Instructions for the language model."),
    max_new_tokens: int = typer.Option(64, help="Longest reply, in tokens."),
    seed: int = typer.Option(0, help="Seed for sampling and the voice's noise."),
    json_output: bool = typer.Option(False, "--json", help="File mode: print the conversation as JSON."),
) -> None:
    """Talk with the agent: live on the sound devices, or through a recorded conversation (--input/--output)."""
    from edgevoice.runtime.agent import Agent
    from edgevoice.runtime.cascade.session import SessionOptions

    if (input is None) != (output is None):
        raise EdgevoiceError("file mode needs both --input RECORDING.wav and --output REPLY.wav (or neither, to talk live)")
    if input is None and json_output:
        raise EdgevoiceError("--json describes a recorded conversation; use --events FILE to record a live one")
    if input is None:
        _check_sound_devices(audio_backend, input_device, output_device)  # before minutes of engine loading
    if echo_cancellation is None:
        echo_cancellation = input is None
    options = SessionOptions(echo_cancellation=echo_cancellation, think_while_listening=think_while_listening)
    agent = Agent(package, backend=backend, device=device, system_prompt=system_prompt,
                  max_new_tokens=max_new_tokens, seed=seed, options=options)
    event_file = _open_events(events)
    if event_file is not None:
        agent.write_events(event_file)
    try:
        if input is None:
            _live(agent, audio_backend, input_device, output_device)
        else:
            _from_file(agent, input, output, json_output)
    finally:
        if event_file is not None:
            event_file.close()


def _from_file(agent, input: Path, output: Path, json_output: bool) -> None:
    from edgevoice.audio.io import FileIO
    from edgevoice.audio.resample import mixdown
    from edgevoice.audio.wav import read_audio, validate_pcm
    from edgevoice.runtime import events as ev

    samples, rate = read_audio(input)
    validate_pcm(mixdown(samples), rate, rate)  # a recording with NaN/inf is refused, not silently repaired
    io = FileIO(input, mic_rate=agent.mic_rate, speaker_rate=agent.speaker_rate)
    session = agent.run(io)
    _write_played(io, output)
    turns = conversation_turns(session.events.history())
    summary = session.summary()
    if json_output:
        print(json.dumps({"turns": turns, "summary": summary, "output": str(output)}, indent=2, default=str))
        return
    console = Console()
    for turn in turns:
        console.print(f"[bold]you:[/] {turn['transcript'] or '—'}", highlight=False)
        if turn["reply"] or turn["interrupted"]:
            cut = " [dim](interrupted)[/]" if turn["interrupted"] else ""
            console.print(f"[bold]agent:[/] {turn['reply'] or '—'}{cut}", highlight=False)
    for warning in session.events.history(ev.WARNING):
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
    """Per user turn: what was heard, what the agent answered (or had said when interrupted), latency."""
    from edgevoice.runtime import events as ev

    turns: dict[int, dict] = {}
    for event in history:
        turn = turns.setdefault(event.turn, {"turn": event.turn, "transcript": "", "reply": "", "interrupted": False,
                                             "first_audio_after_endpoint_s": None})
        if event.kind == ev.TRANSCRIPT:  # the last one of a turn counts (a dropped speculation comes first)
            turn["transcript"] = event.data["text"]
        elif event.kind == ev.REPLY_TEXT:
            turn["reply"] = event.data["text"]
        elif event.kind == ev.CANCEL_DONE:
            turn["interrupted"] = True
        elif event.kind == ev.USER_SPEECH_END:
            turn["_end"] = event.time
        elif event.kind == ev.FIRST_AUDIO and "_end" in turn and turn["first_audio_after_endpoint_s"] is None:
            turn["first_audio_after_endpoint_s"] = round(event.time - turn["_end"], 3)
    return [{k: v for k, v in t.items() if not k.startswith("_")} for t in turns.values() if t["transcript"] or t["reply"]]


def summary_table(summary: dict) -> Table:
    table = Table("conversation", "", title=None)
    for key, value in summary.items():
        table.add_row(key.replace("_", " "), f"{value:.3f}" if isinstance(value, float) else str(value))
    return table


def _check_sound_devices(audio_backend: str, input_device: str | None, output_device: str | None) -> None:
    from edgevoice.audio.device_io import DeviceConfig, open_duplex

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
