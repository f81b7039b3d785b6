"""The listen loop's own timing: a released reply sounds as soon as its audio is ready, not at the
next microphone frame."""

from __future__ import annotations

import math

import numpy as np
from pytest import approx

from edgevoice.audio.io import FileIO
from edgevoice.runtime import events as ev
from edgevoice.runtime.loop import MIC_WAIT_S, START_CHECK_S, ListenLoop
from edgevoice.runtime.reply import Generation
from edgevoice.runtime.turns import TurnOptions, VadTurnPolicy

RATE = 16000
FRAME = 512  # 32 ms
BLOCK_S = 0.01  # FileIO's device block
# The first frame is whole after 4 blocks; the loop reads it with the speaker's reference, one block behind.
FIRST_FRAME_S = math.ceil(FRAME / (RATE * BLOCK_S)) * BLOCK_S + BLOCK_S


class OneReplyLoop(ListenLoop):
    """Takes the floor with a reply after the first frame; its audio arrives at ``ready_at``
    (None: never), as a speak stage finishing between two frames would deliver it."""

    def __init__(self, io: FileIO, ready_at: float | None):
        super().__init__(io, FRAME, echo_cancellation=False, events=None, speaker_lead_s=0.5)
        self.policy = VadTurnPolicy(TurnOptions())
        self.gen = Generation()
        self.frame_times: list[float] = []  # virtual time at which each frame was heard
        advance_to = io.clock.advance_to

        def advance_and_synthesize(when: float) -> float:
            if ready_at is not None and when >= ready_at and self.gen.reply.written == 0:
                self.gen.reply.append(np.full(2205, 0.1, np.float32))
            return advance_to(when)

        io.clock.advance_to = advance_and_synthesize

    def _listen(self, frame: np.ndarray) -> None:
        self.frame_times.append(self.io.clock.now())
        if len(self.frame_times) == 1:
            self._current = self.gen

    def _tick(self) -> None:
        self._feed_speaker()


def run(ready_at: float | None, waiting=None) -> tuple[OneReplyLoop, list[float]]:
    """The loop after 0.3 s of a recording, and the timeouts of its microphone waits."""
    io = FileIO(np.zeros(RATE, np.float32), recording_rate=RATE, mic_rate=RATE, speaker_rate=22050,
                block_seconds=BLOCK_S)
    loop = OneReplyLoop(io, ready_at)
    if waiting is not None:
        loop._reply_waiting_to_sound = waiting
    timeouts: list[float] = []
    wait_for_mic = io.wait_for_mic
    io.wait_for_mic = lambda samples, timeout, **kw: (timeouts.append(timeout), wait_for_mic(samples, timeout, **kw))[1]
    with io:
        loop.run(0.3)
    assert loop.frame_times[0] == approx(FIRST_FRAME_S, abs=1e-3)  # a speaker block is 220 samples, not 220.5
    assert len(loop.frame_times) >= 8  # the microphone's frames kept coming at their own pace meanwhile
    return loop, timeouts


def first_audio(loop: OneReplyLoop) -> float:
    [first] = loop.events.history(ev.FIRST_AUDIO)
    return first.time


def test_a_reply_sounds_when_its_audio_is_ready_not_at_the_next_frame():
    ready_at = FIRST_FRAME_S + 0.004
    loop, _ = run(ready_at)
    next_frame = min(t for t in loop.frame_times if t >= ready_at)
    assert ready_at <= first_audio(loop) <= ready_at + START_CHECK_S + BLOCK_S
    assert first_audio(loop) < next_frame - 0.015
    # A loop that looks only once per frame plays it at the next frame.
    once_per_frame, _ = run(ready_at, waiting=lambda: False)
    assert first_audio(once_per_frame) == approx(next_frame, abs=1e-3)


def test_the_loop_waits_in_slices_only_while_a_reply_waits_to_sound():
    loop, timeouts = run(ready_at=None)  # the floor is taken, the audio never comes
    assert not loop.events.history(ev.FIRST_AUDIO)
    sliced = timeouts.count(START_CHECK_S)
    assert sliced >= len(loop.frame_times) - 1  # from the second frame on, every wait is sliced
    _, timeouts = run(ready_at=None, waiting=lambda: False)
    assert set(timeouts) == {MIC_WAIT_S}
