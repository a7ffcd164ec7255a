"""service.scheduler on a real tiny bundle: what batches with what, failures, overload, and the decode loop."""

from __future__ import annotations

import threading

import numpy as np
import pytest

from service.bundle import load_bundle
from service.errors import ClientClosedRequest, ModelUnavailable, Overloaded
from service.http.errors import headers
from service.runtime import ModelRuntime
from service.sampling import SamplingParams
from service.scheduler import MAX_UNREAD, Scheduler, Stream


class GatedRuntime(ModelRuntime):
    """The real runtime; its first call waits for `gate`, so everything submitted meanwhile queues up. Records the
    tokens shape of every call."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.gate = threading.Event()
        self.entered = threading.Event()
        self.calls: list[tuple[int, int]] = []

    def run(self, tokens, states, with_log_probs=True):
        if not self.calls:
            self.entered.set()
            assert self.gate.wait(10)
        self.calls.append(tokens.shape)
        return super().run(tokens, states, with_log_probs)


@pytest.fixture
def gated(models_dir):
    runtime = GatedRuntime(load_bundle(models_dir / "tiny-lstm"), device="cpu")
    scheduler = Scheduler(runtime, batch_max=8)
    yield runtime, scheduler
    runtime.gate.set()
    scheduler.close()


def _hold(runtime: GatedRuntime, scheduler: Scheduler):
    """Occupies the scheduler thread with a first call until runtime.gate is set."""
    first = scheduler.submit(np.array([1]))
    assert runtime.entered.wait(10)
    return first


def test_steps_queued_during_a_call_run_together_and_match_single_runs(gated):
    runtime, scheduler = gated
    first = _hold(runtime, scheduler)
    rng = np.random.default_rng(0)
    jobs = [(rng.integers(runtime.bundle.vocab_size, size=1),
             rng.normal(size=runtime.bundle.state_shape).astype(np.float32)) for _ in range(6)]
    steps = [scheduler.submit(t, s) for t, s in jobs]
    runtime.gate.set()
    first.wait(10)
    results = [s.wait(10) for s in steps]
    assert runtime.calls[1] == (6, 1), runtime.calls  # the six one-token steps shared one call
    for (tokens, state), (log_probs, new) in zip(jobs, results):
        alone_lp, alone_state = runtime.run(tokens[None, :], state[:, :, None, :])
        np.testing.assert_allclose(log_probs, alone_lp[0], atol=1e-5)
        np.testing.assert_allclose(new, alone_state[:, :, 0], atol=1e-5)


def test_rows_of_different_length_are_grouped_not_mixed_and_the_batch_is_capped(gated):
    runtime, scheduler = gated
    first = _hold(runtime, scheduler)
    lengths = [1, 3, 1, 3, 5, 1] + [1] * 8
    steps = [scheduler.submit(np.arange(n) + 2) for n in lengths]
    runtime.gate.set()
    first.wait(10)
    for s in steps:
        s.wait(10)
    assert sorted(runtime.calls[1:]) == sorted([(8, 1), (3, 1), (2, 3), (1, 5)]), runtime.calls


def test_a_failing_call_is_a_model_error_and_the_scheduler_survives(models_dir):
    scheduler = Scheduler(ModelRuntime(load_bundle(models_dir / "tiny-lstm"), device="cpu"))
    try:
        with pytest.raises(ModelUnavailable) as err:
            scheduler.step(np.array([scheduler.bundle.vocab_size + 10]))  # out of range: onnxruntime's Gather fails
        assert headers(err.value) == {"Retry-After": "1"}  # through the HTTP layer's table
        log_probs, _ = scheduler.step(np.array([1]))
        assert log_probs.shape == (scheduler.bundle.vocab_size,)
    finally:
        scheduler.close()


def test_a_full_queue_is_overloaded_at_once(gated):
    runtime, scheduler = gated
    scheduler.max_queue = 3
    _hold(runtime, scheduler)
    for _ in range(3):
        scheduler.submit(np.array([1]))
    with pytest.raises(Overloaded):
        scheduler.submit(np.array([1]))


def test_streams_and_one_token_steps_share_each_tick(gated):
    runtime, scheduler = gated
    first = _hold(runtime, scheduler)
    zero, bundle = runtime.zero_state(), runtime.bundle
    start_lp = np.log(np.full(bundle.vocab_size, 1 / bundle.vocab_size, dtype=np.float32))
    streams = [Stream(zero, start_lp, SamplingParams(seed=i), 4, frozenset(), eos=-1) for i in range(3)]
    for s in streams:
        scheduler.start(s)
    step = scheduler.submit(np.array([5]))
    runtime.gate.set()
    first.wait(10)
    step.wait(10)
    ends = []
    for s in streams:
        events = [s.next_event(10) for _ in range(5)]
        assert [e[0] for e in events] == ["token"] * 4 + ["end"] and events[-1][1] == "length"
        ends.append(events)
    assert runtime.calls[1] == (4, 1), runtime.calls  # three streams and the step, one call
    assert runtime.calls[2:] == [(3, 1)] * 3  # then the three streams alone, until their limit


def test_a_cancelled_stream_leaves_at_the_next_tick(models_dir):
    runtime = ModelRuntime(load_bundle(models_dir / "tiny-lstm"), device="cpu")
    scheduler = Scheduler(runtime)
    try:
        start_lp, _ = scheduler.step(np.array([2]))
        stream = Stream(runtime.zero_state(), start_lp, SamplingParams(seed=1), 10_000, frozenset(), eos=-1)
        scheduler.start(stream)
        assert stream.next_event(10)[0] == "token"
        stream.cancel()
        deadline = threading.Event()
        deadline.wait(0.2)
        count = stream.events.qsize()
        deadline.wait(0.2)
        assert stream.events.qsize() == count < 10_000  # nothing more is produced for it
    finally:
        scheduler.close()


def test_a_stream_waits_for_a_reader_that_fell_behind_and_the_others_go_on(models_dir):
    runtime = ModelRuntime(load_bundle(models_dir / "tiny-lstm"), device="cpu")
    scheduler = Scheduler(runtime)
    try:
        start_lp, _ = scheduler.step(np.array([2]))
        stalled, reading = (Stream(runtime.zero_state(), start_lp, SamplingParams(seed=i), 10_000, frozenset(), eos=-1)
                            for i in (1, 2))
        scheduler.start(stalled)
        scheduler.start(reading)
        read = sum(reading.next_event(10)[0] == "token" for _ in range(3 * MAX_UNREAD))  # far past the stalled one
        assert read == 3 * MAX_UNREAD
        held = stalled.events.qsize()
        assert held <= MAX_UNREAD + 1  # it sat out the ticks while nobody read it
        for _ in range(held):
            assert stalled.next_event(10)[0] == "token"
        assert stalled.next_event(10)[0] == "token"  # read again: it advances again
    finally:
        scheduler.close()


def test_one_submission_of_steps_shares_one_call_even_on_an_idle_scheduler(models_dir):
    """Steps queued one by one may be picked up one by one by an idle scheduler; steps queued together never are."""
    runtime = GatedRuntime(load_bundle(models_dir / "tiny-lstm"), device="cpu")
    runtime.gate.set()
    scheduler = Scheduler(runtime)
    try:
        for _ in range(5):
            steps = scheduler.submit_many([(np.array([token]), None, True) for token in range(2, 8)])
            for step in steps:
                step.wait(10)
        assert runtime.calls == [(6, 1)] * 5
    finally:
        scheduler.close()



class _Flag:
    def __init__(self, cancelled: bool = False):
        self.cancelled = cancelled


def test_queued_steps_of_a_gone_caller_are_skipped_and_the_others_run(gated):
    """Steps whose caller has gone by the time their call is formed never reach the model and finish with
    ClientClosedRequest; the other steps of the same submission run as usual."""
    runtime, scheduler = gated
    first = _hold(runtime, scheduler)
    gone, here = _Flag(), _Flag()
    steps = scheduler.submit_many([(np.array([1]), None, True), (np.array([2]), None, True),
                                   (np.array([3, 4]), None, True)], [gone, here, gone])
    gone.cancelled = True  # the caller leaves while its steps wait behind the first call
    runtime.gate.set()
    first.wait(10)
    for step in (steps[0], steps[2]):
        with pytest.raises(ClientClosedRequest):
            step.wait(10)
    log_probs, _ = steps[1].wait(10)
    assert log_probs.shape == (runtime.bundle.vocab_size,)
    assert runtime.calls[1:] == [(1, 1)], runtime.calls  # only the staying caller's step was run
