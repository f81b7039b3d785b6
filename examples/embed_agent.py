"""Embed an edgevoice agent in an application: load a package, register a tool, follow events.

    python examples/embed_agent.py --package engines/cpu                  # a recorded question
    python examples/embed_agent.py --package engines/cpu --input my.wav --output heard.wav
    python examples/embed_agent.py --package engines/cpu --live           # microphone + speaker

With a recording the conversation runs on a virtual clock (faster than real time); ``--live``
talks on the default sound devices until Ctrl-C.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from edgevoice import Agent
from edgevoice.audio.io import FileIO

HERE = Path(__file__).resolve().parent


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--package", default="engines/cpu", help="an engine package exported with --model cascade")
    parser.add_argument("--input", default=str(HERE / "question.wav"), help="a recording of the user")
    parser.add_argument("--output", help="write what the agent said (a WAV, time-aligned with the input)")
    parser.add_argument("--live", action="store_true", help="use the microphone and speaker instead")
    args = parser.parse_args()

    agent = Agent(args.package)

    @agent.tool(description="The current local time, as HH:MM.", parameters={"type": "object", "properties": {}})
    def current_time() -> str:
        return time.strftime("%H:%M")

    agent.on("transcript", lambda event: print(f"you:   {event.data['text']}"))
    agent.on("reply_text", lambda event: print(f"agent: {event.data['text']}"))
    agent.on("tool_call", lambda event: print(f"tool:  {event.data['name']}({event.data['arguments']})"))
    agent.on("first_audio", lambda event: print(f"       (speaking at {event.time:.2f} s)"))

    if args.live:
        with agent.start(agent.microphone()):
            try:
                agent.wait()
            except KeyboardInterrupt:
                pass
        return
    io = FileIO(args.input)
    session = agent.run(io)  # until the recording is over and the agent has answered
    if args.output:
        io.save_played(args.output)
    print(f"{session.turn} turn(s), {io.clock.now():.1f} s of conversation")


if __name__ == "__main__":
    main()
