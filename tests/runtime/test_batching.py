"""Cross-session batching (edgevoice.runtime.batching): window bound, grouping, errors, bounds, and
batched rows equal to per-session calls on real graphs.

Timing is checked on a fake clock (the batcher asks it for the time and for every wait), never
on the wall clock: the fake one advances by exactly what the batcher asked to wait.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from edgevoice.backends import open_runner
from edgevoice.backends.base import Runner
from edgevoice.manifest import Component, DimRange, TensorSpec
from edgevoice.runtime.batching import (
    BatchedRunner,
    BatcherClosed,
    BatcherFull,
    BatchMembers,
    BatchOptions,
    batch_support,
    batched,
    wait_needed,
)

WINDOW_MS = 2.0


class FakeClock:
    """Time moves only when the batcher waits, by exactly the timeout it asked for."""

    def __init__(self) -> None:
        self.t = 0.0
        self.waits: list[float] = []

    def now(self) -> float:
        return self.t

    def wait(self, condition, timeout: float) -> None:
        self.waits.append(timeout)
        self.t += timeout


def toy_component(batch_max: int = 1) -> Component:
    """A stateful step whose state's batch dim is not the first (as the VAD's LSTM state)."""
    return Component(
        name="toy", onnx="toy.onnx", opset=18, precision="fp32",
        inputs=(TensorSpec("x", "float32", ("batch", "tokens")), TensorSpec("position", "int64", ("batch",)),
                TensorSpec("h", "float32", (2, "batch", 3))),
        outputs=(TensorSpec("y", "float32", ("batch", "tokens")), TensorSpec("h_out", "float32", (2, "batch", 3))),
        dynamic_dims={"batch": DimRange(1, 1, batch_max), "tokens": DimRange(1, 1, 8)},
        state={"h_out": "h"}, initial_state={"h": "zeros"}, stream={}, license="test",
    )


class ToyRunner(Runner):
    """Row-independent math; records each call's row count and the fake time it ran at."""

    backend = "toy"

    def __init__(self, clock: FakeClock | None = None, batch_max: int = 8):
        super().__init__(toy_component(batch_max))  # as an engine built for batches up to batch_max
        self.clock, self.calls = clock, []

    def _infer_impl(self, feeds):
        x, position, h = feeds["x"], feeds["position"], feeds["h"]  # (B, T), (B,), (2, B, 3)
        if np.isnan(x).any():
            raise ValueError("poisoned row")
        self.calls.append((x.shape[0], self.clock.now() if self.clock else None))
        y = x * 2 + position[:, None] + h.sum(axis=(0, 2))[:, None]
        return {"y": y.astype(np.float32), "h_out": (h + x.sum(axis=1)[None, :, None]).astype(np.float32)}


def toy_feeds(seed: int, tokens: int = 1) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"x": rng.standard_normal((1, tokens)).astype(np.float32), "position": np.array([seed * 7], np.int64),
            "h": rng.standard_normal((2, 1, 3)).astype(np.float32)}


def toy_batcher(members: int = 0, max_batch: int = 8, **options) -> tuple[BatchedRunner, ToyRunner, FakeClock]:
    """A batched toy runner whose worker has not started: tests queue steps first, then start it."""
    clock = FakeClock()
    runner = ToyRunner(clock)
    group = BatchMembers()
    for _ in range(members):
        group.join()
    wrapped = BatchedRunner(runner, BatchOptions(window_ms=WINDOW_MS, max_batch=max_batch, **options), group, clock,
                            start=False)
    return wrapped, runner, clock


def test_wait_needed_runs_when_full_when_everyone_is_in_or_when_the_window_is_over():
    options = BatchOptions(window_ms=2.0, max_batch=4)
    assert wait_needed(4, 2, since=0.0, now=0.0, members=0, options=options) == 0.0  # full
    assert wait_needed(2, 2, since=0.0, now=0.0, members=2, options=options) == 0.0  # everyone is in
    assert wait_needed(1, 1, since=0.0, now=0.0, members=1, options=options) == 0.0  # a lone member
    assert wait_needed(1, 1, since=0.0, now=0.0005, members=3, options=options) == pytest.approx(0.0015)
    assert wait_needed(1, 1, since=0.0, now=0.0005, members=0, options=options) == pytest.approx(0.0015)
    assert wait_needed(1, 1, since=0.0, now=0.5, members=3, options=options) == 0.0  # window long over


