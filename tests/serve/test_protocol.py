"""The wire protocol's parsing and refusals (docs/serve.md), without sockets or engines."""

from __future__ import annotations

import json

import numpy as np
import pytest

from edgevoice.runtime.events import Event
from edgevoice.serve import protocol as wire
from edgevoice.serve.server import WEB_DIR, _token_policy, is_loopback, presented_token, web_file
from edgevoice.errors import EdgevoiceError


def test_hello_round_trips_and_defaults_the_output_rate():
    assert wire.parse_hello(wire.hello_message(16000, 24000)) == wire.Hello(16000, 24000)
    assert wire.parse_hello('{"type": "hello", "rate": 48000}') == wire.Hello(48000, None)


@pytest.mark.parametrize("message, fragment", [
    ("not json", "JSON"),
    (b"\x00\x01", "first message"),
    ('["hello"]', "type"),
    ('{"type": "bye"}', 'must be "hello"'),
    ('{"type": "hello", "rate": 4000}', "8000 to 48000"),
    ('{"type": "hello", "rate": 16000.5}', "integer"),
    ('{"type": "hello", "rate": true}', "integer"),
    ('{"type": "hello", "rate": 16000, "format": "opus"}', "pcm16"),
    ('{"type": "hello", "rate": 16000, "output_rate": 96000}', "output_rate"),
    ('{"type": "hello", "rate": 16000, "pad": "' + "x" * 5000 + '"}', "at most"),
])
def test_bad_hellos_are_refused_with_1003(message, fragment):
    with pytest.raises(wire.ProtocolError, match=fragment) as caught:
        wire.parse_hello(message)
    assert caught.value.code == wire.UNSUPPORTED


def test_audio_frames_must_be_whole_samples_of_10_to_200_ms():
    pcm = wire.float_to_pcm16(np.full(320, 0.5, np.float32))  # 20 ms at 16 kHz
    assert np.allclose(wire.pcm16_to_float(pcm, 16000), 0.5)
    for frame, fragment in ((pcm + b"\x00", "odd"), (pcm[:100], "got 50 samples"), (pcm * 11, "got 3520 samples")):
        with pytest.raises(wire.ProtocolError, match=fragment):
            wire.pcm16_to_float(frame, 16000)


def test_float_to_pcm16_clips_instead_of_wrapping():
    pcm = np.frombuffer(wire.float_to_pcm16(np.array([2.0, -2.0, 0.0], np.float32)), "<i2")
    assert pcm.tolist() == [32767, -32768, 0]


def test_after_hello_only_bye_is_a_text_message():
    assert wire.check_client_text(wire.BYE_MESSAGE) == "bye"
    with pytest.raises(wire.ProtocolError, match="not a message type"):
        wire.check_client_text('{"type": "hello", "rate": 16000}')


def test_events_travel_as_talk_writes_them():
    event = Event(1.5, "reply_text", 2, {"text": "Paris."})
    body = json.loads(wire.event_message(event))
    assert body["type"] == "event" and body["event"] == json.loads(event.to_json())
    assert wire.event_from_message(body) == event


def test_tokens_come_from_the_header_or_the_query():
    assert presented_token("token=abc", None) == "abc"
    assert presented_token("token=abc", "Bearer xyz") == "xyz"
    assert presented_token("token=abc", "Basic xyz") == "abc"
    assert presented_token("", "Basic xyz") is None
    assert presented_token("", None) is None


def test_web_files_are_plain_files_directly_in_their_folder(tmp_path):
    assert web_file(WEB_DIR, "worklet.js") == WEB_DIR / "worklet.js"
    (tmp_path / "page.html").write_text("<p>")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "x.js").write_text("")
    (tmp_path / ".hidden").write_text("")
    (tmp_path / "out.txt").symlink_to(WEB_DIR / "worklet.js")  # a link out of the folder
    assert web_file(tmp_path, "page.html") == tmp_path.resolve() / "page.html"
    for name in ("", "..", "../page.html", ".hidden", "sub/x.js", "sub\\x.js", "sub", "missing.js", "out.txt"):
        assert web_file(tmp_path, name) is None, name


def test_no_token_only_on_loopback_and_only_when_asked():
    assert len(_token_policy(None, False, "0.0.0.0")) >= 16  # generated
    assert _token_policy(None, True, "127.0.0.1") is None
    assert is_loopback("::1") and is_loopback("localhost") and not is_loopback("0.0.0.0")
    with pytest.raises(EdgevoiceError, match="loopback"):
        _token_policy(None, True, "0.0.0.0")
    with pytest.raises(EdgevoiceError, match="empty"):
        _token_policy("", False, "127.0.0.1")
