"""The cascade's end-of-turn model (Smart Turn) at run time: the user's audio in, P(they are done) out.

The ``turn`` component's graph takes the last ``window_samples`` of the user's turn at
``sample_rate`` (8 s at 16 kHz) and returns the probability that the turn is complete. The host
only cuts the window: the newest audio at the end, zeros *before* it when the turn is shorter.

``EndOfTurnScorer`` runs the scoring for a session: on a worker thread, so the listen loop never
waits the 10-30 ms a CPU takes per score, or inline (``threaded=False``), so a conversation on the
virtual clock stays deterministic. ``SemanticTurnPolicy`` (``edgevoice.runtime.turns``) decides when
to score and what a score means.

Packages exported before the component existed have none: ``EndOfTurnModel.from_manifest`` returns
None and ``missing_model_notice`` says how to get one.
"""

from __future__ import annotations

import queue
from collections.abc import Callable

import numpy as np

from edgevoice.backends import open_runner
from edgevoice.errors import EdgevoiceError
from edgevoice.manifest import Manifest
from edgevoice.runtime.turns import ScoreRequest
from edgevoice.runtime.workers import Worker

COMPONENT = "turn"


class EndOfTurnModel:
    """Scores a user turn's audio; holds only the runner and the window's facts (shared by sessions)."""

    def __init__(self, manifest: Manifest, backend: str = "ort", device: str = "cpu"):
        spec = manifest.component(COMPONENT)
        self.sample_rate = int(spec.stream["sample_rate"])
        self.window_samples = int(spec.stream["window_samples"])
        self.input_name = spec.inputs[0].name
        self.output_name = spec.outputs[0].name
        self.runner = open_runner(manifest, COMPONENT, backend=backend, device=device)

    @classmethod
    def from_manifest(cls, manifest: Manifest, backend: str = "ort", device: str = "cpu") -> EndOfTurnModel | None:
        """The package's end-of-turn model, or None when the package has none (exported before it existed)."""
        if COMPONENT not in manifest.components:
            return None
        return cls(manifest, backend=backend, device=device)

    def probability(self, pcm: np.ndarray) -> float:
        """P(the turn is complete) for mono float PCM at ``sample_rate``, oldest sample first."""
        window = last_window(pcm, self.window_samples)
        outputs = self.runner.infer({self.input_name: window[None]})
        return float(outputs[self.output_name].reshape(-1)[0])


def last_window(pcm: np.ndarray, samples: int) -> np.ndarray:
    """The last ``samples`` of ``pcm`` as float32, zero-padded at the start when it is shorter.

    Left padding keeps the newest audio where the model was trained to find it: at the end.
    """
    pcm = np.asarray(pcm, dtype=np.float32).reshape(-1)
    if not np.all(np.isfinite(pcm)):
        raise EdgevoiceError("end-of-turn audio holds NaN or inf samples; the listen loop should have replaced them")
    window = np.zeros(samples, np.float32)
    kept = pcm[-samples:] if pcm.size else pcm
    window[samples - kept.size :] = kept
    return window


class EndOfTurnScorer:
    """A session's scoring of its user's turns: requests in, (request, probability) pairs out.

    The session submits the audio a ``ScoreRequest`` is for and collects finished scores each frame
    with ``finished()``; the policy discards those the user has made stale by speaking again.
    """

    def __init__(self, model: EndOfTurnModel, threaded: bool, on_error: Callable[[str, BaseException], None]):
        self.model = model
        self._worker = Worker("turn", threaded, on_error)
        self._done: queue.SimpleQueue[tuple[ScoreRequest, float]] = queue.SimpleQueue()

    def submit(self, request: ScoreRequest, audio: np.ndarray) -> None:
        self._worker.submit(lambda: self._done.put((request, self.model.probability(audio))))

    def finished(self) -> list[tuple[ScoreRequest, float]]:
        """Scores computed since the last call, oldest first."""
        scores = []
        while True:
            try:
                scores.append(self._done.get_nowait())
            except queue.Empty:
                return scores

    @property
    def idle(self) -> bool:
        return self._worker.idle and self._done.empty()

    def stop(self) -> None:
        self._worker.stop()


def missing_model_notice(manifest: Manifest, endpoint_silence_ms: float) -> str:
    """What to tell a user whose package predates the end-of-turn model."""
    target = manifest.target.get("name", "cpu")
    command = f"edgevoice export --model cascade --target {target} --out {manifest.directory}"
    return (f"this package has no end-of-turn model: a turn ends after {endpoint_silence_ms:.0f} ms of silence, "
            f"so a thinking pause can cut the user off; re-export it with `{command}` to get one")
