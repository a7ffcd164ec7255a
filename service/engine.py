"""The engine: words, sessions and sampling on top of the model runtimes and the session store.
Knows nothing of HTTP, Flask or Redis commands.

A session's stored state is one blob (see `SessionState`): the recurrent state after every token
consumed so far, the state before the last of them, and that last token's id. The second and
third let a generation without a prompt recompute the next-word distribution with one step instead
of storing a vocabulary-sized vector. Every write is a compare-and-set on the session's version;
a step that loses the race is re-run on the fresh state (`cas_retries` times, then 409).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass

import numpy as np

from service import metrics
from service.errors import InvalidInput, ModelMismatch, Overloaded, SessionConflict, UnknownModel
from service.runtime import ModelRuntime
from service.sampling import SamplingParams, make_rng, sample
from service.state import SessionRecord, SessionStore
from service.tokenizer import detokenize, tokenize


@dataclass
class SessionState:
    """Decoded session blob: float32 little-endian `after` and `before` (tensors, layers, hidden), then int64 `last`."""

    after: np.ndarray  # (tensors, layers, hidden): state after every consumed token
    before: np.ndarray  # (tensors, layers, hidden): state before the last consumed token
    last: int  # id of the last consumed token; -1 for a session that has consumed nothing

    @staticmethod
    def nbytes(shape: tuple[int, int, int]) -> int:
        return 2 * 4 * int(np.prod(shape)) + 8

    @classmethod
    def fresh(cls, runtime: ModelRuntime) -> "SessionState":
        return cls(runtime.zero_state(), runtime.zero_state(), -1)

    @classmethod
    def decode(cls, blob: bytes, runtime: ModelRuntime) -> "SessionState":
        if not blob:
            return cls.fresh(runtime)
        shape = runtime.bundle.state_shape
        if len(blob) != cls.nbytes(shape):
            raise ModelMismatch(f"session state has {len(blob)} bytes; model {runtime.bundle.name} needs "
                                f"{cls.nbytes(shape)}: the session was made with another bundle", field="session_id")
        half = (len(blob) - 8) // 2
        after = np.frombuffer(blob, dtype="<f4", count=half // 4).reshape(shape).astype(np.float32)
        before = np.frombuffer(blob, dtype="<f4", count=half // 4, offset=half).reshape(shape).astype(np.float32)
        last = int(np.frombuffer(blob, dtype="<i8", count=1, offset=2 * half)[0])
        if not (np.isfinite(after).all() and np.isfinite(before).all()) or not -1 <= last < runtime.bundle.vocab_size:
            raise ModelMismatch("session state is corrupt (non-finite values or a bad token id)", field="session_id")
        return cls(after, before, last)

    def encode(self) -> bytes:
        return (self.after.astype("<f4").tobytes() + self.before.astype("<f4").tobytes()
                + np.array([self.last], dtype="<i8").tobytes())


@dataclass
class Reading:
    """Text read with a bundle's convention."""

    tokens: list[str]
    ids: np.ndarray  # (seq,) int64
    unknown: list[str]


@dataclass
class Prediction:
    model: str
    reading: Reading
    log_probs: np.ndarray  # (vocab,) float32
    session: dict | None = None


