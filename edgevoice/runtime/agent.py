"""``Agent``: the library API — a voice agent over an engine package, embedded in an application.

    from edgevoice import Agent

    agent = Agent("engines/cpu")
    @agent.tool(description="Current time", parameters={"type": "object", "properties": {}})
    def get_time():
        return time.strftime("%H:%M")
    agent.on("reply_text", lambda event: print(event.data["text"]))
    with agent.start(agent.microphone()):     # or a FileIO, or an AppAudioIO fed by your stack
        agent.wait()                           # until Ctrl-C, stop(), or the recording ends

The engines load once (``Agent(...)``); ``start`` opens a ``DuplexSession`` over the audio I/O and
runs its listen loop on a thread of its own (think, speak and tools have theirs), so the caller's
thread stays free. ``run`` is the blocking form, ``arun`` the asyncio one, ``events()`` an async
iterator over what happens. On a ``FileIO`` without pace the conversation runs inline on the
virtual clock instead: deterministic, faster than real time.
"""

from __future__ import annotations

import asyncio
from dataclasses import replace
from pathlib import Path
from typing import Any, AsyncIterator, Callable, Sequence

from edgevoice.audio.io import AudioIO, FileIO
from edgevoice.errors import EdgevoiceError
from edgevoice.manifest import read_manifest
from edgevoice.runtime import events as ev
from edgevoice.runtime.cascade.pipeline import DEFAULT_SYSTEM_PROMPT, CascadePipeline
from edgevoice.runtime.cascade.session import DuplexSession, SessionOptions
from edgevoice.runtime.conversation import BackgroundConversation
from edgevoice.runtime.events import Event, EventBus
from edgevoice.runtime.tools import Tool, ToolRunner

FREEZE_OMNI_RECIPES = ("freeze-omni", "tiny")  # packages whose glue is runtime/freeze_omni/pipeline.py
VOCALNET_RECIPES = ("vocalnet", "vocalnet-tiny")  # packages whose glue is runtime/vocalnet/pipeline.py