def test_a_step_waits_no_longer_than_the_window_for_company():
    wrapped, runner, clock = toy_batcher(members=3)
    future = wrapped.batcher.enqueue(toy_feeds(1))
    wrapped.batcher.start()
    future.result(timeout=10)
    assert runner.calls == [(1, pytest.approx(WINDOW_MS / 1000))]  # ran alone, exactly when its window closed
    assert sum(clock.waits) == pytest.approx(WINDOW_MS / 1000)
    assert all(0 < w <= WINDOW_MS / 1000 for w in clock.waits)
    wrapped.close()


def test_a_step_queued_behind_a_running_call_still_gets_its_window_for_company():
    """Step B arrives while step A's call runs (10 ms on the fake clock): B's window starts when
    the engine is free, not at its submission, so a partner stepping right after A's reply can
    still join it (else two alternating sessions would never share a call)."""
    wrapped, runner, clock = toy_batcher(members=2)
    running, release, second = threading.Event(), threading.Event(), []
    inner = runner._infer_impl

    def slow(feeds):
        running.set()
        release.wait(10)
        clock.t += 0.010  # the call's compute time
        return inner(feeds)

    runner._infer_impl = slow
    wrapped.batcher.start()
    first = wrapped.batcher.enqueue(toy_feeds(1))
    assert running.wait(10)  # A waited its window (2 ms) alone and runs now
    second.append(wrapped.batcher.enqueue(toy_feeds(2)))  # submitted at 2 ms, during A's call
    release.set()
    first.result(timeout=10)
    second[0].result(timeout=10)
    start_of_b = clock.t - 0.010
    assert start_of_b == pytest.approx(0.012 + WINDOW_MS / 1000)  # A ended at 12 ms; B waited 2 ms more
    wrapped.close()


def test_a_lone_member_never_waits():
    wrapped, runner, clock = toy_batcher(members=1)
    wrapped.batcher.start()
    wrapped.infer(toy_feeds(1))
    wrapped.infer(toy_feeds(2))
    assert clock.waits == [] and [t for _, t in runner.calls] == [0.0, 0.0]
    wrapped.close()


def test_steps_of_every_member_run_at_once_in_one_call_and_equal_per_session_calls():
    wrapped, runner, clock = toy_batcher(members=3)
    steps = [toy_feeds(seed) for seed in (1, 2, 3)]  # different states and positions
    futures = [wrapped.batcher.enqueue(feeds) for feeds in steps]
    wrapped.batcher.start()
    results = [f.result(timeout=10) for f in futures]
    assert runner.calls == [(3, 0.0)] and clock.waits == []
    for feeds, got in zip(steps, results):
        alone = runner._infer_impl(feeds)
        for name in ("y", "h_out"):
            np.testing.assert_array_equal(got[name], alone[name])
    wrapped.close()


def test_a_group_that_steps_together_passes_its_state_back_without_a_copy():
    """The second call of the same three sessions gets the first call's state output itself (the
    rows are its consecutive slices), and every row still equals its own call."""
    wrapped, runner, _ = toy_batcher(members=3)
    wrapped.batcher.start()
    steps = [toy_feeds(seed) for seed in (1, 2, 3)]
    seen = []
    inner = runner._infer_impl
    runner._infer_impl = lambda feeds: seen.append(feeds["h"]) or inner(feeds)
    rounds = []
    for _ in range(2):
        results = [f.result(timeout=10) for f in [wrapped.batcher.enqueue(step) for step in steps]]
        expected = [inner(step) for step in steps]
        for step, got, want in zip(steps, results, expected):
            np.testing.assert_array_equal(got["y"], want["y"])
            np.testing.assert_array_equal(got["h_out"], want["h_out"])
            step["h"] = got["h_out"]  # state out -> state in, as a stream does
        rounds.append(results)
    assert len(seen) == 2 and seen[1].shape == (2, 3, 3)
    assert np.shares_memory(seen[1], rounds[0][0]["h_out"])  # no copy: the first call's output itself
    # A session that restored a copy of its state no longer tiles the output: its rows are copied.
    steps[1]["h"] = steps[1]["h"].copy()
    got = [f.result(timeout=10) for f in [wrapped.batcher.enqueue(step) for step in steps]]
    assert not np.shares_memory(seen[2], rounds[1][0]["h_out"])
    for step, row in zip(steps, got):
        np.testing.assert_array_equal(row["h_out"], inner(step)["h_out"])
    wrapped.close()


