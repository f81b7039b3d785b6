"""The reference server's first packet (bin/server.py ``decoder`` with checkpoints/server.json).

The speech decoder and codec are scripted fakes here, so the token counts and sample positions
are exact; the real engines are exercised by test_runtime.py.
"""

from __future__ import annotations

from types import SimpleNamespace

import numpy as np

from edgevoice.runtime.freeze_omni.speak import Segment, SpeechDecoder, SpeechOptions
from edgevoice.runtime.freeze_omni.speech_tokens import (
    CodecStreamConfig,
    LivePlan,
    SpeechAudioStream,
    trim_leading_quiet,
)

HOP, VOCAB, EOS = 600, 1028, 1026
FACTS = {"width": 4, "rows_per_hidden": 2, "odim": 1024, "bos_id": 1024, "sos_id": 1025, "eos_id": EOS,
         "pad_id": 1027, "max_prefix_rows": 64, "max_text_rows": 64, "max_speech_tokens": 1000, "top_k": 1}
OFFLINE = {"hop": HOP, "chunk": 40, "padding": 10, "first_chunk": None, "quiet_window": 2401, "quiet_threshold": 0.01}
# What the export writes from the published server.json (weights/freeze_omni/server_settings.py).
LIVE = {"first_fifo": {**OFFLINE, "chunk": 20, "quiet_threshold": 0.1}, "fifo": {**OFFLINE, "quiet_threshold": 0.015},
        "trim_level": 0.03}


class Scripted:
    """A Runner stand-in: ``infer`` calls ``fn``; no state is carried."""

    def __init__(self, fn):
        self.fn, self.component = fn, SimpleNamespace(state={})

    def initial_state(self, batch: int) -> dict:
        return {}

    def infer(self, feeds: dict) -> dict:
        return self.fn(feeds)


def token_runner(count: int) -> Scripted:
    """Chooses token 7 ``count`` times, then EOS (greedy: top_k 1)."""
    calls = {"n": 0}

    def step(feeds):
        logits = np.zeros((1, VOCAB), np.float32)
        logits[0, 7 if calls["n"] < count else EOS] = 1.0
        calls["n"] += 1
        return {"logits": logits}

    return Scripted(step)


def fake_codec(level: float, lead: int = 0):
    """tokens (T,) -> PCM (T * HOP,): ``lead`` zeros, then +-``level`` alternating (mean |x| = level)."""

    def decode(tokens: np.ndarray) -> np.ndarray:
        pcm = level * np.where(np.arange(len(tokens) * HOP) % 2 == 0, 1.0, -1.0).astype(np.float32)
        pcm[:lead] = 0.0
        return pcm

    return decode


def codec_runner(level: float, lead: int = 0) -> Scripted:
    decode = fake_codec(level, lead)
    return Scripted(lambda feeds: {"pcm": decode(feeds["tokens"][0])[None]})


def decoder(codec: Scripted, tokens: int, live: dict | None, options: SpeechOptions = SpeechOptions()) -> SpeechDecoder:
    nothing = Scripted(lambda feeds: {})
    codec_facts = {"sample_rate": 24000, "fifo": OFFLINE, **({"live": live} if live is not None else {})}
    return SpeechDecoder(nothing, nothing, token_runner(tokens), codec, FACTS, codec_facts,
                         lambda ids: np.zeros((len(ids), 8), np.float32), options)


def tokens_before_first_audio(speech: SpeechDecoder, index: int = 0) -> tuple[int, np.ndarray]:
    """(speech tokens chosen before the first non-empty PCM piece, that piece)."""
    segment = Segment(index, [1, 2], np.zeros((2, 8), np.float32), "hi")
    tokens = 0
    for piece in speech.speak(segment, [1, 2], lambda kind: None):
        tokens += 1  # one piece per chosen token after the two prefill pieces
        if piece.size:
            return tokens - 2, piece
    raise AssertionError("no audio")


