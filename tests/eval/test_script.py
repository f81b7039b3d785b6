"""Eval scripts: what parses, and one clear line naming the field for what does not."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import numpy as np
import pytest

from edgevoice.errors import EdgevoiceError
from edgevoice.eval.script import BACKCHANNEL_MAX_S, Silence, Speech, load_script
from edgevoice.eval.synth import RATE, render

REPO = Path(__file__).resolve().parents[2]

GOOD = """
defaults:
  voice: en-gb
  rate: 170
  options: {open_speakers: true}
conversations:
  - name: one
    timeline:
      - silence: 0.5
      - say: ["Can you tell me", {pause: 1.2}, "how far the moon is?"]
        expect: moon
      - backchannel: mhm
        at: 9.0
  - name: two
    rate: 150
    options: {open_speakers: false, agent_backchannels: true}
    timeline:
      - barge_in: "Wait."
        voice: en-us
        expect_regex: "do+g"
"""


def write(tmp_path: Path, text: str, name: str = "script.yaml") -> Path:
    path = tmp_path / name
    path.write_text(textwrap.dedent(text))
    return path


def test_a_good_script_parses_with_defaults_inherited(tmp_path):
    script = load_script(write(tmp_path, GOOD))
    one, two = script.conversations
    assert isinstance(one.timeline[0], Silence) and one.timeline[0].seconds == 0.5
    say = one.timeline[1]
    assert isinstance(say, Speech) and say.parts == ("Can you tell me", 1.2, "how far the moon is?")
    assert (say.voice, say.rate, say.expect) == ("en-gb", 170, "moon")
    mhm = one.timeline[2]
    assert mhm.kind == "backchannel" and mhm.at == 9.0 and mhm.max_s == BACKCHANNEL_MAX_S
    assert one.options.open_speakers and one.options.cancels_echo  # echo cancellation follows open speakers
    barge = two.timeline[0]
    assert (barge.voice, barge.rate, barge.expect_regex) == ("en-us", 150, "do+g")
    assert not two.options.open_speakers and not two.options.cancels_echo and two.options.agent_backchannels


def test_json_scripts_parse_the_same(tmp_path):
    import yaml

    data = yaml.safe_load(GOOD)
    from_json = load_script(write(tmp_path, json.dumps(data), "script.json"))
    from_yaml = load_script(write(tmp_path, GOOD))
    assert from_json.conversations == from_yaml.conversations


def bad(timeline_item: str) -> str:
    return f"""
    conversations:
      - name: c
        timeline:
          - say: "Hello there."
          - {timeline_item}
    """


@pytest.mark.parametrize("text, field, words", [
    (bad("silence: abc"), "conversations[0].timeline[1].silence", "number of seconds"),
    (bad("silence: -1"), "conversations[0].timeline[1].silence", ">= 0"),
    (bad("{say: Hi, silence: 1}"), "conversations[0].timeline[1]", "exactly one of"),
    (bad("{say: Hi, expct: Paris}"), "conversations[0].timeline[1].expct", "unknown field"),
    (bad("{say: Hi, rate: 20}"), "conversations[0].timeline[1].rate", "80 to 450"),
    (bad("{say: [{pause: 1}, Hi]}"), "conversations[0].timeline[1].say", "between two pieces"),
    (bad("{say: [Hi, {pause: x}, there]}"), "conversations[0].timeline[1].say[1].pause", "number of seconds"),
    (bad("{backchannel: mhm, expect: ok}"), "conversations[0].timeline[1].expect", "no answer to check"),
    (bad("{say: Hi, expect_regex: '(unclosed'}"), "conversations[0].timeline[1].expect_regex", "regular expression"),
    (bad("{say: {wav: missing.wav}}"), "conversations[0].timeline[1].say.wav", "not found"),
    (bad("{silence: 1, voice: en-us}"), "conversations[0].timeline[1].voice", "does not apply to silence"),
    ("conversations: []", "conversations", "non-empty list"),
    ("conversation: []", "script.conversation", "unknown field"),
    ("conversations: [{name: c, timeline: [{silence: 1}]}]", "conversations[0].timeline", "has no user speech"),
    ("conversations: [{name: 'a b', timeline: [{say: Hi}]}]", "conversations[0].name", "letters, digits"),
    ("conversations: [{name: c, timeline: [{say: Hi}]}, {name: c, timeline: [{say: Hi}]}]",
     "conversations[1].name", "used twice"),
    ("conversations: [{name: c, options: {open_speaker: true}, timeline: [{say: Hi}]}]",
     "conversations[0].options.open_speaker", "unknown field"),
    ("conversations: [{name: c, options: {open_speakers: 1}, timeline: [{say: Hi}]}]",
     "conversations[0].options.open_speakers", "true or false"),
])
def test_mistakes_are_one_line_naming_the_field(tmp_path, text, field, words):
    path = write(tmp_path, text)
    with pytest.raises(EdgevoiceError) as caught:
        load_script(path)
    message = str(caught.value)
    assert "\n" not in message
    assert message.startswith(f"{path}: {field}: "), message
    assert words in message


def test_broken_yaml_names_the_line(tmp_path):
    path = write(tmp_path, "conversations:\n  - name: c\n    timeline: [\n")
    with pytest.raises(EdgevoiceError, match=r"not valid YAML \(line \d+\)"):
        load_script(path)


def test_a_missing_script_says_where_examples_are(tmp_path):
    with pytest.raises(EdgevoiceError, match="examples/eval"):
        load_script(tmp_path / "nope.yaml")


def test_render_places_speech_and_pauses_where_the_script_says(tmp_path):
    script = load_script(write(tmp_path, GOOD))
    rendered = render(script.conversations[0])
    say, mhm = rendered.spans
    (first, second), (pause,) = say.segments, say.pauses
    assert first[0] == pytest.approx(0.5, abs=1e-4)  # right after the 0.5 s silence
    assert pause == pytest.approx((first[1], first[1] + 1.2), abs=1e-3)
    assert second[0] == pytest.approx(pause[1], abs=1e-3)
    assert mhm.start == pytest.approx(9.0, abs=1e-4)
    assert mhm.end - mhm.start == pytest.approx(BACKCHANNEL_MAX_S, abs=1e-3)
    audio = rendered.recording
    assert len(audio) == round(9.0 * RATE) + int(BACKCHANNEL_MAX_S * RATE)
    in_pause = audio[int(pause[0] * RATE) + 1 : int(pause[1] * RATE) - 1]
    assert not in_pause.any() and np.abs(audio[int(first[0] * RATE) : int(first[1] * RATE)]).max() > 0.05


def test_an_item_placed_before_the_previous_one_ends_is_refused(tmp_path):
    path = write(tmp_path, "conversations: [{name: c, timeline: [{silence: 2}, {say: Hi, at: 1.0}]}]")
    with pytest.raises(EdgevoiceError, match=r"timeline\[1\]\.at: 1.0 s is before"):
        render(load_script(path).conversations[0])


def test_the_shipped_scripts_parse():
    for name in ("default.yaml", "ci.yaml"):
        script = load_script(REPO / "examples" / "eval" / name)
        assert script.conversations
