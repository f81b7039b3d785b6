"""Turn-taking from Freeze-Omni's turn-state head, gated by an acoustic detector.

Two inputs, because they arrive at different times: the *gate* is decided in the listen loop on
every 160 ms chunk (cheap: the chunk's level), and the *head* verdict of a chunk arrives when
the listen path's engines have run on it (on a worker, a little later). The policy is a pure
state machine over both, so it runs the same on the real clock and the virtual one.

The gate decides which audio the LLM hears at all: it opens at a speech onset, which starts a
user turn, and closes after enough quiet. With the package's Silero VAD (``gate_speech``) it is the
reference server's rule (web/vad.py: VADIterator, threshold 0.8, quiet below 0.65 for 2 s ends the
dialog), fed the VAD's probability of every 512-sample piece of the chunk. Packages without a VAD
graph fall back to the chunk energy (``gate``: RMS in dBFS, ``gate_close_ms`` of quiet), which music
or a door also opens. Both see echo-cancelled audio, so the agent's own voice stays under them.

While the gate is open and the turn is undecided, each chunk's head verdict decides:

    0 keep listening  -> NONE
    1 respond         -> END_OF_TURN, or BARGE_IN when the agent holds the floor
    2 dismiss         -> DISMISS (a noise, or a backchannel over the agent: it keeps speaking)

A turn the gate closes on before the head decided is dismissed. After a decision the rest of the
gated sound is not listened to; the next onset starts the next turn.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from edgevoice.runtime.freeze_omni.turn_state import DISMISS, RESPOND, decide_turn_state
from edgevoice.runtime.turns import Decision, TurnPolicy, TurnState


@dataclass(frozen=True)
class HeadTurnOptions:
    """The acoustic gate in front of the head; durations in milliseconds."""

    gate_level_db: float = -42.0  # chunk RMS (dBFS) that counts as sound
    gate_open_ms: float = 160.0  # sound this long opens the gate (one 160 ms chunk)
    gate_close_ms: float = 1280.0  # quiet this long closes it: the head has this long to say "respond"
    chunk_ms: float = 160.0  # one listen chunk (2560 samples at 16 kHz)
    vad_threshold: float = 0.8  # Silero probability that opens the gate (the reference's VADIterator)
    vad_close_ms: float = 2000.0  # probabilities under vad_threshold - 0.15 this long close it

    def __post_init__(self) -> None:
        if self.gate_open_ms < 0 or self.gate_close_ms <= 0 or self.chunk_ms <= 0 or self.vad_close_ms <= 0:
            raise ValueError("gate_open_ms must be >= 0, gate_close_ms, vad_close_ms and chunk_ms > 0")
        if not 0.15 < self.vad_threshold < 1.0:
            raise ValueError(f"vad_threshold must be in (0.15, 1), got {self.vad_threshold}")


def level_db(chunk: np.ndarray) -> float:
    """RMS of ``chunk`` in dBFS (-inf for digital silence)."""
    rms = float(np.sqrt(np.mean(np.square(chunk, dtype=np.float64)))) if chunk.size else 0.0
    return 20.0 * math.log10(rms) if rms > 0 else -math.inf


class HeadTurnPolicy(TurnPolicy):
    """Decisions for the session from the gate and the turn-state head (same vocabulary as ``VadTurnPolicy``).

    The head never pauses the agent's audio (``paused`` stays False): it decides barge-in directly.
    """

    def __init__(self, options: HeadTurnOptions = HeadTurnOptions()):
        super().__init__()
        self.options = options
        self.gate_open = False
        self.listening = False  # a gated turn is being listened to and the head has not decided
        self.overlap = False  # that turn began while the agent held the floor
        self._sound_run = 0.0  # seconds of consecutive sound
        self._quiet_run = 0.0  # seconds of consecutive quiet

    # --- inputs ------------------------------------------------------------------------------

    def gate(self, time: float, level: float) -> Decision:
        """Feed one chunk's level (dBFS) ending at ``time``; USER_STARTED when it opens the gate."""
        chunk_s = self.options.chunk_ms / 1000
        loud = level >= self.options.gate_level_db
        self._sound_run = self._sound_run + chunk_s if loud else 0.0
        self._quiet_run = 0.0 if loud else self._quiet_run + chunk_s
        if loud:
            self.last_speech = time
        if not self.gate_open:
            if loud and self._sound_run * 1000 >= max(self.options.gate_open_ms, 1e-9):
                return self._open(time - self._sound_run)
            return Decision.NONE
        if self._quiet_run * 1000 >= self.options.gate_close_ms:
            return self._close()
        return Decision.NONE

    def gate_speech(self, time: float, probs) -> Decision:
        """Feed the VAD's speech probabilities of one chunk's pieces (equal lengths, ending at ``time``);
        USER_STARTED when one opens the gate, DISMISS when the gate closes on an undecided turn."""
        probs = np.asarray(probs, dtype=np.float64).reshape(-1)
        piece_s = self.options.chunk_ms / 1000 / len(probs)
        decision, end_threshold = Decision.NONE, self.options.vad_threshold - 0.15
        for i, p in enumerate(probs):
            piece_end = time - (len(probs) - 1 - i) * piece_s
            if p >= self.options.vad_threshold:
                self._quiet_run, self.last_speech = 0.0, piece_end
                if not self.gate_open and decision is Decision.NONE:  # one decision per chunk: reopen at the next
                    decision = self._open(piece_end - piece_s)
            elif self.gate_open and (p < end_threshold or self._quiet_run > 0):
                # Quiet runs from the first piece under the end threshold; only such a piece ends it.
                self._quiet_run += piece_s
                if p < end_threshold and self._quiet_run * 1000 >= self.options.vad_close_ms - 1e-6:
                    decision = self._close() if decision is Decision.NONE else decision
        return decision

    def head(self, probs: np.ndarray) -> Decision:
        """The head's probabilities (3,) for the newest listened chunk."""
        if not self.listening:
            return Decision.NONE
        verdict = decide_turn_state(probs)
        if verdict == DISMISS:
            return self._dismiss()
        if verdict == RESPOND:
            self.listening = False
            barge_in = self.overlap
            self.overlap = False
            self.state = TurnState.THINKING
            return Decision.BARGE_IN if barge_in else Decision.END_OF_TURN
        return Decision.NONE

    # --- what the agent did (the rest is TurnPolicy's) ------------------------------------------

    def _floor_freed(self) -> TurnState:
        self.overlap = False  # the floor is free: a "respond" now ends a turn, it interrupts nothing
        return TurnState.USER_SPEAKING if self.listening else TurnState.LISTENING

    # --- transitions ---------------------------------------------------------------------------

    def _open(self, onset: float) -> Decision:
        self.gate_open, self.listening = True, True
        self.speech_start = onset
        self.overlap = self.state in (TurnState.THINKING, TurnState.SPEAKING)
        if not self.overlap:
            self.state = TurnState.USER_SPEAKING
        return Decision.USER_STARTED

    def _close(self) -> Decision:
        self.gate_open, self._quiet_run = False, 0.0
        if self.listening:  # the sound ended and the head never said "respond"
            return self._dismiss()
        return Decision.NONE

    def _dismiss(self) -> Decision:
        self.listening = False
        if not self.overlap:
            self.state = TurnState.LISTENING
        self.overlap = False
        return Decision.DISMISS
