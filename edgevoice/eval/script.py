"""Conversation scripts for ``edgevoice eval``: what the user says, when, and what the agent should answer.

A script is a YAML or JSON file::

    defaults:                      # optional: for every conversation
      voice: en-us                 # espeak-ng voice (espeak-ng --voices)
      rate: 160                    # words per minute
      options: {open_speakers: false}
    conversations:
      - name: thinking_pause
        options: {agent_backchannels: true}
        timeline:
          - silence: 0.5
          - say: ["Can you tell me", {pause: 1.2}, "how far the moon is?"]
            expect: moon           # a case-insensitive substring of the reply (or expect_regex: ...)
          - silence: 1.3
          - barge_in: "Wait, tell me about dogs instead."
          - backchannel: mhm       # trimmed to max_s (0.35 s): a real "mhm" is short
          - say: {wav: recordings/question.wav}   # a recording instead of espeak (relative to the script)

Each timeline item holds one of ``silence``, ``say``, ``monologue`` (a long user turn, where a
listener may backchannel), ``barge_in`` (the user speaks while the agent speaks) and
``backchannel`` (the user's "mhm" during the agent's turn). Items follow each other; ``at: SECONDS``
places one at an absolute time instead (never before the previous one ends). Every mistake is
reported on one line that names the field, e.g. ``conversations[0].timeline[2].silence``.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from edgevoice.errors import EdgevoiceError, MissingDependencyError

SPEECH_KINDS = ("say", "monologue", "barge_in", "backchannel")
RESPONDED_KINDS = ("say", "monologue", "barge_in")  # user speech the agent is expected to answer
BACKCHANNEL_MAX_S = 0.35  # espeak's "mhm" trails on; a listener's is ~300 ms
SPEECH_KEYS = ("voice", "rate", "at", "expect", "expect_regex", "max_s")


@dataclass(frozen=True)
class ConversationOptions:
    """How the conversation is set up around the agent."""

    open_speakers: bool = False  # the room's echo path: the microphone hears what the speaker plays
    echo_delay_s: float = 0.05  # speaker-to-microphone delay of that path
    # The agent cancels its own voice; None: on with open speakers, off on a headset (as talk).
    echo_cancellation: bool | None = None
    agent_backchannels: bool = False  # the agent may say "mhm" at pauses of a long user turn (cascade)
    think_while_listening: bool = True
    semantic_endpointing: bool = True
    text_endpointing: bool = True  # the transcript's end-of-turn vote (cascade)


    @property
    def cancels_echo(self) -> bool:
        return self.open_speakers if self.echo_cancellation is None else self.echo_cancellation


@dataclass(frozen=True)
class Speech:
    """One stretch of user audio: text parts with thinking pauses between them, or a recording."""

    kind: str  # one of SPEECH_KINDS
    parts: tuple[str | float, ...] = ()  # text pieces, and pause seconds (floats) between them
    wav: Path | None = None  # a recording instead of synthesized text
    voice: str = "en-us"
    rate: int = 160
    at: float | None = None  # absolute start in seconds; None: right after the previous item
    expect: str | None = None  # a substring the agent's answer should contain (case-insensitive)
    expect_regex: str | None = None
    max_s: float | None = None  # audio longer than this is cut (backchannels)

    @property
    def text(self) -> str:
        if self.wav is not None:
            return str(self.wav.name)
        return " ... ".join(p for p in self.parts if isinstance(p, str))


@dataclass(frozen=True)
class Silence:
    seconds: float
    at: float | None = None


@dataclass(frozen=True)
class Conversation:
    name: str
    timeline: tuple[Speech | Silence, ...]
    options: ConversationOptions = field(default_factory=ConversationOptions)


@dataclass(frozen=True)
class Script:
    path: Path
    conversations: tuple[Conversation, ...]


def load_script(path: str | Path) -> Script:
    """Read and check a script; every problem is an EdgevoiceError naming the field."""
    path = Path(path)
    if not path.is_file():
        raise EdgevoiceError(f"script {path} not found; pass a YAML or JSON file (see examples/eval/)")
    text = path.read_text(encoding="utf-8")
    return parse_script(_decode(path, text), path)


def _decode(path: Path, text: str) -> Any:
    if path.suffix.lower() == ".json":
        try:
            return json.loads(text)
        except json.JSONDecodeError as exc:
            raise EdgevoiceError(f"{path}: not valid JSON (line {exc.lineno}: {exc.msg})") from exc
    try:
        import yaml
    except ImportError as exc:
        raise MissingDependencyError.for_module("yaml", "eval", "a YAML script") from exc
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1})" if mark is not None else ""
        raise EdgevoiceError(f"{path}: not valid YAML{where}: {getattr(exc, 'problem', exc)}") from exc


class _Fields:
    """Error messages that name the source file and the field's path."""

    def __init__(self, source: Path):
        self.source = source

    def fail(self, where: str, problem: str) -> EdgevoiceError:
        return EdgevoiceError(f"{self.source}: {where}: {problem}")

    def mapping(self, value: Any, where: str, allowed: tuple[str, ...]) -> dict:
        if not isinstance(value, dict):
            raise self.fail(where, f"must be a mapping, got {_shown(value)}")
        for key in value:
            if key not in allowed:
                raise self.fail(f"{where}.{key}", f"unknown field; expected one of {', '.join(allowed)}")
        return value

    def seconds(self, value: Any, where: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value >= 0:
            raise self.fail(where, f"must be a number of seconds >= 0, got {_shown(value)}")
        return float(value)

    def text(self, value: Any, where: str) -> str:
        if not isinstance(value, str) or not value.strip():
            raise self.fail(where, f"must be non-empty text, got {_shown(value)}")
        return value

    def flag(self, value: Any, where: str) -> bool:
        if not isinstance(value, bool):
            raise self.fail(where, f"must be true or false, got {_shown(value)}")
        return value


def parse_script(data: Any, source: Path) -> Script:
    check = _Fields(source)
    top = check.mapping(data, "script", ("defaults", "conversations"))
    defaults = check.mapping(top.get("defaults", {}), "defaults", ("voice", "rate", "options"))
    base = Speech(kind="say")
    base = _voice(check, base, defaults, "defaults")
    base_options = _options(check, defaults.get("options", {}), "defaults.options", ConversationOptions())
    conversations = top.get("conversations")
    if not isinstance(conversations, list) or not conversations:
        raise check.fail("conversations", f"must be a non-empty list of conversations, got {_shown(conversations)}")
    parsed = [_conversation(check, c, f"conversations[{i}]", base, base_options) for i, c in enumerate(conversations)]
    names = [c.name for c in parsed]
    for i, name in enumerate(names):
        if name in names[:i]:
            raise check.fail(f"conversations[{i}].name", f"{name!r} is used twice; names become file names, "
                                                         f"make them unique")
    return Script(source, tuple(parsed))


def _conversation(check: _Fields, value: Any, where: str, base: Speech, base_options: ConversationOptions):
    item = check.mapping(value, where, ("name", "timeline", "options", "voice", "rate"))
    name = check.text(item.get("name"), f"{where}.name")
    if not all(ch.isalnum() or ch in "-_." for ch in name):
        raise check.fail(f"{where}.name", f"{name!r} may hold only letters, digits, '-', '_' and '.' (it names files)")
    base = _voice(check, base, item, where)
    options = _options(check, item.get("options", {}), f"{where}.options", base_options)
    timeline = item.get("timeline")
    if not isinstance(timeline, list) or not timeline:
        raise check.fail(f"{where}.timeline", f"must be a non-empty list of items, got {_shown(timeline)}")
    items = tuple(_item(check, entry, f"{where}.timeline[{k}]", base) for k, entry in enumerate(timeline))
    if not any(isinstance(i, Speech) for i in items):
        raise check.fail(f"{where}.timeline", "has no user speech (say, monologue, barge_in or backchannel)")
    return Conversation(name, items, options)


def _voice(check: _Fields, base: Speech, item: dict, where: str) -> Speech:
    if "voice" in item:
        base = replace(base, voice=check.text(item["voice"], f"{where}.voice"))
    if "rate" in item:
        rate = item["rate"]
        if isinstance(rate, bool) or not isinstance(rate, int) or not 80 <= rate <= 450:
            raise check.fail(f"{where}.rate", f"must be espeak-ng words per minute, 80 to 450, got {_shown(rate)}")
        base = replace(base, rate=rate)
    return base


def _options(check: _Fields, value: Any, where: str, base: ConversationOptions) -> ConversationOptions:
    names = tuple(f.name for f in fields(ConversationOptions))
    given = check.mapping(value, where, names)
    changes = {}
    for key, raw in given.items():
        if key == "echo_delay_s":
            changes[key] = check.seconds(raw, f"{where}.{key}")
            if not 0.02 <= changes[key] <= 0.5:
                raise check.fail(f"{where}.{key}", f"must be 0.02 to 0.5 s (a room's speaker-to-mic delay), got {raw}")
        else:
            changes[key] = check.flag(raw, f"{where}.{key}")
    return replace(base, **changes)


def _item(check: _Fields, value: Any, where: str, base: Speech) -> Speech | Silence:
    kinds = ("silence", *SPEECH_KINDS)
    item = check.mapping(value, where, (*kinds, *SPEECH_KEYS))
    present = [k for k in kinds if k in item]
    if len(present) != 1:
        raise check.fail(where, f"needs exactly one of {', '.join(kinds)}; got {', '.join(present) or 'none'}")
    kind = present[0]
    at = None if "at" not in item else check.seconds(item["at"], f"{where}.at")
    if kind == "silence":
        extra = [k for k in item if k not in ("silence", "at")]
        if extra:
            raise check.fail(f"{where}.{extra[0]}", "does not apply to silence")
        return Silence(check.seconds(item["silence"], f"{where}.silence"), at)
    speech = replace(_voice(check, base, item, where), kind=kind, at=at)
    speech = _content(check, speech, item[kind], f"{where}.{kind}")
    return _expectations(check, speech, item, where)


def _content(check: _Fields, speech: Speech, value: Any, where: str) -> Speech:
    if isinstance(value, str):
        return replace(speech, parts=(check.text(value, where),))
    if isinstance(value, dict):
        entry = check.mapping(value, where, ("wav",))
        wav = Path(check.text(entry.get("wav"), f"{where}.wav"))
        wav = wav if wav.is_absolute() else check.source.parent / wav
        if not wav.is_file():
            raise check.fail(f"{where}.wav", f"{wav} not found (paths are relative to the script)")
        return replace(speech, wav=wav)
    if not isinstance(value, list) or not value:
        raise check.fail(where, f"must be text, a list of text and {{pause: SECONDS}}, or {{wav: PATH}}; "
                                f"got {_shown(value)}")
    parts: list[str | float] = []
    for k, part in enumerate(value):
        if isinstance(part, dict):
            pause = check.mapping(part, f"{where}[{k}]", ("pause",))
            parts.append(check.seconds(pause.get("pause"), f"{where}[{k}].pause"))
        else:
            parts.append(check.text(part, f"{where}[{k}]"))
    if isinstance(parts[0], float) or isinstance(parts[-1], float):
        raise check.fail(where, "a pause goes between two pieces of text; before or after, use a silence item")
    return replace(speech, parts=tuple(parts))


def _expectations(check: _Fields, speech: Speech, item: dict, where: str) -> Speech:
    import re

    changes: dict[str, Any] = {}
    for key in ("expect", "expect_regex"):
        if key in item:
            if speech.kind not in RESPONDED_KINDS:
                raise check.fail(f"{where}.{key}", f"a {speech.kind} gets no answer to check")
            changes[key] = check.text(item[key], f"{where}.{key}")
    if "expect_regex" in changes:
        try:
            re.compile(changes["expect_regex"])
        except re.error as exc:
            raise check.fail(f"{where}.expect_regex", f"not a valid regular expression ({exc})") from exc
    if "max_s" in item:
        changes["max_s"] = check.seconds(item["max_s"], f"{where}.max_s")
    elif speech.kind == "backchannel":
        changes["max_s"] = BACKCHANNEL_MAX_S
    return replace(speech, **changes)


def _shown(value: Any) -> str:
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."
