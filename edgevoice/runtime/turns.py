"""Turn-taking: who holds the floor, from per-frame speech evidence.

A pure state machine, fed one frame at a time (time, speech probability, level), so it runs the
same on the real clock and the virtual one and is tested without audio. It returns decisions; the
session acts on them (start thinking, pause or cancel speech).

States: LISTENING -> USER_SPEAKING -> THINKING -> SPEAKING -> LISTENING.

Barge-in while the agent speaks is two-step, because "mhm" and "wait, no" look the same for the
first few hundred milliseconds: at the user's speech onset the agent's audio *pauses* at once
(within one frame — the runtime fades the queued audio out), then either the user keeps talking
past ``backchannel_max_ms`` and the turn is theirs (barge-in: every stage is cancelled), or the
sound stops sooner and the agent *resumes* where it paused (a backchannel).

The decision vocabulary matches the Freeze-Omni turn-state head (0 keep listening, 1 respond or
barge in, 2 dismiss), so a learned policy can replace ``VadTurnPolicy`` without touching the
session.

Semantic endpointing (``SemanticTurnPolicy``): silence alone cannot tell a thinking pause ("I would
like to know ... what the weather is") from the end of a turn, so an end-of-turn model scores the
user's audio. The policy never runs the model; it stays a pure state machine and trades scores with
the session in two steps:

1. ``update`` sets ``score_wanted`` (for that one frame) to a ``ScoreRequest`` once the silence
   reaches ``eot_first_check_ms``, and again every ``eot_recheck_ms`` while the scores say
   "incomplete". The session scores the turn's audio so far, inline or on a worker.
2. The session hands the probability back with ``score(time, request, prob)``, in the same frame or
   a later one; it returns END_OF_TURN when ``prob >= eot_threshold``. A score for a silence the
   user has since broken by speaking again is stale and ignored.

Whatever the scores say (or if none arrives), the turn is taken at ``eot_max_silence_ms``. Sounds
shorter than ``min_turn_ms`` are never scored: the VAD rule dismisses them as before. Without a
model the session uses ``VadTurnPolicy``: the turn ends ``endpoint_silence_ms`` after the last speech.
Either way ``turn_end`` says how the last turn was judged over (silence, probability, by what).
"""

from __future__ import annotations

import enum
from dataclasses import dataclass


def elapsed_ms(since: float, until: float) -> float:
    """Milliseconds from ``since`` to ``until``, rounded to the microsecond.

    Frame times are multiples of 32 ms that a float holds only nearly: two frames of silence came
    out as 63.99999999999999 ms at 58 of 1999 frame positions, and a 64 ms mark then waited one
    frame (32 ms) more. Marks are whole milliseconds, so rounding loses nothing.
    """
    return round((until - since) * 1000.0, 3)


class TurnState(enum.Enum):
    LISTENING = "listening"
    USER_SPEAKING = "user_speaking"
    THINKING = "thinking"
    SPEAKING = "speaking"


class Decision(enum.Enum):
    NONE = "none"
    USER_STARTED = "user_started"  # speech onset while listening
    END_OF_TURN = "end_of_turn"  # the user finished: respond (head class 1)
    DISMISS = "dismiss"  # the sound was not a turn: keep listening (head class 2)
    PAUSE = "pause"  # possible interruption: stop the agent's audio now, keep its reply
    RESUME = "resume"  # it was a backchannel: continue the paused reply
    BARGE_IN = "barge_in"  # the user took the floor: cancel every stage (head class 1 while speaking)


