"""Stopping an engine call from another thread: ``Abort`` and the onnxruntime runner's use of it."""

from __future__ import annotations

import threading

import numpy as np
import pytest
from edgevoice.export import export_package

from edgevoice.backends import open_runner
from edgevoice.backends.abort import Abort, CallAborted


def test_set_tells_the_calls_in_flight_once_and_later_ones_at_once():
    abort, told = Abort(), []
    with abort.hook(lambda: told.append("first")):
        assert not abort.is_set() and told == []
        abort.set()
        assert told == ["first"]
        abort.set()  # a second set tells nobody again
        assert told == ["first"]
    with abort.hook(lambda: told.append("late")):  # registered after the flag: told before it runs
        assert told == ["first", "late"]
    with pytest.raises(CallAborted):
        abort.check()


def test_a_finished_call_is_not_told():
    abort, told = Abort(), []
    with abort.hook(lambda: told.append("done")):
        pass
    abort.set()
    assert told == []


def test_set_from_another_thread_reaches_the_hook():
    abort, told = Abort(), threading.Event()
    with abort.hook(told.set):
        threading.Thread(target=abort.set).start()
        assert told.wait(5.0)


@pytest.fixture(scope="module")
def vad(tmp_path_factory):
    manifest = export_package(model="silero-vad", target="cpu", out=tmp_path_factory.mktemp("pkg"))
    return open_runner(manifest, "vad")


def feeds():
    return {"chunk": np.zeros((1, 512), np.float32), "context": np.zeros((1, 64), np.float32),
            "lstm": np.zeros((2, 1, 128), np.float32)}


def test_onnxruntime_stops_a_call_whose_abort_is_set(vad):
    assert set(vad.infer(feeds(), Abort())) == set(vad.infer(feeds()))  # unset: an ordinary call
    abort = Abort()
    abort.set()
    with pytest.raises(CallAborted) as raised:
        vad.infer(feeds(), abort)
    # onnxruntime itself refused to run (RunOptions.terminate), not a check after a whole run.
    assert "terminate" in str(raised.value.__cause__)


def test_a_backend_that_cannot_stop_midway_checks_before_and_after(vad):
    from edgevoice.backends.base import Runner

    abort = Abort()
    calls = []

    def run_whole(feeds):
        calls.append(1)
        abort.set()  # set while the call ran: its result is dropped
        return vad._infer_impl(feeds)

    plain = Runner(vad.component)
    plain._infer_impl = run_whole
    with pytest.raises(CallAborted):
        plain.infer(feeds(), abort)
    with pytest.raises(CallAborted):
        plain.infer(feeds(), abort)
    assert calls == [1]  # the second call never started
