"""The `edgevoice serve` wire protocol: message parsing and validation, close codes (docs/serve.md).

One WebSocket per conversation. Text frames are JSON objects with a ``type``; binary frames are
mono PCM16 little-endian audio. The client opens with ``hello`` (its mic rate, optionally the rate
it wants the agent's audio at), the server answers ``ready``; then for every microphone frame the
client sends, the server sends back exactly one frame of the agent's audio of the same duration
(silence while the agent is quiet), with ``event``, ``flush`` and ``error`` messages interleaved.

Everything here is pure (no sockets, no engines), so the server, the Python client and other
front ends (a Ray Serve deployment) parse and refuse the same way.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np

from edgevoice.runtime.events import Event

# Close codes (RFC 6455 section 7.4.1 and the private range for ours).
NORMAL = 1000  # bye, or the conversation ended
GOING_AWAY = 1001  # the server shuts down
UNSUPPORTED = 1003  # malformed JSON, no hello first, wrong format, rate out of range, odd byte count, long frame
POLICY = 1008  # token or origin refused (after an upgrade; before one they are HTTP 401/403)
SERVER_ERROR = 1011  # the conversation failed inside the server
TRY_AGAIN = 1013  # the server holds its maximum of conversations
SLOW_CONSUMER = 4000  # the client stopped reading; its send queue reached its bound

MIN_RATE, MAX_RATE = 8000, 48000  # PCM rates a client may send or ask for
MIN_FRAME_S, MAX_FRAME_S = 0.010, 0.200  # duration of one binary frame
PCM_FORMAT = "pcm16"
# A text message is a small JSON object; nothing legitimate comes near this.
MAX_TEXT_CHARS = 4096


class ProtocolError(Exception):
    """A message the protocol does not allow; ``code`` is the close code, the text its reason."""

    def __init__(self, message: str, code: int = UNSUPPORTED):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Hello:
    """The client's first message: the mic rate it sends, the rate it wants audio back at (None: the package's)."""

    rate: int
    output_rate: int | None = None


def _check_rate(name: str, value: Any) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or not MIN_RATE <= value <= MAX_RATE:
        raise ProtocolError(f"{name} must be an integer from {MIN_RATE} to {MAX_RATE} Hz, got {value!r}")
    return value


def parse_text(message: str) -> dict[str, Any]:
    """A text frame as a JSON object with a string ``type``; ProtocolError otherwise."""
    if len(message) > MAX_TEXT_CHARS:
        raise ProtocolError(f"text messages are at most {MAX_TEXT_CHARS} characters, got {len(message)}")
    try:
        value = json.loads(message)
    except ValueError as exc:
        raise ProtocolError(f"text messages are JSON objects: {exc}") from None
    if not isinstance(value, dict) or not isinstance(value.get("type"), str):
        raise ProtocolError('text messages are JSON objects with a "type"')
    return value


def parse_hello(message: str | bytes) -> Hello:
    """The first message of a conversation; anything else first is refused."""
    if not isinstance(message, str):
        raise ProtocolError('the first message must be the text {"type": "hello", "rate": ..., "format": "pcm16"}')
    value = parse_text(message)
    if value["type"] != "hello":
        raise ProtocolError(f'the first message must be "hello", got "{value["type"]}"')
    if value.get("format", PCM_FORMAT) != PCM_FORMAT:
        raise ProtocolError(f'format must be "{PCM_FORMAT}" (mono 16-bit little-endian), got {value.get("format")!r}')
    rate = _check_rate("rate", value.get("rate"))
    output_rate = value.get("output_rate")
    return Hello(rate, None if output_rate is None else _check_rate("output_rate", output_rate))


def hello_message(rate: int, output_rate: int | None = None) -> str:
    body: dict[str, Any] = {"type": "hello", "rate": rate, "format": PCM_FORMAT}
    if output_rate is not None:
        body["output_rate"] = output_rate
    return json.dumps(body)


def check_client_text(message: str) -> str:
    """The type of a text message after hello; only ``bye`` is defined."""
    kind = parse_text(message)["type"]
    if kind != "bye":
        raise ProtocolError(f'after hello a client sends audio frames and "bye"; "{kind}" is not a message type')
    return kind


def pcm16_to_float(frame: bytes, rate: int) -> np.ndarray:
    """One binary frame -> (samples,) float32 in [-1, 1); ProtocolError for odd, short or long frames."""
    if len(frame) % 2:
        raise ProtocolError(f"audio frames are 16-bit samples: {len(frame)} bytes is an odd count")
    samples = len(frame) // 2
    low, high = round(MIN_FRAME_S * rate), round(MAX_FRAME_S * rate)
    if not low <= samples <= high:
        raise ProtocolError(f"an audio frame holds {MIN_FRAME_S * 1000:.0f} to {MAX_FRAME_S * 1000:.0f} ms "
                            f"({low} to {high} samples at {rate} Hz), got {samples} samples")
    return np.frombuffer(frame, dtype="<i2").astype(np.float32) / 32768.0  # (samples,)


def float_to_pcm16(audio: np.ndarray) -> bytes:
    """(samples,) float32 -> PCM16 LE bytes, clipped to the 16-bit range."""
    return (np.clip(audio, -1.0, 32767 / 32768) * 32768.0).astype("<i2").tobytes()


def ready_message(session: str, rate: int, output_rate: int, max_sessions: int, recipe: str) -> str:
    return json.dumps({"type": "ready", "session": session, "rate": rate, "output_rate": output_rate,
                       "max_sessions": max_sessions, "recipe": recipe})


def event_message(event: Event) -> str:
    """An event as ``talk --events`` writes it, wrapped: {"type": "event", "event": {...}}."""
    return json.dumps({"type": "event", "event": asdict(event)}, default=str)


def event_from_message(body: dict[str, Any]) -> Event:
    """The inverse of ``event_message`` on a parsed message (the client's side)."""
    event = body.get("event")
    if not isinstance(event, dict):
        raise ProtocolError('an "event" message carries an "event" object')
    return Event(float(event.get("time", 0.0)), str(event.get("kind", "")), int(event.get("turn", 0)),
                 dict(event.get("data") or {}))


FLUSH_MESSAGE = json.dumps({"type": "flush"})
BYE_MESSAGE = json.dumps({"type": "bye"})


def error_message(text: str) -> str:
    return json.dumps({"type": "error", "message": text})


def server_full_reason(active: int, limit: int) -> str:
    return f"server full: {active} of {limit} conversations"