def test_max_batch_caps_the_rows_of_a_call():
    wrapped, runner, _ = toy_batcher(members=0, max_batch=2)
    futures = [wrapped.batcher.enqueue(toy_feeds(seed)) for seed in range(5)]
    wrapped.batcher.start()
    for f in futures:
        f.result(timeout=10)
    # Two full calls at once; the last step waits out its window alone (members unknown).
    assert runner.calls == [(2, 0.0), (2, 0.0), (1, pytest.approx(WINDOW_MS / 1000))]
    assert dict(wrapped.batcher.stats.sizes) == {2: 2, 1: 1}
    wrapped.close()


def test_steps_of_different_shapes_never_share_a_call():
    wrapped, runner, _ = toy_batcher(members=4)
    steps = [toy_feeds(1, tokens=1), toy_feeds(2, tokens=3), toy_feeds(3, tokens=1), toy_feeds(4, tokens=3)]
    futures = [wrapped.batcher.enqueue(feeds) for feeds in steps]
    wrapped.batcher.start()
    results = [f.result(timeout=10) for f in futures]
    assert sorted(rows for rows, _ in runner.calls) == [2, 2]
    for feeds, got in zip(steps, results):
        np.testing.assert_array_equal(got["y"], runner._infer_impl(feeds)["y"])
    wrapped.close()


def test_an_error_reaches_every_caller_of_the_failed_call_and_the_next_call_runs():
    wrapped, _, _ = toy_batcher(members=3)
    poisoned = toy_feeds(2)
    poisoned["x"][:] = np.nan
    futures = [wrapped.batcher.enqueue(feeds) for feeds in (toy_feeds(1), poisoned, toy_feeds(3))]
    wrapped.batcher.start()
    for f in futures:
        with pytest.raises(ValueError, match="poisoned row"):
            f.result(timeout=10)
    assert wrapped.infer(toy_feeds(4))["y"].shape == (1, 1)  # the batcher survives a failed call
    wrapped.close()


def test_the_queue_is_bounded():
    wrapped, _, _ = toy_batcher(members=0, max_pending=2, submit_timeout_s=0)
    held = [wrapped.batcher.enqueue(toy_feeds(seed)) for seed in (1, 2)]
    with pytest.raises(BatcherFull, match="max_pending=2"):
        wrapped.batcher.enqueue(toy_feeds(3))
    wrapped.batcher.start()
    assert all(f.result(timeout=10)["y"].shape == (1, 1) for f in held)
    wrapped.close()


def test_close_fails_waiting_steps_and_refuses_new_ones():
    wrapped, _, _ = toy_batcher(members=0)
    waiting = wrapped.batcher.enqueue(toy_feeds(1))
    wrapped.close()
    with pytest.raises(BatcherClosed):
        waiting.result(timeout=10)
    with pytest.raises(BatcherClosed):
        wrapped.infer(toy_feeds(2))


def test_a_step_is_checked_against_the_manifest_before_it_joins_a_batch():
    wrapped, _, _ = toy_batcher(members=1)
    wrong = toy_feeds(1)
    wrong["position"] = wrong["position"].astype(np.int32)
    with pytest.raises(Exception, match="dtype int32"):
        wrapped.infer(wrong)
    wrapped.close()


def test_an_engine_built_for_one_row_falls_back_to_its_own_calls():
    wrapped = BatchedRunner(ToyRunner(batch_max=1), BatchOptions(max_batch=8))
    assert wrapped.batcher is None and "batch of 1" in wrapped.support.reason
    assert wrapped.infer(toy_feeds(1))["y"].shape == (1, 1)
    capped = BatchedRunner(ToyRunner(batch_max=4), BatchOptions(max_batch=8))
    assert capped.batcher.options.max_batch == 4
    capped.close()


