"""`edgevoice client`: stream a recording to an `edgevoice serve` server in real time, as a robot would.

The recording is the microphone (paced at real time, 20 ms frames); what the server sends back is
the speaker, written to --output aligned with the input, and the conversation is printed as
`talk --input` prints it.
"""

from __future__ import annotations

import json
from pathlib import Path

import typer
from rich.console import Console

from edgevoice.audio.wav import check_writable
from edgevoice.cli.talk_cmd import _open_events, _write_played, check_recording, conversation_turns, print_conversation

OUTPUT_RATE = 24000  # the rate asked of the server for --output


def client(
    url: str = typer.Option(..., help="The server: ws://HOST:PORT (what `edgevoice serve` printed)."),
    token: str = typer.Option(None, help="The token the server printed."),
    input: Path = typer.Option(..., help="A recording of the user (any rate/channels), streamed in real time."),
    output: Path = typer.Option(..., help="Where to write what the agent said (WAV, aligned with --input)."),
    events: Path = typer.Option(None, help="Write every event as a JSON line to this file."),
    json_output: bool = typer.Option(False, "--json", help="Print the conversation as JSON."),
    reconnect_tries: int = typer.Option(5, min=0, help="Times to reconnect after a lost connection."),
) -> None:
    """Talk with an `edgevoice serve` server through a recording, in real time."""
    from edgevoice.audio.io import FileIO
    from edgevoice.client import Client, ReconnectPolicy

    recording = check_recording(input, output)
    if events is not None:
        check_writable(events, "--events", audio=False)
    session = Client(url, token, reconnect=ReconnectPolicy(tries=reconnect_tries))
    samples, rate = recording
    io = FileIO(samples, recording_rate=rate, mic_rate=16000, speaker_rate=OUTPUT_RATE, pace=1.0)
    event_file = _open_events(events)
    if event_file is not None:
        session.write_events(event_file)
    try:
        session.run(io)
    finally:
        if event_file is not None:
            event_file.close()
    _write_played(io, output)
    _report(session, io, output, json_output)


def _report(session, io, output: Path, json_output: bool) -> None:
    from edgevoice.runtime import events as ev

    turns = conversation_turns(session.events.history())
    summary = session.summary()
    if json_output:
        print(json.dumps({"turns": turns, "summary": summary, "sessions": session.session_ids, "output": str(output)},
                         indent=2, default=str))
        return
    print_conversation(Console(), turns, session.events.history(ev.WARNING), summary, io, output)
