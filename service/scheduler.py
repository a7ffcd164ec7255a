"""The per-model scheduler: one loop that batches every onnxruntime call of one bundle. Knows nothing of HTTP,
Redis, words or sessions.

The loop runs on a `threading.Thread`: a greenlet under gunicorn's gevent worker (which patches `threading`), a
native thread elsewhere. Either way the model calls and the vectorised sampling run through `service.offload`, on a
native thread that releases the GIL, so a call never stalls the event loop; queues, steps and stream events are
touched only by the loop and its callers, on the loop's side of that hand-off.

Two kinds of work arrive on one queue:
- a `Step`: tokens (seq,) fed after a state (tensors, layers, hidden). The caller waits for the call that
  carries it. Steps of equal length run together, so one-token steps of different sessions always batch; a step
  that needs no distribution (the prefix of a prompt) lets onnxruntime skip the softmax head.
- a `Stream`: the decode loop of one generation (continuous batching). It joins at the next tick and stays until
  it ends. Each tick samples one token for every active stream in one vectorised call (`sample_rows`: each row
  under its own params and seeded generator), puts each token on its stream's queue at once, then feeds all of
  them to the model in one onnxruntime call, together with the queued one-token steps. A stream whose reader went
  away (`Stream.cancel`) leaves at the next tick; one whose reader has fallen MAX_UNREAD tokens behind sits out ticks
  until it catches up; one that reaches its limit, `<eos>` or a stop word leaves after
  the call that fed its last token, with its final state.
Whatever arrives while a call runs joins the next one, so batches grow with load; a caller's steps arrive as one
submission, so they share a call. A step may carry its caller's cancellation (anything with a `.cancelled`): one
whose caller has gone when its call is being formed is skipped, and finishes with `ClientClosedRequest`.
`batch_wait` delays every call a moment for more rows, as Triton's queue delay (0 by default; tests use it to pace
streams).
A row's result never depends on the other rows of its call.
"""

from __future__ import annotations

import logging
import queue
import threading
import time

import numpy as np

from service import metrics
from service.errors import ClientClosedRequest, ModelUnavailable, Overloaded
from service.offload import offloader
from service.runtime import ModelRuntime
from service.sampling import SamplingParams, make_rng, sample_rows

log = logging.getLogger(__name__)

MAX_UNREAD = 32  # tokens a stream may run ahead of its reader before it waits for it
READER_POLL_S = 0.01  # how soon a loop whose streams all wait for their readers looks again


class Step:
    """One step: a caller waits on it (`wait`); the scheduler thread completes it (`finish`) exactly once."""

    __slots__ = ("tokens", "state", "with_log_probs", "cancel", "queued_at", "_result", "_error", "_done")

    def __init__(self, tokens: np.ndarray, state: np.ndarray, with_log_probs: bool = True, cancel=None):
        self.tokens = tokens  # (seq,) int64
        self.state = state  # (tensors, layers, hidden) float32
        self.with_log_probs = with_log_probs
        self.cancel = cancel  # the caller's cancellation (`.cancelled`), or None
        self.queued_at = time.perf_counter()
        self._result = None
        self._error: BaseException | None = None
        self._done = threading.Lock()  # held until finish(): a one-shot event without a Condition's overhead
        self._done.acquire()

    def finish(self, result=None, error: BaseException | None = None) -> None:
        self._result, self._error = result, error
        self._done.release()

    def wait(self, timeout: float):
        """(log_probs (vocab,) or None, new state (tensors, layers, hidden)); raises what the call raised."""
        if not self._done.acquire(timeout=timeout):
            raise ModelUnavailable(f"no model step within {timeout:g} s; retry shortly")
        if self._error is not None:
            raise self._error
        return self._result