class Engine:
    def __init__(self, runtimes: dict[str, ModelRuntime], store: SessionStore, default_model: str,
                 max_text_tokens: int = 512, cas_retries: int = 64, max_streams: int = 32):
        self.runtimes = runtimes
        self.store = store
        self.default_model = default_model
        self.max_text_tokens = max_text_tokens
        self.cas_retries = cas_retries
        self._streams = threading.BoundedSemaphore(max_streams)
        self.max_streams = max_streams

    # --- models and text -------------------------------------------------------------------------

    def runtime(self, name: str | None) -> ModelRuntime:
        name = name or self.default_model
        try:
            return self.runtimes[name]
        except KeyError:
            raise UnknownModel(f"no model named {name!r}; loaded: {', '.join(sorted(self.runtimes))}",
                               field="model") from None

    def read(self, runtime: ModelRuntime, text: str, field: str = "text") -> Reading:
        bundle = runtime.bundle
        tokens = tokenize(text, bundle.convention)
        if not tokens:
            raise InvalidInput(f"`{field}` has no words", field=field)
        if len(tokens) > self.max_text_tokens:
            raise InvalidInput(f"`{field}` has {len(tokens)} tokens; the limit is {self.max_text_tokens}", field=field)
        ids = np.array([bundle.index.get(t, bundle.unk) for t in tokens], dtype=np.int64)
        unknown = [t for t, i in zip(tokens, ids) if i == bundle.unk and t != "<unk>"]
        metrics.TOKENS_READ.labels(model=bundle.name).inc(len(tokens))
        return Reading(tokens, ids, unknown)

    # --- stateless and session steps -------------------------------------------------------------

    def predict(self, text: str, model: str | None = None, session_id: str | None = None,
                owner: str = "") -> Prediction:
        if session_id is None:
            runtime = self.runtime(model)
            reading = self.read(runtime, text)
            log_probs, _ = runtime.step(reading.ids)
            return Prediction(runtime.bundle.name, reading, log_probs)
        reading: Reading | None = None

        def feed(runtime: ModelRuntime, state: SessionState):
            nonlocal reading
            if reading is None:  # read once, with the session's model; a re-run reuses it
                reading = self.read(runtime, text)
            log_probs, new_state = self._feed(runtime, state, reading.ids)
            return log_probs, new_state, len(reading.ids)

        record, runtime, log_probs = self._update(session_id, owner, model, feed)
        return Prediction(runtime.bundle.name, reading, log_probs, self.session_view(record))

    def _feed(self, runtime: ModelRuntime, state: SessionState, ids: np.ndarray):
        """Feeds ids after state; returns (log_probs after the last id, new SessionState)."""
        before = state.after
        if len(ids) > 1:  # keep the state before the last token: prefix first, then the last token alone
            _, before = runtime.step(ids[:-1], state.after)
        log_probs, after = runtime.step(ids[-1:], before)
        return log_probs, SessionState(after, before, int(ids[-1]))

    def _load(self, session_id: str, owner: str, model: str | None):
        record = self.store.get(session_id, owner)
        if model is not None and model != record.model:
            raise ModelMismatch(f"session {session_id} belongs to model {record.model!r}, not {model!r}",
                                field="model")
        runtime = self.runtime(record.model)
        if record.digest != runtime.bundle.digest:
            raise ModelMismatch(f"session {session_id} was made with another version of {record.model!r} "
                                f"({record.digest[:12]}, serving {runtime.bundle.digest[:12]}); start a new session",
                                field="session_id")
        return record, runtime, SessionState.decode(record.state, runtime)

    def _update(self, session_id: str, owner: str, model: str | None, step):
        """Load -> step -> compare-and-set; a step that lost a race is re-run on the fresh state.

        `step(runtime, state)` returns (log_probs, new SessionState, tokens consumed).
        """
        for attempt in range(self.cas_retries + 1):
            record, runtime, state = self._load(session_id, owner, model)
            log_probs, new_state, consumed = step(runtime, state)
            try:
                record = self.store.compare_and_set(session_id, record.version, new_state.encode(), consumed)
                return record, runtime, log_probs
            except SessionConflict:
                metrics.SESSION_CONFLICTS.labels(model=runtime.bundle.name).inc()
                time.sleep(random.uniform(0, 0.002 * min(attempt + 1, 10)))  # de-synchronise the racers
        raise SessionConflict(f"session {session_id} changed {self.cas_retries + 1} times while this request ran; "
                              "retry", field="session_id")

    # --- generation ------------------------------------------------------------------------------

    def start_generation(self, session_id: str, owner: str, prompt: str | None, params: SamplingParams,
                         max_tokens: int, stop: list[str], started: float | None = None) -> "Generation":
        """Checks and loads everything a generation needs, raising before any event is sent."""
        if not self._streams.acquire(blocking=False):
            raise Overloaded(f"this worker already runs {self.max_streams} generations; retry shortly",
                             headers={"Retry-After": "1"})
        try:
            record, runtime, state = self._load(session_id, owner, None)
            reading = None
            if prompt:
                reading = self.read(runtime, prompt)
                log_probs, state = self._feed(runtime, state, reading.ids)
                fed = len(reading.ids)
            elif state.last < 0:  # nothing read yet: start as at the beginning of a line
                log_probs, state = self._feed(runtime, state, np.array([runtime.bundle.eos]))
                fed = 1
            else:  # the distribution after the last consumed token, recomputed from the state before it
                log_probs, _ = runtime.step(np.array([state.last]), state.before)
                fed = 0
        except BaseException:
            self._streams.release()
            raise
        return Generation(self, record, runtime, state, log_probs, fed, reading, params, max_tokens, set(stop),
                          started or time.perf_counter())

    # --- session lifecycle -----------------------------------------------------------------------

    def create_session(self, model: str | None, owner: str) -> dict:
        runtime = self.runtime(model)
        record = self.store.create(runtime.bundle.name, runtime.bundle.digest, owner)
        metrics.SESSIONS_CREATED.labels(model=runtime.bundle.name).inc()
        return self.session_view(record)

    def session_info(self, session_id: str, owner: str) -> dict:
        return self.session_view(self.store.get(session_id, owner))

    def delete_session(self, session_id: str, owner: str) -> None:
        record = self.store.delete(session_id, owner)
        metrics.SESSIONS_DELETED.labels(model=record.model).inc()

    @staticmethod
    def session_view(record: SessionRecord) -> dict:
        now = time.time()
        return {"session_id": record.session_id, "model": record.model, "model_version": record.digest[:12],
                "tokens": record.tokens, "version": record.version, "created": record.created,
                "updated": record.updated, "expires_in": record.expires_in, "expires_at": now + record.expires_in}