class Agent(BackgroundConversation):
    """Load a package once; register tools and subscribers; start/stop conversations on any audio I/O."""

    def __init__(self, package: str | Path, *, backend: str = "ort", device: str = "cpu",
                 system_prompt: str | None = None, max_new_tokens: int | None = None, seed: int = 0,
                 options: SessionOptions = SessionOptions(), knowledge: str | Path | None = None):
        """``knowledge``: a text/markdown file or folder of the deployment's facts (opening hours, a
        room map); each turn's question retrieves the passages it needs into the prompt (cascade
        packages with an ``embed`` component; see ``edgevoice.runtime.knowledge``)."""
        manifest = read_manifest(package)
        self.recipe = manifest.recipe
        if knowledge is not None and self.recipe != "cascade":
            raise EdgevoiceError(f"a knowledge memory is a cascade feature; {manifest.directory} holds recipe "
                                 f"'{self.recipe}': leave knowledge None (no --knowledge)")
        if options.backchannels is not None and self.recipe != "cascade":
            raise EdgevoiceError(f"backchannels are a cascade feature; {manifest.directory} holds recipe "
                                 f"'{self.recipe}': leave SessionOptions.backchannels None (no --backchannels)")
        # Reply length in LLM tokens; None: the recipe's own (cascade 64, Freeze-Omni 500 as its server).
        length = {} if max_new_tokens is None else {"max_new_tokens": max_new_tokens}
        if self.recipe == "cascade":
            self.pipeline = CascadePipeline(manifest, backend=backend, device=device, **length,
                                            system_prompt=system_prompt or DEFAULT_SYSTEM_PROMPT, seed=seed,
                                            knowledge=knowledge)
            self.mic_rate, self.speaker_rate = self.pipeline.vad.sample_rate, self.pipeline.voice.sample_rate
        elif self.recipe in FREEZE_OMNI_RECIPES:
            from edgevoice.runtime.freeze_omni.pipeline import FreezeOmniPipeline

            self.pipeline = FreezeOmniPipeline(manifest, backend=backend, device=device, system_prompt=system_prompt,
                                               **length)
            self.mic_rate, self.speaker_rate = self.pipeline.sample_rate, self.pipeline.output_rate
        elif self.recipe in VOCALNET_RECIPES:
            from edgevoice.runtime.vocalnet.pipeline import VocalNetPipeline

            if system_prompt is not None:
                raise EdgevoiceError("a VocalNet package speaks with the system prompt it was exported with; "
                                     "leave system_prompt None (no --system-prompt)")
            self.pipeline = VocalNetPipeline(manifest, backend=backend, device=device, seed=seed, **length)
            self.mic_rate, self.speaker_rate = self.pipeline.sample_rate, self.pipeline.output_rate
        else:
            raise EdgevoiceError(f"{manifest.directory} holds recipe '{self.recipe}'; an agent runs cascade, "
                                 f"freeze-omni, tiny, vocalnet or vocalnet-tiny packages (`edgevoice export --model cascade --out DIR`)")
        self.options = options  # backchannels off unless options.backchannels is set
        self.bus = EventBus()
        super().__init__(self.bus)
        self._tools: list[Tool] = []
        self.session: DuplexSession | None = None

    # --- setup ---------------------------------------------------------------------------------

    def tool(self, name: str | None = None, *, description: str = "", parameters: dict[str, Any] | None = None,
             timeout_s: float = 10.0, read_only: bool = False) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
        """Decorator: register a function as a tool (arguments described by a JSON schema).

        ``read_only=True`` says it has no side effects (a lookup), so the cascade may call it early,
        on the user's words before their turn is committed (``Tool.read_only``)."""
        def register(function: Callable[..., Any]) -> Callable[..., Any]:
            schema = parameters or {"type": "object", "properties": {}}
            self.add_tool(Tool(name or function.__name__, function, description or (function.__doc__ or "").strip(),
                               schema, timeout_s, read_only))
            return function
        return register

    def add_tool(self, tool: Tool) -> None:
        if any(t.name == tool.name for t in self._tools):
            raise EdgevoiceError(f"a tool named {tool.name!r} is already registered")
        if self.recipe in VOCALNET_RECIPES:
            raise EdgevoiceError("VocalNet packages do not call tools (their LLM was not trained to); "
                                 "use a cascade or Freeze-Omni package for tools")
        if self.recipe in FREEZE_OMNI_RECIPES and self.pipeline.tokenizer is None:
            raise EdgevoiceError("this Freeze-Omni package has no tokenizer, so its LLM cannot write or read tool "
                                 "calls; re-export it with its tokenizer to use tools")
        ToolRunner(lambda _: None).register(tool)  # validates the schema now, not mid-conversation
        self._tools.append(tool)

    @property
    def tools(self) -> tuple[Tool, ...]:
        """The registered tools, in order (each conversation gets its own runner over them)."""
        return tuple(self._tools)

    def microphone(self, backend: str = "sounddevice", **device_options: Any) -> AudioIO:
        """The sound card as audio I/O (``DeviceConfig`` fields as keywords), at the package's rates."""
        from edgevoice.audio.device_io import DeviceConfig
        from edgevoice.audio.portaudio import open_duplex

        return open_duplex(backend, DeviceConfig(**device_options), mic_rate=self.mic_rate, speaker_rate=self.speaker_rate)

    # --- running -------------------------------------------------------------------------------

    def start(self, io: AudioIO, seconds: float | None = None) -> "Agent":
        """Start a conversation on ``io`` in the background; returns self (a context manager).

        It ends after ``seconds`` of session time, at ``stop()``, on a device failure, or — on a
        ``FileIO`` — once the recording is over and the agent has nothing left to say or do.
        """
        if self.running:
            raise EdgevoiceError("this agent is already in a conversation; stop() it first")
        self.session = self._new_session(io)
        io.start()
        end = None if seconds is None else io.clock.now() + seconds
        self._start_thread(self._listen, (end,), "edgevoice-listen")
        return self

    def stop(self) -> None:
        """End the conversation: cancel the reply, stop every stage and the audio."""
        self._join(timeout=5.0)
        if self.session is not None:
            self.session.close()
            self.session.io.stop()

    def run(self, io: AudioIO, seconds: float | None = None) -> DuplexSession:
        """Blocking: converse on ``io`` for ``seconds`` (None: until the recording ends or stop())."""
        self._run_to_end(io, seconds)
        return self.session

    async def arun(self, io: AudioIO, seconds: float | None = None) -> DuplexSession:
        """``run`` for asyncio applications (the loops run on threads; the event loop stays free)."""
        return await asyncio.to_thread(self.run, io, seconds)

    async def events(self) -> AsyncIterator[Event]:
        """Every event from now on, as an async iterator (ends when the conversation does)."""
        loop = asyncio.get_running_loop()
        queue: asyncio.Queue[Event] = asyncio.Queue()
        unsubscribe = self.bus.subscribe(lambda event: loop.call_soon_threadsafe(queue.put_nowait, event))
        try:
            while True:
                event = await queue.get()
                yield event
                if event.kind == ev.SESSION_END:
                    return
        finally:
            unsubscribe()

    # --- inside ----------------------------------------------------------------------------------

    def _new_session(self, io: AudioIO):
        return open_session(self.pipeline, self.recipe, io, self.options, self.bus, self._tools)

    def _listen(self, end: float | None) -> None:
        session, io = self.session, self.session.io
        try:
            while not self._stopping.is_set() and session.step():
                if end is not None and io.clock.now() >= end:
                    break
                if isinstance(io, FileIO) and io.recording_finished and session.idle:
                    break
        except BaseException as exc:  # noqa: BLE001 - handed to the caller by wait()
            self.error = exc
        finally:
            summary = session.summary()
            if self.error is not None:
                summary["error"] = f"{type(self.error).__name__}: {self.error}"
            self.bus.emit(Event(io.clock.now(), ev.SESSION_END, session.turn, summary))
            self._finished.set()


def open_session(pipeline, recipe: str, io: AudioIO, options: SessionOptions, events: EventBus,
                 tools: Sequence[Tool] = ()):
    """A duplex session of ``recipe`` over ``pipeline`` (loaded, or one ``new_conversation()`` view of it) on ``io``.

    What ``Agent`` and ``edgevoice serve`` both run. Unpaced virtual time would race ahead of
    threaded thinking: on such a ``FileIO`` the stages run inline.
    """
    inline = isinstance(io, FileIO) and io.pace is None
    threaded = options.threaded and not inline
    if recipe in FREEZE_OMNI_RECIPES:
        from edgevoice.runtime.freeze_omni.session import FoSessionOptions, FreezeOmniSession

        fo_options = FoSessionOptions(echo_cancellation=options.echo_cancellation, threaded=threaded)
        return FreezeOmniSession(pipeline, io, fo_options, events=events, tools=list(tools))
    if recipe in VOCALNET_RECIPES:
        from edgevoice.runtime.vocalnet.session import VnSessionOptions, VocalNetSession

        vn_options = VnSessionOptions(echo_cancellation=options.echo_cancellation, threaded=threaded,
                                      think_while_listening=options.think_while_listening)
        return VocalNetSession(pipeline, io, vn_options, events=events)
    session = DuplexSession(pipeline, io, replace(options, threaded=threaded), events=events)
    for tool in tools:
        session.tools.register(tool)
    return session