class Stream:
    """One generation's decode loop. The scheduler thread owns it once started; its reader takes `events`.

    Events, in order: ("token", id, probability) for each sampled token, as soon as it is drawn; then either
    ("end", finish_reason, state_before_last, state_after_last, last_token_id) once the last token has been fed to
    the model, or
    ("error", ServiceError). finish_reason is "length", "eos" or "stop".
    """

    def __init__(self, state: np.ndarray, log_probs: np.ndarray, params: SamplingParams, max_tokens: int,
                 stop_ids: frozenset[int], eos: int):
        self.state = state  # (tensors, layers, hidden): after every token fed so far
        self.log_probs = log_probs  # (vocab,): the distribution of the next token
        self.params = params
        self.rng = make_rng(params.seed)
        self.max_tokens = max_tokens
        self.stop_ids = stop_ids
        self.eos = eos
        self.generated = 0
        self.finish: str | None = None
        self.events: queue.SimpleQueue = queue.SimpleQueue()
        self.cancelled = False
        self._source: tuple[np.ndarray, int] | None = None  # (batch log_probs, row) when log_probs is a row of it

    def ready(self) -> bool:
        """Whether the stream may advance this tick: its reader has taken all but MAX_UNREAD of its tokens, so a reader
        that stops reading holds a bounded number of events and no model time."""
        return self.cancelled or self.events.qsize() < MAX_UNREAD

    def cancel(self) -> None:
        """The reader went away: leave at the next tick, nothing more is sent."""
        self.cancelled = True

    def next_event(self, timeout: float) -> tuple:
        try:
            return self.events.get(timeout=timeout)
        except queue.Empty:
            raise ModelUnavailable(f"no token within {timeout:g} s; retry shortly") from None


