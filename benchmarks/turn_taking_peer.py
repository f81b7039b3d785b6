"""The turn-taking benchmark's peer: pipecat's ``LocalSmartTurnAnalyzerV3`` behind pipecat's own
Silero VAD analyzer, driven frame by frame the way pipecat's ``TurnAnalyzerUserTurnStopStrategy``
drives it (see ``benchmarks/turn_taking_bench.py``). pipecat-ai is installed for the benchmark only,
``--no-deps`` as the README's setup does; the analyzer also imports three of its dependencies,
which the ``dev`` extra installs (``loguru wait_for2 loudness``).
"""

from __future__ import annotations

import time
from types import SimpleNamespace

import numpy as np


class Pipecat:
    """pipecat's Silero VAD analyzer and LocalSmartTurnAnalyzerV3 with pipecat's defaults."""

    def __init__(self, rate: int, frame: int):
        import asyncio

        from loguru import logger

        logger.remove()  # pipecat logs every analysis at DEBUG
        from pipecat.audio.turn.smart_turn import base_smart_turn
        from pipecat.audio.turn.smart_turn.local_smart_turn_v3 import (
            LocalSmartTurnAnalyzerV3,
        )

        self.rate, self.frame = rate, frame  # Hz; samples per VAD frame, as our policies get them
        # The analyzer's buffer timestamps and its pre-speech cut follow the frames, not the wall clock.
        self.now = 0.0
        base_smart_turn.time = SimpleNamespace(monotonic=lambda: self.now, perf_counter=time.perf_counter)
        self.loop = asyncio.new_event_loop()
        self.analyzer = LocalSmartTurnAnalyzerV3(sample_rate=self.rate)
        self.analyzer.set_sample_rate(self.rate)
        self.ms: list[float] = []

    def vad(self):
        from pipecat.audio.vad.silero import SileroVADAnalyzer

        vad = SileroVADAnalyzer(sample_rate=self.rate)
        vad.set_sample_rate(self.rate)
        return vad

    @property
    def settings(self) -> dict:
        from pipecat.audio.vad.vad_analyzer import VADParams

        p, t = VADParams(), self.analyzer.params
        return {"vad": {"confidence": p.confidence, "start_secs": p.start_secs, "stop_secs": p.stop_secs,
                        "min_volume": p.min_volume},
                "smart_turn": {"stop_secs": t.stop_secs, "pre_speech_ms": t.pre_speech_ms,
                               "max_duration_secs": t.max_duration_secs},
                "wait_for_transcript": False}

    def run(self, audio: np.ndarray) -> dict:
        """The first turn pipecat takes in ``audio`` (float mono at ``rate``)."""
        vad = self.vad()
        try:
            return self._run(audio, vad)
        finally:
            self.analyzer.clear()
            self.loop.run_until_complete(vad.cleanup())  # its model thread

    def _run(self, audio: np.ndarray, vad) -> dict:
        """The VAD's start/stop reach the strategy before the audio frame that raised them, as in pipecat."""
        from pipecat.audio.turn.base_turn_analyzer import EndOfTurnState
        from pipecat.audio.vad.vad_analyzer import VADState

        analyzer = self.analyzer
        analyzer.clear()
        speaking, vad_state, scores = False, VADState.QUIET, []
        pcm16 = np.clip(np.round(audio * 32767), -32768, 32767).astype(np.int16)
        for k, chunk in enumerate(pcm16[: pcm16.size // self.frame * self.frame].reshape(-1, self.frame)):
            now = (k + 1) * self.frame / self.rate
            self.now = now
            data = chunk.tobytes()
            state = self.loop.run_until_complete(vad.analyze_audio(data))
            complete = False
            if state != vad_state and state in (VADState.SPEAKING, VADState.QUIET):
                vad_state = state
                if state is VADState.SPEAKING:  # VADUserStartedSpeakingFrame
                    analyzer.update_vad_start_secs(vad.params.start_secs)
                    speaking = True
                else:  # VADUserStoppedSpeakingFrame: one score of the turn so far
                    speaking = False
                    verdict, metrics = self.loop.run_until_complete(analyzer.analyze_end_of_turn())
                    if metrics is not None:
                        self.ms.append(metrics.e2e_processing_time_ms)
                        scores.append({"at_s": round(now, 3), "prob": round(metrics.probability, 4)})
                    complete = verdict == EndOfTurnState.COMPLETE
                    by = "model"
            if not complete and analyzer.append_audio(data, speaking) == EndOfTurnState.COMPLETE:
                complete, by = True, "stop_secs"
            if complete:
                return {"turn_s": round(now, 3), "by": by, "eot_prob": scores[-1]["prob"] if scores else None,
                        "scores": scores}
        return {"turn_s": None, "by": None, "eot_prob": None, "scores": scores}