class Generation:
    """One generation as an iterator of events: `token` per sampled word, then `done`.

    Commit rule: a generation writes the session at most once, as a compare-and-set against the
    version it started from; nothing is written while it runs. Each token is fed to the state as
    it is sampled, before its event is yielded.
    - Finished (`done`): the session holds the prompt plus every generated token, a stop word or
      `<eos>` that ended it included; written before the `done` event, which shows the session.
    - Client disconnect: the WSGI server notices when writing an event fails and closes the
      iterator at that event's yield. The session then holds the prompt plus every token whose
      event was yielded, the one whose write failed included: at least every token the client
      received, plus any in flight. `GET /sessions/<id>` counts them; the same seed from the same
      state replays them. A stream closed before its first event commits the prompt alone (for a
      session that had read nothing and got no prompt, the `<eos>` a generation starts from).
    - Error (`event: error`, or the error response when drained): nothing of the generation is
      written, not even its prompt, and nothing is retried later. This covers a failed model step,
      Redis failing at the commit, and another request changing the session meanwhile
      (`session_conflict`): the session is as it was, or as that other request left it.
    A commit that fails after a disconnect leaves the session as it was, too.
    """

    def __init__(self, engine: Engine, record: SessionRecord, runtime: ModelRuntime, state: SessionState,
                 log_probs: np.ndarray, fed: int, reading: "Reading | None", params: SamplingParams,
                 max_tokens: int, stop: set[str], started: float):
        self.engine, self.record, self.runtime = engine, record, runtime
        self.state, self.log_probs, self.fed = state, log_probs, fed
        self.reading, self.params, self.max_tokens, self.stop = reading, params, max_tokens, stop
        self.started = started
        self.committed: SessionRecord | None = None
        self.failed = False  # ended with an error (commit included): nothing of it may be written later
        self._closed = False

    def _commit(self) -> SessionRecord:
        try:
            self.committed = self.engine.store.compare_and_set(self.record.session_id, self.record.version,
                                                               self.state.encode(), self.fed)
        except SessionConflict:  # not re-run: its tokens were already sent
            raise SessionConflict(f"session {self.record.session_id} changed while this generation ran; nothing "
                                  "of it was kept", field="session_id") from None
        return self.committed

    def __iter__(self) -> Iterator[dict]:
        bundle = self.runtime.bundle
        model = bundle.name
        rng = make_rng(self.params.seed)
        banned = frozenset({bundle.unk})
        words: list[str] = []
        finish = "length"
        last_emit = None
        metrics.ACTIVE_STREAMS.inc()
        try:
            for index in range(self.max_tokens):
                token, probability = sample(self.log_probs, self.params, rng, banned)
                self.log_probs, self.state = self.engine._feed(self.runtime, self.state, np.array([token]))
                self.fed += 1
                metrics.TOKENS_GENERATED.labels(model=model).inc()
                now = time.perf_counter()
                if last_emit is None:
                    metrics.STREAM_FIRST_TOKEN.labels(model=model).observe(now - self.started)
                else:
                    metrics.STREAM_INTER_TOKEN.labels(model=model).observe(now - last_emit)
                last_emit = now
                word = bundle.words[token]
                if token == bundle.eos:
                    finish = "eos"
                elif word in self.stop:
                    finish = "stop"
                else:
                    words.append(word)
                yield {"event": "token", "data": {"index": index, "id": token, "word": word,
                                                  "probability": round(float(probability), 6)}}
                if finish != "length":
                    break
            record = self._commit()
            yield {"event": "done", "data": {
                "finish_reason": finish, "text": detokenize(words, bundle.convention), "tokens": index + 1,
                "model": model, "session": self.engine.session_view(record)}}
        except GeneratorExit:  # the client went away: close() below commits what was emitted
            raise
        except BaseException:  # the caller reports this error; a later write would contradict it
            self.failed = True
            raise
        finally:
            metrics.ACTIVE_STREAMS.dec()
            self.close()

    def close(self) -> None:
        """Idempotent: commits what was emitted (if not yet written) and frees the stream slot.

        Also registered as the HTTP response's close callback, so a stream that never started
        (client gone before the first event) still frees its slot.
        """
        if self._closed:
            return
        self._closed = True
        self.engine._streams.release()
        if self.committed is None and self.fed and not self.failed:
            try:  # disconnect mid-stream: keep what was emitted, if the session allows
                self._commit()
            except Exception:  # noqa: BLE001 - the session stays as it was; the caller sees the first error
                pass

    def drain(self) -> dict:
        """The non-streaming response: every token event, then the done event's fields."""
        tokens = []
        for event in self:
            if event["event"] == "token":
                tokens.append(event["data"])
            else:
                return {**event["data"], "token_details": tokens}
        raise AssertionError("generation ended without a done event")