class Scheduler:
    """Batches one model's steps and runs the decode loop of its streams, on one thread."""

    def __init__(self, runtime: ModelRuntime, batch_max: int = 64, batch_wait_ms: float = 0.0, max_queue: int = 4096,
                 timeout: float = 60.0):
        self.runtime = runtime
        self.bundle = runtime.bundle
        self.batch_max = batch_max
        self.batch_wait = batch_wait_ms / 1000.0
        self.max_queue = max_queue
        self.timeout = timeout  # how long a caller waits for its step before giving up
        self._banned = frozenset({runtime.bundle.unk})  # generation never samples <unk>
        self._queue: queue.SimpleQueue = queue.SimpleQueue()  # list[Step] | Stream | None (close)
        self._pending: list[Step] = []
        self._streams: list[Stream] = []
        self._wait = metrics.BATCH_WAIT.labels(model=self.bundle.name)
        self._generated = metrics.TOKENS_GENERATED.labels(model=self.bundle.name)
        self._native = offloader()  # model calls and sampling: on a native thread, off the event loop
        self._thread = threading.Thread(target=self._loop, name=f"scheduler-{self.bundle.name}", daemon=True)
        self._thread.start()

    # --- callers' side (any thread) ------------------------------------------------------------------------------

    def submit(self, tokens: np.ndarray, state: np.ndarray | None = None, with_log_probs: bool = True) -> Step:
        """Queues a step."""
        return self.submit_many([(tokens, state, with_log_probs)])[0]

    def submit_many(self, steps: list[tuple[np.ndarray, "np.ndarray | None", bool]], cancels: list | None = None
                    ) -> list[Step]:
        """Queues several (tokens, state or None, with_log_probs) steps at once: the scheduler takes them in one go, so
        those of equal length share a call (a caller's steps never straggle into separate calls). `cancels`: each
        step's caller's cancellation, or None."""
        if self._queue.qsize() >= self.max_queue:
            raise Overloaded(f"model {self.bundle.name} has {self.max_queue} submissions of steps queued; retry "
                             "shortly")
        cancels = cancels or [None] * len(steps)
        made = [Step(np.ascontiguousarray(tokens, dtype=np.int64), self.runtime.zero_state() if state is None else state,
                     with_log_probs, cancel) for (tokens, state, with_log_probs), cancel in zip(steps, cancels)]
        self._queue.put(made)
        return made

    def step(self, tokens: np.ndarray, state: np.ndarray | None = None, with_log_probs: bool = True):
        """Feeds tokens (seq,) after state; (log_probs (vocab,) or None, new state (tensors, layers, hidden))."""
        return self.submit(tokens, state, with_log_probs).wait(self.timeout)

    def start(self, stream: Stream) -> None:
        """The stream joins at the next tick."""
        self._queue.put(stream)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)

    # --- the scheduler thread ------------------------------------------------------------------------------------

    def _loop(self) -> None:
        while True:
            if self._pending or any(s.ready() for s in self._streams):
                wait = 0.0
            else:  # idle, or every stream waits for its reader: sleep until work arrives (or look again soon)
                wait = READER_POLL_S if self._streams else None
            if not self._collect(wait) or not self._linger():
                self._fail_all(ModelUnavailable(f"model {self.bundle.name} is shutting down"))
                return
            if self._streams:
                self._tick()
            if self._pending:  # steps the tick did not take: one group of equal length per turn
                self._run_group()

    def _collect(self, wait: float | None = 0.0) -> bool:
        """Moves everything queued into pending/streams, waiting up to `wait` s for the first item (None: until one
        comes); False once close() was called."""
        try:
            item = self._queue.get_nowait() if wait == 0.0 else self._queue.get(timeout=wait)
            while True:
                if not self._place(item):
                    return False
                item = self._queue.get_nowait()
        except queue.Empty:
            return True

    def _place(self, item) -> bool:
        """A queued item into streams or pending; False for the close marker."""
        if item is None:
            return False
        if isinstance(item, Stream):
            self._streams.append(item)
        else:
            self._pending += item  # a caller's steps, in order
        return True

    def _linger(self) -> bool:
        """With a batch wait: collect more rows until a call would be full or the wait is over."""
        if self.batch_wait <= 0:
            return True
        deadline = time.perf_counter() + self.batch_wait
        while len(self._streams) + len(self._pending) < self.batch_max:
            left = deadline - time.perf_counter()
            if left <= 0:
                return self._collect()
            try:
                item = self._queue.get(timeout=left)
            except queue.Empty:
                continue
            if not self._place(item):
                return False
        return True

    def _take(self, length: int, limit: int) -> list[Step]:
        """Up to `limit` pending steps of `length` tokens, oldest first; those of a caller that has gone are finished
        with ClientClosedRequest instead."""
        taken, kept = [], []
        for step in self._pending:
            if len(taken) < limit and len(step.tokens) == length:
                if step.cancel is not None and step.cancel.cancelled:
                    step.finish(error=ClientClosedRequest("the client went away; its model steps were skipped"))
                    continue
                taken.append(step)
            else:
                kept.append(step)
        self._pending = kept
        now = time.perf_counter()
        for step in taken:
            self._wait.observe(now - step.queued_at)
        return taken

    def _run_group(self) -> None:
        group = self._take(len(self._pending[0].tokens), self.batch_max)
        if not group:  # every step taken was a gone caller's
            return
        try:
            log_probs, new = self._native(self._call, [s.tokens for s in group], [s.state for s in group],
                                          any(s.with_log_probs for s in group))
        except Exception as e:  # never let one bad call kill the scheduler thread
            error = self._failure(e)
            for s in group:
                s.finish(error=error)
            return
        for b, s in enumerate(group):
            s.finish((None if log_probs is None or not s.with_log_probs else log_probs[b], new[:, :, b]))

    def _tick(self) -> None:
        live = [s for s in self._streams if not s.cancelled and s.ready()]
        self._streams = [s for s in self._streams if not s.cancelled and not s.ready()]  # held for their readers
        for start in range(0, len(live), self.batch_max):
            chunk = live[start:start + self.batch_max]
            steps = self._take(1, self.batch_max - len(chunk)) if start + self.batch_max >= len(live) else []
            self._streams += self._advance(chunk, steps)

    def _advance(self, streams: list[Stream], steps: list[Step]) -> list[Stream]:
        """Samples a token for each stream, then feeds them (and the one-token steps) in one call; the streams that
        go on."""
        n = len(streams)
        try:
            tokens, probs = self._native(self._sample, streams)
        except Exception as e:
            error = self._failure(e)
            for s in streams:
                s.events.put(("error", error))
            return []
        for s, token, probability in zip(streams, tokens.tolist(), probs.tolist()):
            s.generated += 1
            if token == s.eos:
                s.finish = "eos"
            elif token in s.stop_ids:
                s.finish = "stop"
            elif s.generated >= s.max_tokens:
                s.finish = "length"
            s.events.put(("token", token, probability))
        self._generated.inc(n)
        try:
            log_probs, new = self._native(self._call, [*tokens[:, None], *[s.tokens for s in steps]],
                                          [s.state for s in streams] + [s.state for s in steps], True)
        except Exception as e:
            error = self._failure(e)
            for s in streams:
                s.events.put(("error", error))
            for s in steps:
                s.finish(error=error)
            return []
        going = []
        for b, (s, token) in enumerate(zip(streams, tokens.tolist())):
            before, s.state = s.state, new[:, :, b]
            if s.finish is not None:
                s.events.put(("end", s.finish, np.ascontiguousarray(before), np.ascontiguousarray(s.state), token))
                continue
            s.log_probs, s._source = log_probs[b], (log_probs, b)
            going.append(s)
        for b, s in enumerate(steps, start=n):
            s.finish((log_probs[b], new[:, :, b]))
        return going

    def _call(self, tokens: list[np.ndarray], states: list[np.ndarray], with_log_probs: bool):
        """One onnxruntime call over rows of equal length (on the native thread): (log_probs (batch, vocab) or None,
        new states (tensors, layers, batch, hidden))."""
        return self.runtime.run(np.stack(tokens),  # (batch, seq)
                                np.stack(states, axis=2),  # (tensors, layers, batch, hidden)
                                with_log_probs=with_log_probs)

    def _sample(self, streams: list[Stream]) -> tuple[np.ndarray, np.ndarray]:
        """One token per stream: on the device where the last call left its rows (plain temperature sampling of
        streams that were all in that call), else on the host (service/sampling.py)."""
        source = streams[0]._source
        same_call = source is not None and all(s._source is not None and s._source[0] is source[0]
                                               for s in streams)
        if same_call and hasattr(source[0], "sample") and all(not s.params.greedy and not s.params.filtered
                                                             for s in streams):
            return source[0].sample(np.array([s._source[1] for s in streams]), [s.params for s in streams],
                                    [s.rng for s in streams])
        return sample_rows(self._stacked(streams, same_call), [s.params for s in streams],
                           [s.rng for s in streams], self._banned)

    @staticmethod
    def _stacked(streams: list[Stream], same_call: bool) -> np.ndarray:
        """(streams, vocab) on the host: the rows of the last call as they are when the streams are its first rows
        in order (the steady state on CPU), else a stacked copy (device rows come over whole)."""
        source = streams[0]._source
        if same_call and isinstance(source[0], np.ndarray) and all(s._source[1] == i for i, s in enumerate(streams)):
            return source[0][: len(streams)]
        if same_call and hasattr(source[0], "host"):
            return source[0].host(np.array([s._source[1] for s in streams]))
        return np.stack([np.asarray(s.log_probs) for s in streams])

    def _failure(self, error: Exception) -> ModelUnavailable:
        log.error("onnxruntime call failed for %s: %s: %s", self.bundle.name, type(error).__name__, error,
                  exc_info=error)
        return ModelUnavailable(f"model {self.bundle.name} failed to run: {type(error).__name__}")

    def _fail_all(self, error: ModelUnavailable) -> None:
        self._collect()
        for s in self._pending:
            s.finish(error=error)
        for stream in self._streams:
            stream.events.put(("error", error))
        self._pending, self._streams = [], []
