"""One reply of the agent: its audio as it is synthesized, what of it was played, and its cancel flag.

The speak stage appends phrase audio (at the speaker rate) while the listen loop moves it into the
speaker ring; the two run on different threads, so the buffer is guarded by a lock that is only
held for copies, never while a model runs. A ``Generation`` ties the reply to the job that
produces it: barge-in sets ``cancelled`` and every stage stops at its next check; an engine call
given ``abort`` (Whisper's encoder) stops at once instead.
"""

from __future__ import annotations

import itertools
import threading
from dataclasses import dataclass

import numpy as np

from edgevoice.backends.abort import Abort

_ids = itertools.count(1)


@dataclass(frozen=True)
class SpokenPhrase:
    text: str  # the words of the phrase
    start: int  # first sample of its audio in the reply
    end: int  # one past its last sample


class ReplyAudio:
    """A growing mono float32 buffer with a play cursor; single producer, single consumer."""

    def __init__(self, capacity: int = 1 << 18):
        self._audio = np.zeros(capacity, dtype=np.float32)
        self._lock = threading.Lock()
        self.written = 0  # samples appended so far
        self.cursor = 0  # samples handed to the speaker so far (moves back on a pause)
        self.finished = False  # no more audio will be appended
        self.phrases: list[SpokenPhrase] = []

    def append(self, pcm: np.ndarray) -> None:
        with self._lock:
            end = self.written + pcm.size
            if end > self._audio.size:  # grow by doubling: a reply is seconds long, rarely regrown
                grown = np.zeros(max(end, 2 * self._audio.size), dtype=np.float32)
                grown[: self.written] = self._audio[: self.written]
                self._audio = grown
            self._audio[self.written : end] = pcm
            self.written = end

    def mark_phrase(self, text: str, start: int) -> None:
        """The audio from ``start`` to what is written now speaks ``text`` (for what-was-said)."""
        with self._lock:
            self.phrases.append(SpokenPhrase(text, start, self.written))

    def finish(self) -> None:
        with self._lock:
            self.finished = True

    def take(self, limit: int) -> np.ndarray:
        """Up to ``limit`` samples from the cursor (a copy); advances the cursor."""
        with self._lock:
            end = min(self.written, self.cursor + max(0, limit))
            chunk = self._audio[self.cursor : end].copy()
            self.cursor = end
            return chunk

    def rewind(self, samples: int) -> None:
        """Move the cursor back: queued audio that was dropped from the speaker plays again later."""
        with self._lock:
            self.cursor = max(0, self.cursor - max(0, samples))

    @property
    def exhausted(self) -> bool:
        """Finished and everything handed to the speaker."""
        with self._lock:
            return self.finished and self.cursor >= self.written

    def spoken_text(self, played: int) -> str:
        """The words a listener heard when ``played`` samples had been played: whole phrases, and
        the share of the current phrase's words that its played share covers."""
        with self._lock:
            words: list[str] = []
            for phrase in self.phrases:
                if played >= phrase.end:
                    words += phrase.text.split()
                elif played > phrase.start:
                    share = (played - phrase.start) / max(1, phrase.end - phrase.start)
                    phrase_words = phrase.text.split()
                    words += phrase_words[: int(share * len(phrase_words))]
            return " ".join(words)


class Generation:
    """One reply being produced: its audio, its cancel flag, and what the think stage made of the turn."""

    def __init__(self, speculative: bool = False):
        self.id = next(_ids)
        self.reply = ReplyAudio()
        self.cancelled = threading.Event()
        self.abort = Abort()  # set with ``cancelled``: stops the engine calls given it mid-call
        self.done = threading.Event()  # the think and speak stages have both stopped
        self.speculative = speculative  # made before the turn ended; played only once released
        self.released = threading.Event()  # playback allowed
        if not speculative:
            self.released.set()
        self.transcript: str | None = None  # what the user said (None until transcribed)
        self.text = ""  # the reply text generated so far (tool calls removed)
        self.audio_key: float = 0.0  # the user's last speech time this generation answers (speculation)
        self.said: str | None = None  # set on barge-in: what the listener heard of the reply
        self.history_index: int | None = None  # where the reply sits in the conversation history
        self.pending_history: list[dict[str, str]] | None = None  # a speculation's turn, kept until released

    def cancel(self) -> None:
        self.cancelled.set()
        self.abort.set()