def test_first_segment_speaks_after_30_codec_tokens_instead_of_50():
    """bin/server.py ``decoder``: the first segment (``generate_num == 0``) runs ``llm2TTS.run``
    with ``decoder_first_chunk_size`` 20 (+10 look-ahead); bin/inference.py uses 40 (+10)."""
    quiet = codec_runner(level=0.005)  # quiet enough for either threshold to cut at once
    assert tokens_before_first_audio(decoder(quiet, 200, LIVE))[0] == 30
    assert tokens_before_first_audio(decoder(quiet, 200, None))[0] == 50
    assert tokens_before_first_audio(decoder(quiet, 200, LIVE, SpeechOptions(live=False)))[0] == 50


def test_first_segment_uses_the_looser_quiet_threshold():
    """bin/server.py ``decoder``: ``decoder_seg_threshold_first_pack`` (0.1) for the first
    segment, ``decoder_seg_threshold`` (0.015) after; llm2TTS.run ``find_min_sum_index`` holds a
    chunk whose quietest window is louder than the threshold."""
    audio = codec_runner(level=0.05)  # mean |x| 0.05: under 0.1, over 0.015 and 0.01
    assert tokens_before_first_audio(decoder(audio, 200, LIVE), index=0)[0] == 30
    # A later segment: chunks are held back until the segment ends (200 tokens, then EOS).
    assert tokens_before_first_audio(decoder(audio, 200, LIVE), index=1)[0] == 201
    assert tokens_before_first_audio(decoder(audio, 200, None), index=0)[0] == 201


def test_first_packet_starts_at_the_first_loud_sample():
    """bin/server.py ``decoder``: ``split_idx = nonzero(seg.abs() > 0.03)[-1][0]`` cuts the
    first packet's leading near-silence; later packets and segments are not trimmed."""
    speech = decoder(codec_runner(level=0.05, lead=1000), 200, LIVE)
    _, piece = tokens_before_first_audio(speech, index=0)
    assert abs(piece[0]) == np.float32(0.05)
    untrimmed = SpeechAudioStream(fake_codec(0.05, lead=1000), CodecStreamConfig(**LIVE["first_fifo"]))
    pieces = [p for t in range(30) if (p := untrimmed.push(7)) is not None]
    assert pieces and pieces[0][0] == 0.0 and pieces[0].size - piece.size == 1000


def test_trim_rule():
    """bin/server.py ``decoder``: strictly above the level; a packet with no such sample is kept
    whole (the ``except`` branch)."""
    pcm = np.array([0.0, 0.03, -0.02, -0.031, 0.5], np.float32)
    assert trim_leading_quiet(pcm, 0.03).tolist() == pcm[3:].tolist()
    quiet = np.full(5, 0.01, np.float32)
    assert trim_leading_quiet(quiet, 0.03) is quiet


def test_only_the_first_packet_is_trimmed():
    """bin/server.py ``decoder``: ``generate_num`` counts packets, so the trim applies once."""
    decode = fake_codec(0.05, lead=700)
    stream = SpeechAudioStream(decode, CodecStreamConfig(**LIVE["first_fifo"]), first_packet_trim=0.03)
    pieces = [p for _ in range(80) if (p := stream.push(7)) is not None]
    assert len(pieces) >= 2
    assert pieces[0][0] != 0.0  # trimmed
    plain = SpeechAudioStream(decode, CodecStreamConfig(**LIVE["first_fifo"]))
    plain_pieces = [p for _ in range(80) if (p := plain.push(7)) is not None]
    assert [p.size for p in pieces[1:]] == [p.size for p in plain_pieces[1:]]
    assert pieces[0].size == plain_pieces[0].size - 700


def test_live_plan_from_the_manifest_section():
    """checkpoints/server.json as bin/server.py uses it: chunk 20 / threshold 0.1 first, 40 / 0.015 later."""
    plan = LivePlan.from_config(LIVE)
    assert (plan.first.chunk, plan.first.quiet_threshold, plan.later.chunk, plan.later.quiet_threshold) == (20, 0.1, 40, 0.015)
    assert plan.trim_level == 0.03
    speech = decoder(codec_runner(0.005), 10, LIVE)
    assert speech.live == plan
    assert decoder(codec_runner(0.005), 10, None).live is None  # packages without server.json: offline FIFO
