"""Stage workers: each stage of the runtime (think, speak) runs its jobs in order on its own thread.

Threads, not asyncio: the engines (onnxruntime, TensorRT) are blocking C calls that release the
GIL while they compute, so a thread per stage gives real overlap (the LLM decodes the next phrase
while the voice synthesizes this one) without an event loop that would hand them to threads
anyway. A job never runs on the audio callback thread, and the listen loop only submits jobs.

``threaded=False`` runs each job at once on the caller's thread: with a ``FileIO`` on an unpaced
virtual clock this makes a conversation deterministic (compute takes no virtual time).
"""

from __future__ import annotations

import collections
import queue
import threading
from collections.abc import Iterator
from typing import Any, Callable

Job = Callable[[], Any]


class Worker:
    """A named FIFO of jobs; a failing job is reported through ``on_error`` and the next one runs."""

    def __init__(self, name: str, threaded: bool, on_error: Callable[[str, BaseException], None]):
        self.name, self.threaded, self._on_error = name, threaded, on_error
        self._jobs: queue.Queue[Job | None] = queue.Queue()
        self._pending = 0  # jobs submitted and not finished
        self._lock = threading.Lock()
        self._thread: threading.Thread | None = None
        if threaded:
            self._thread = threading.Thread(target=self._loop, name=f"edgevoice-{name}", daemon=True)
            self._thread.start()

    def submit(self, job: Job) -> None:
        with self._lock:
            self._pending += 1
        if self._thread is None:
            self._run(job)
        else:
            self._jobs.put(job)

    @property
    def idle(self) -> bool:
        """No job running or waiting."""
        with self._lock:
            return self._pending == 0

    def stop(self, timeout: float = 5.0) -> None:
        """Let the current job finish (jobs check their cancel flags), drop the rest, end the thread."""
        if self._thread is None:
            return
        while True:  # drop what has not started
            try:
                self._jobs.get_nowait()
            except queue.Empty:
                break
            with self._lock:
                self._pending -= 1
        self._jobs.put(None)
        self._thread.join(timeout)

    def _loop(self) -> None:
        while True:
            job = self._jobs.get()
            if job is None:
                return
            self._run(job)

    def _run(self, job: Job) -> None:
        try:
            job()
        except Exception as exc:  # noqa: BLE001 - a failed turn is reported; the conversation goes on
            self._on_error(self.name, exc)
        finally:
            with self._lock:
                self._pending -= 1


class Stepper:
    """Runs step jobs (iterators: one engine call per step) in submission order: on its own worker
    thread to the end, or -- inline on a virtual clock -- ``steps_per_tick`` steps per ``tick``, so
    a reply unfolds over virtual time as it would on a device and a barge-in can land inside it."""

    def __init__(self, name: str, threaded: bool, on_error: Callable[[str, BaseException], None], steps_per_tick: int):
        self.name, self.steps_per_tick, self._on_error = name, max(1, steps_per_tick), on_error
        self._worker = Worker(name, True, on_error) if threaded else None
        self._jobs: collections.deque[Iterator[None]] = collections.deque()

    def submit(self, job: Iterator[None]) -> None:
        if self._worker is not None:
            self._worker.submit(lambda: collections.deque(job, maxlen=0))  # run every step
        else:
            self._jobs.append(job)

    def tick(self) -> None:
        """Inline: advance the queued jobs by up to ``steps_per_tick`` steps (threaded: nothing to do)."""
        budget = self.steps_per_tick
        while budget and self._jobs:
            try:
                next(self._jobs[0])
                budget -= 1
            except StopIteration:
                self._jobs.popleft()
            except Exception as exc:  # noqa: BLE001 - a failed reply is reported; the conversation goes on
                self._jobs.popleft()
                self._on_error(self.name, exc)

    @property
    def idle(self) -> bool:
        return self._worker.idle if self._worker is not None else not self._jobs

    def stop(self) -> None:
        if self._worker is not None:
            self._worker.stop()
        self._jobs.clear()