@dataclass(frozen=True)
class TurnOptions:
    """Timing of turn-taking; every duration in milliseconds."""

    threshold: float = 0.5  # speech probability that counts as speech
    # Speech frames in a row that start a user turn (or pause the agent). Counted in frames, not in
    # clock time: frames reach the policy in bursts when the loop runs late, and two frames stamped
    # 30 ms apart held a third frame's wait (~32 ms) before every barge-in.
    onset_frames: int = 2
    # While the agent speaks, one frame this sure pauses it at once (a pause, undone after
    # ``resume_silence_ms`` if nothing follows): the VAD is slow to rise on a word's first sound,
    # so waiting for a second frame put the pause 133-193 ms (median 163) after the user's onset
    # on open speakers; the first frame over 0.5 scored 0.73-0.97 there, the agent's echo after
    # AEC3 at most 0.03 (BENCHMARKS.md). None: ``onset_frames`` frames, as for a turn's start.
    pause_prob: float | None = 0.7
    endpoint_silence_ms: float = 600.0  # silence this long ends the user's turn
    min_turn_ms: float = 250.0  # shorter utterances are dismissed as noise
    backchannel_max_ms: float = 600.0  # speech over the agent shorter than this is a backchannel
    resume_silence_ms: float = 300.0  # silence after a short burst that lets the paused agent resume
    min_level: float = 0.003  # RMS below this is silence whatever the VAD says (residual echo)
    # Semantic endpointing (used only when the package has an end-of-turn model):
    # Smart Turn is meant to run once the VAD has heard ~200 ms of silence (pipecat's stop_secs).
    eot_first_check_ms: float = 200.0  # silence after which the user's turn is first scored
    eot_threshold: float = 0.5  # end-of-turn probability that takes the turn (Smart Turn's own cut)
    eot_recheck_ms: float = 300.0  # more silence after an "incomplete" score before scoring again
    # A thinking pause rarely lasts past ~1 s in conversation; 2 s bounds what a wrong "incomplete" costs.
    eot_max_silence_ms: float = 2000.0  # the turn is taken after this much silence whatever the model says
    # The words' own verdict (cascade, with think-while-listening): the LLM's probability that the
    # user's transcript could end here (". ? !" or the end of the message next). Below it the words
    # are unfinished ("I would like to know") and the turn is held whatever the audio model says.
    # Chosen on a written list of finished and cut requests (tests/data/text_turn_calibration.json),
    # not on the turn-taking sets: with SmolLM2-135M and the default system prompt, finished ones
    # scored >= 0.04 and cut ones <= 0.004 but one ("The thing is", 0.023).
    text_eot_threshold: float = 0.01
    # The earliest the audio and the words together may end the turn. Their vote can come a few
    # hundred ms into the silence, sooner the faster the machine; a reader's pause after "It was the
    # age of wisdom," is complete to both and lasts ~0.5 s. LiveKit Agents holds a "complete" turn
    # the same way (min_endpointing_delay, 0.5 s). The speculative answer starts long before it.
    text_min_silence_ms: float = 600.0
    # Words this likely to end the turn take it at ``text_sure_min_silence_ms`` even while the audio
    # model still says "incomplete" (by "words"; it is then no longer asked); None: the audio model must
    # agree. Smart Turn hears some finished questions as unfinished for a second or more ("Why is the
    # sky blue?" 0.007 at 224 ms, "complete" only at 1.5 s). 3 of the 30 finished requests of the
    # calibration list reach 0.7, none of its cut ones 0.03; on the turn-taking set 0.7 added no
    # cut-off and 0.5 one (a reader's pause after "... received for good.", 0.56): BENCHMARKS.md.
    text_eot_sure: float | None = 0.7
    # The floor for sure words, in place of ``text_min_silence_ms``: the reader's pauses the floor is
    # for follow words scored 0.03-0.35. With the votes delivered at once (no compute), floors of
    # 300-500 ms for sure words cut off no more of the turn-taking set than 600; 400 keeps a margin.
    text_sure_min_silence_ms: float = 400.0

    def __post_init__(self) -> None:
        for name in ("threshold", "eot_threshold", "text_eot_threshold"):
            if not 0.0 < getattr(self, name) < 1.0:
                raise ValueError(f"{name} must be in (0, 1), got {getattr(self, name)}")
        if self.text_eot_sure is not None and not self.text_eot_threshold <= self.text_eot_sure < 1.0:
            raise ValueError(f"text_eot_sure must be in [text_eot_threshold, 1) or None, got {self.text_eot_sure}")
        if self.onset_frames < 1:
            raise ValueError(f"onset_frames must be at least 1, got {self.onset_frames}")
        if self.pause_prob is not None and not self.threshold <= self.pause_prob < 1.0:
            raise ValueError(f"pause_prob must be in [threshold, 1) or None, got {self.pause_prob}")
        for name in ("endpoint_silence_ms", "min_turn_ms", "backchannel_max_ms", "resume_silence_ms",
                     "min_level", "eot_first_check_ms", "text_min_silence_ms", "text_sure_min_silence_ms"):
            if getattr(self, name) < 0:
                raise ValueError(f"{name} must be >= 0, got {getattr(self, name)}")
        if self.eot_recheck_ms <= 0:  # zero would score the turn on every frame
            raise ValueError(f"eot_recheck_ms must be > 0, got {self.eot_recheck_ms}")
        if self.eot_max_silence_ms < self.eot_first_check_ms:
            raise ValueError(f"eot_max_silence_ms ({self.eot_max_silence_ms}) must be >= eot_first_check_ms "
                             f"({self.eot_first_check_ms}), or the model is never asked")