def test_which_components_batch_is_read_from_the_manifest(cascade_package, tiny_package):
    """Piper's graph (recipes/cascade/piper.py imports it) returns audio (batch, 1, 1, samples): the
    samples dim depends on predicted durations, so rows padded to the longest cannot be cut back."""
    support = {name: batch_support(c) for name, c in cascade_package.components.items()}
    assert not support["tts"].batches and "samples" in support["tts"].reason
    assert all(support[name].batches for name in ("vad", "turn", "asr_encoder", "asr_decoder", "llm"))
    assert all(batch_support(c).batches for c in tiny_package.components.values())
    voice = open_runner(cascade_package, "tts")
    assert batched(voice).batcher is None  # falls back to the runner's own calls


def test_vad_streams_batched_across_threads_equal_per_session_streams(tiny_package):
    """Four sessions with different audio (so different LSTM states, batch dim 1 of the state) step
    their VAD streams on their own threads through one batched runner; every probability and every
    state equals what the session's own plain stream gives (exactly on onnxruntime CPU; tolerance 1e-6)."""
    runner = open_runner(tiny_package, "vad")
    members = BatchMembers()
    wrapped = batched(runner, window_ms=50, max_batch=8, members=members)
    rng = np.random.default_rng(0)
    t = np.arange(512 * 12) / 16000
    audio = [(0.3 * np.sin(2 * np.pi * (150 + 90 * i) * t) * (i % 2) + 0.05 * (i + 1) * rng.standard_normal(t.size))
             .astype(np.float32).reshape(12, 512) for i in range(4)]
    got: dict[int, list] = {}

    def session(i: int) -> None:
        try:
            stream = wrapped.stream()
            got[i] = [(stream({"chunk": chunk[None]})["prob"].copy(), stream.snapshot()) for chunk in audio[i]]
        finally:
            members.leave()

    for _ in range(4):
        members.join()  # every session is counted before any steps, as a server's would be
    threads = [threading.Thread(target=session, args=(i,)) for i in range(4)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=60)
    for i in range(4):
        alone = runner.stream()
        for chunk, (prob, state) in zip(audio[i], got[i]):
            np.testing.assert_allclose(prob, alone({"chunk": chunk[None]})["prob"], rtol=0, atol=1e-6)
            for name, value in alone.snapshot().items():
                np.testing.assert_allclose(state[name], value, rtol=0, atol=1e-6)
    stats = wrapped.batcher.stats
    assert stats.rows == 4 * 12 and max(stats.sizes) > 1  # the steps did share calls
    wrapped.close()


def test_llm_rows_at_different_positions_share_a_call(tiny_package):
    """Freeze-Omni's listen LLM (fo_llm_listen; models/llm.py takes a position per row) after
    prompts of 2, 5 and 9 embeddings: one batched decode call of the three sessions, each at its own
    cache position, gives each session's logits, turn-state head and caches as its own call does
    (tolerance 1e-5)."""
    runner = open_runner(tiny_package, "fo_llm_listen")
    members = BatchMembers()
    for _ in range(3):
        members.join()
    # Not started yet: the first round's steps are all queued before the worker looks.
    wrapped = BatchedRunner(runner, BatchOptions(window_ms=50), members, start=False)
    rng = np.random.default_rng(3)
    width = runner.component.input("input_embeds").shape[-1]
    states, positions = [], []
    for length in (2, 5, 9):
        feeds = {"input_embeds": rng.standard_normal((1, length, width)).astype(np.float32),
                 "position": np.array([0], np.int64)}
        out = runner.infer({**feeds, **runner.initial_state(1)})
        states.append({inp: out[o] for o, inp in runner.component.state.items()})
        positions.append(length)
    for round_ in range(3):  # three decode steps of the three sessions
        steps = [{"input_embeds": rng.standard_normal((1, 1, width)).astype(np.float32),
                  "position": np.array([p], np.int64), **s} for p, s in zip(positions, states)]
        futures = [wrapped.batcher.enqueue(step) for step in steps]
        if round_ == 0:
            wrapped.batcher.start()
        results = [f.result(timeout=30) for f in futures]
        for i, (step, got) in enumerate(zip(steps, results)):
            alone = runner.infer(step)
            for name, value in alone.items():
                np.testing.assert_allclose(got[name], value, rtol=0, atol=1e-5, err_msg=name)
            states[i] = {inp: got[o] for o, inp in runner.component.state.items()}
            positions[i] += 1
    stats = wrapped.batcher.stats
    assert stats.rows == 9 and stats.sizes[3] >= 1
    wrapped.close()


@pytest.mark.slow
def test_whisper_sessions_on_batched_runners_transcribe_as_alone(cascade_package):
    """The drop-in: two sessions' ``WhisperAsr`` (runtime/cascade/asr.py) over one batched encoder
    and decoder, transcribing different sentences on their own threads, give the same tokens as
    the plain runners (decode steps at different cache offsets share calls)."""
    from conftest import espeak

    from edgevoice.runtime.cascade.asr import WhisperAsr

    plain = WhisperAsr.from_manifest(cascade_package)
    members = BatchMembers()
    encoder = batched(plain.encoder, window_ms=20, members=members)
    decoder = batched(plain.decoder, window_ms=20, members=members)
    tokenizer = cascade_package.path(plain.decoder.component.stream["tokenizer"])
    clips = [espeak("What is the weather like in Paris tomorrow?"), espeak("Turn on the kitchen lights.")]
    got: dict[int, tuple[int, ...]] = {}

    def session(i: int) -> None:
        try:
            got[i] = WhisperAsr(encoder, decoder, tokenizer).transcribe(clips[i]).tokens
        finally:
            members.leave()

    for _ in clips:
        members.join()
    threads = [threading.Thread(target=session, args=(i,)) for i in range(len(clips))]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=300)
    for i, clip in enumerate(clips):
        assert got[i] == plain.transcribe(clip).tokens
    assert max(decoder.batcher.stats.sizes) == 2  # the two sessions' decode steps shared calls
    encoder.close()
    decoder.close()


def test_a_batched_encoder_takes_an_abort_between_calls(cascade_package):
    """A dropped speculation's abort reaches a batched encoder too: a joined call serves other
    conversations, so it is checked before and after the call rather than stopping it."""
    from conftest import espeak

    from edgevoice.backends.abort import Abort
    from edgevoice.runtime.cascade.asr import WhisperAsr

    plain = WhisperAsr.from_manifest(cascade_package)
    members = BatchMembers()
    members.join()
    encoder = batched(plain.encoder, window_ms=20, members=members)
    asr = WhisperAsr(encoder, plain.decoder, cascade_package.path(plain.decoder.component.stream["tokenizer"]))
    clip = espeak("Turn on the kitchen lights.")
    try:
        assert asr.transcribe(clip, abort=Abort()).tokens == plain.transcribe(clip).tokens
        dropped = Abort()
        dropped.set()
        aborted = asr.transcribe(clip, abort=dropped)
        assert aborted.stopped and aborted.tokens == ()
    finally:
        members.leave()
        encoder.close()


@pytest.mark.slow
def test_llm_sessions_on_one_batched_runner_reply_as_alone(cascade_package):
    """The drop-in for the LLM: two ``LlmSession``s (runtime/llm.py) on their own threads over one
    batched SmolLM2 runner, with prompts of different lengths (their prompt chunks never share a
    call; their one-token steps at different cache positions do), reply with exactly the tokens
    a session on the plain runner gives (greedy)."""
    from edgevoice.runtime.llm import LlmSession

    plain = LlmSession.from_manifest(cascade_package)
    members = BatchMembers()
    runner = batched(plain.prefill_runner, window_ms=20, members=members)
    tokenizer = cascade_package.path(plain.facts["tokenizer"])
    questions = ["What is the capital of France?", "Name three colours of the rainbow, please, in a list."]
    got: dict[int, list[int]] = {}

    def session(i: int) -> None:
        try:
            llm = LlmSession(runner, None, tokenizer, plain.facts)
            got[i] = [t.token_id for t in llm.generate([{"role": "user", "content": questions[i]}], max_new_tokens=12)]
        finally:
            members.leave()

    for _ in questions:
        members.join()
    threads = [threading.Thread(target=session, args=(i,)) for i in range(len(questions))]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=600)
    for i, question in enumerate(questions):
        plain.reset()
        want = [t.token_id for t in plain.generate([{"role": "user", "content": question}], max_new_tokens=12)]
        assert got[i] == want
    assert max(runner.batcher.stats.sizes) == 2  # decode steps of the two sessions shared calls
    runner.close()