@dataclass(frozen=True)
class TurnEnd:
    """How the user's last turn was judged over (carried by ``user_speech_end`` and ``turn_taken``)."""

    silence_ms: float  # silence after the last speech frame when the turn was taken
    eot_prob: float | None  # the end-of-turn model's last score of that silence; None: no model, or no score yet
    # "vad" (endpoint silence), "model" (score >= threshold), "words" (``text_eot_sure``) or "max_silence"
    by: str
    text_prob: float | None = None  # the transcript's end-of-turn probability; None: not scored (no text gate)


@dataclass(frozen=True)
class ScoreRequest:
    """The policy asks the session for the end-of-turn probability of the user's turn so far."""

    speech_end: float  # time of the last speech frame: the silence the score is for
    silence_ms: float  # silence heard when it was asked


class TurnPolicy:
    """Who holds the floor, and what the agent did with it: what every policy shares.

    Each policy adds only its evidence of the user's turn (VAD probabilities, the turn-state head)
    and the decisions it draws from it; the session reports the agent's side through these methods.
    """

    def __init__(self) -> None:
        self.state = TurnState.LISTENING
        self.paused = False  # the agent's audio is paused pending a barge-in decision
        self.speech_start: float | None = None  # onset of the current user speech
        self.last_speech: float | None = None  # time of the last speech frame

    def agent_started_speaking(self) -> None:
        if self.state is TurnState.THINKING:
            self.state = TurnState.SPEAKING

    def agent_takes_floor(self) -> None:
        """The agent speaks unprompted (a tool's result arrived while everyone was quiet)."""
        if self.state is TurnState.LISTENING:
            self.state = TurnState.THINKING

    def agent_finished(self) -> None:
        if self.state in (TurnState.THINKING, TurnState.SPEAKING) and not self.paused:
            self.state = self._floor_freed()

    def _floor_freed(self) -> TurnState:
        """The state once the agent's reply is over (a policy still hearing the user says so)."""
        return TurnState.LISTENING


class VadTurnPolicy(TurnPolicy):
    """Turn-taking from VAD probability and signal level."""

    def __init__(self, options: TurnOptions = TurnOptions()):
        super().__init__()
        self.options = options
        self._run_start: float | None = None  # start of the current run of speech frames
        self._run_frames = 0  # speech frames in the current run
        self._onset_reported = False  # the current run already produced its onset decision
        self.turn_end: TurnEnd | None = None  # how the last user turn was judged over

    def update(self, time: float, prob: float, level: float) -> Decision:
        """Feed one frame ending at ``time`` (seconds); return what the session should do."""
        speech = prob >= self.options.threshold and level >= self.options.min_level
        onset = self._track_onset(time, speech)
        if self.state is TurnState.LISTENING:
            return self._listening(onset)
        if self.state is TurnState.USER_SPEAKING:
            return self._user_speaking(time, speech)
        sure = self.options.pause_prob is not None and speech and prob >= self.options.pause_prob
        return self._agent_has_floor(time, speech, onset or (sure and self._run_frames == 1))

    def _track_onset(self, time: float, speech: bool) -> bool:
        """True once per run of speech, when it has lasted ``onset_frames`` frames."""
        if not speech:
            self._run_start, self._run_frames = None, 0
            return False
        self.last_speech = time
        if self._run_start is None:
            self._run_start = time
            self._onset_reported = False
        self._run_frames += 1
        if not self._onset_reported and self._run_frames >= self.options.onset_frames:
            self._onset_reported = True
            return True
        return False

    def _listening(self, onset: bool) -> Decision:
        if not onset:
            return Decision.NONE
        self.state = TurnState.USER_SPEAKING
        self.speech_start = self._run_start
        return Decision.USER_STARTED

    def _user_speaking(self, time: float, speech: bool) -> Decision:
        silence_ms = self._silence_ms(time) if self.last_speech is not None else 0.0
        if speech or silence_ms < self.options.endpoint_silence_ms:
            return Decision.NONE
        if self._turn_ms() < self.options.min_turn_ms:
            self.state = TurnState.LISTENING
            return Decision.DISMISS
        return self._end_turn(silence_ms, None, "vad")

    def _end_turn(self, silence_ms: float, eot_prob: float | None, by: str) -> Decision:
        self.state = TurnState.THINKING
        self.turn_end = TurnEnd(silence_ms, eot_prob, by)
        return Decision.END_OF_TURN

    def _turn_ms(self) -> float:
        """How long the user's current speech has run, onset to last speech frame."""
        return elapsed_ms(self.speech_start, self.last_speech)

    def _silence_ms(self, time: float) -> float:
        """Silence since the last speech frame."""
        return elapsed_ms(self.last_speech, time)

    def _agent_has_floor(self, time: float, speech: bool, onset: bool) -> Decision:
        if not self.paused:
            if onset:
                self.paused = True
                self.speech_start = self._run_start
                return Decision.PAUSE
            return Decision.NONE
        if self._turn_ms() >= self.options.backchannel_max_ms:
            self.paused = False
            self.state = TurnState.USER_SPEAKING  # their turn now; endpointing continues from here
            return Decision.BARGE_IN
        # Long enough that the pause after "Wait," does not count as the end of a backchannel.
        if not speech and self._silence_ms(time) >= self.options.resume_silence_ms:
            self.paused = False
            return Decision.RESUME
        return Decision.NONE


class SemanticTurnPolicy(VadTurnPolicy):
    """``VadTurnPolicy`` whose endpoint is an end-of-turn model's verdict, fed in by the session.

    Only the end of a long enough user turn changes: onsets, dismissals of short sounds (still at
    ``endpoint_silence_ms``), pauses, backchannels and barge-ins are the VAD policy's.

    With ``text_gate`` the user's words vote too: the session hands in the transcript's end-of-turn
    probability for each silence (``text_score``), and the turn is taken only when the audio model
    says "complete" *and* the words could end there, and no sooner than ``text_min_silence_ms``;
    words that all but certainly end there (``text_eot_sure``) need no "complete" from the audio and
    end the turn sooner (``text_sure_min_silence_ms``).
    The audio model hears a falling pitch; the words know "I would like to know" is unfinished
    however it was said. Words that never come (no transcript: ``None``) leave the decision to the
    audio; the turn is still taken at ``eot_max_silence_ms`` whatever either says.
    """

    def __init__(self, options: TurnOptions = TurnOptions(), text_gate: bool = False):
        super().__init__(options)
        self.text_gate = text_gate
        self.score_wanted: ScoreRequest | None = None  # set for one frame: score the turn now, then call score()
        self._silence_of: float | None = None  # the last speech frame whose silence the fields below follow
        self._next_check_ms = options.eot_first_check_ms  # silence at which to ask for the next score
        self._awaited: ScoreRequest | None = None  # asked and not answered: no second request meanwhile
        self._last_prob: float | None = None  # the latest score of this silence
        self._audio_complete = False  # the audio model said "complete" for this silence; the words decide
        self._words_heard = False  # the words' vote for this silence came (its probability may be None: no words)
        self._words_prob: float | None = None

    def update(self, time: float, prob: float, level: float) -> Decision:
        self.score_wanted = None
        return super().update(time, prob, level)

    def score(self, time: float, request: ScoreRequest, eot_prob: float) -> Decision:
        """The end-of-turn probability for ``request``, measured at ``time``: END_OF_TURN or NONE."""
        fresh = request is self._awaited and request.speech_end == self.last_speech
        if self.state is not TurnState.USER_SPEAKING or not fresh:
            return Decision.NONE  # the user spoke again, or the turn is already over: the score is stale
        self._awaited, self._last_prob = None, float(eot_prob)
        if eot_prob >= self.options.eot_threshold:
            self._audio_complete = True
            return self._end_if_words_agree(time)
        # Incomplete: keep listening; more silence is more evidence, so ask again later.
        self._next_check_ms = request.silence_ms + self.options.eot_recheck_ms
        return Decision.NONE

    def text_score(self, time: float, speech_end: float, text_prob: float | None) -> Decision:
        """The transcript's end-of-turn probability for the silence after ``speech_end`` (None: no
        words were heard): END_OF_TURN when the audio model already said "complete", else NONE."""
        if not self.text_gate or self.state is not TurnState.USER_SPEAKING or speech_end != self.last_speech:
            return Decision.NONE  # the user spoke again, or the turn is already over: stale
        self._follow_silence(speech_end)
        self._words_heard, self._words_prob = True, None if text_prob is None else float(text_prob)
        return self._end_if_words_agree(time) if self._words_decide() else Decision.NONE

    @property
    def words_unfinished(self) -> bool:
        """The words of the current silence were scored unfinished (a pause a listener may answer)."""
        return self._words_heard and not self._words_finished()

    def _end_if_words_agree(self, time: float) -> Decision:
        if self.text_gate and not (self._words_heard and self._words_finished()):
            return Decision.NONE  # wait for the words, or hold: they are unfinished
        if self._too_soon_for_words(time):
            return Decision.NONE  # agreed, but too soon: ``_user_speaking`` takes it once the silence is long enough
        return self._end_turn(self._silence_ms(time), self._last_prob, "model" if self._audio_complete else "words")

    def _too_soon_for_words(self, time: float) -> bool:
        """Words that agree end the turn no sooner than ``text_min_silence_ms``, sure words no sooner
        than ``text_sure_min_silence_ms`` (no words: the audio alone)."""
        if not self.text_gate or self._words_prob is None:
            return False
        floor = self.options.text_sure_min_silence_ms if self._words_sure() else self.options.text_min_silence_ms
        return self._silence_ms(time) < floor

    def _words_decide(self) -> bool:
        """The audio said "complete", or the words are sure: what is left is the words' floor."""
        return self._audio_complete or self._words_sure()

    def _words_sure(self) -> bool:
        """The words alone are enough (``text_eot_sure``): no need to wait for the audio model's "complete"."""
        sure = self.options.text_eot_sure
        return sure is not None and self._words_prob is not None and self._words_prob >= sure

    def _words_finished(self) -> bool:
        return self._words_prob is None or self._words_prob >= self.options.text_eot_threshold

    def _end_turn(self, silence_ms: float, eot_prob: float | None, by: str) -> Decision:
        decision = super()._end_turn(silence_ms, eot_prob, by)
        if self._words_heard:
            self.turn_end = TurnEnd(silence_ms, eot_prob, by, text_prob=self._words_prob)
        return decision

    def _user_speaking(self, time: float, speech: bool) -> Decision:
        if speech or self.last_speech is None or self._turn_ms() < self.options.min_turn_ms:
            return super()._user_speaking(time, speech)  # too short to be a turn: the VAD rule dismisses it
        self._follow_silence(self.last_speech)
        silence_ms = self._silence_ms(time)
        if silence_ms >= self.options.eot_max_silence_ms:
            return self._end_turn(silence_ms, self._last_prob, "max_silence")
        if self.text_gate and self._words_decide():  # once the silence is long enough
            return self._end_if_words_agree(time)
        # Once the audio said "complete", more audio scores add nothing: the words decide.
        if self._awaited is None and not self._audio_complete and silence_ms >= self._next_check_ms:
            self.score_wanted = self._awaited = ScoreRequest(self.last_speech, silence_ms)
        return Decision.NONE

    def _follow_silence(self, speech_end: float) -> None:
        """A new silence (the user spoke since the last one) starts a fresh schedule of checks."""
        if self._silence_of != speech_end:
            self._silence_of = speech_end
            self._next_check_ms = self.options.eot_first_check_ms
            self._awaited = self._last_prob = self._words_prob = None
            self._audio_complete = self._words_heard = False
