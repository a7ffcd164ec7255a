"""The engine: words, sessions and generations on top of the per-model schedulers and the session store.
Knows nothing of HTTP, Flask or Redis commands.

A session's stored state is one blob (see `SessionState`): the recurrent state after every token consumed so far,
the state before the last of them, and that last token's id. The second and third let a generation without a
prompt, and a prediction with an empty text (a word being typed, ranked by the HTTP layer), recompute the next-word
distribution with one step instead of storing a vocabulary-sized vector; such a prediction writes nothing. Every
write is a compare-and-set on the session's version: a step that loses the race is re-run on the fresh state
(`cas_retries` times, then 409), unless the caller named the version it expects (If-Match): then nothing is
re-run and a moved version is 412, so a client retrying after a timeout never applies its words twice.

A batch or a generation may carry its caller's cancellation (`Cancel`: anything with a cheap `.cancelled`): the
engine checks it before each wave of steps and before writing, and the scheduler skips the steps of a caller that
has gone; in a group of several callers' items, only that caller's items are dropped (`_apply`).
"""

from __future__ import annotations

import random
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from typing import NamedTuple, Protocol

import numpy as np

from service import metrics
from service.errors import (ClientClosedRequest, Input, InvalidInput, ModelMismatch, Overloaded, PreconditionFailed,
                            ServiceError, SessionConflict, UnknownModel)
from service.group_commit import GroupCommit
from service.sampling import SamplingParams
from service.scheduler import Scheduler, Stream
from service.state import SessionRecord, SessionStore
from service.tokenizer import detokenize, tokenize

TOKEN_TIMEOUT_S = 30.0  # a stream whose next token takes longer than this has failed (the scheduler is stuck)
SIZE_RETRY_S = 60.0  # a session size Redis could not measure is asked again after this long, not per request


class Cancel(Protocol):
    """A caller's cancellation: `cancelled` turns True once nobody waits for the answer (a cheap check)."""

    @property
    def cancelled(self) -> bool: ...


def _gone(cancel: "Cancel | None") -> bool:
    return cancel is not None and cancel.cancelled


def _abandoned() -> ClientClosedRequest:
    return ClientClosedRequest("the client went away before its answer was written; nothing of it was written")


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
    def fresh(cls, scheduler: Scheduler) -> "SessionState":
        zero = scheduler.runtime.zero_state()
        return cls(zero, zero, -1)

    @classmethod
    def decode(cls, blob: bytes, scheduler: Scheduler) -> "SessionState":
        if not blob:
            return cls.fresh(scheduler)
        bundle = scheduler.bundle
        shape = bundle.state_shape
        if len(blob) != cls.nbytes(shape):
            raise ModelMismatch(f"session state has {len(blob)} bytes; model {bundle.name} needs "
                                f"{cls.nbytes(shape)}: the session was made with another bundle", input=Input.SESSION)
        half = (len(blob) - 8) // 2
        floats = np.frombuffer(blob, dtype="<f4", count=half // 2)  # after, then before: read-only views, no copy
        after, before = floats[: half // 4].reshape(shape), floats[half // 4:].reshape(shape)
        last = int.from_bytes(blob[2 * half:], "little", signed=True)
        if not np.isfinite(floats).all() or not -1 <= last < bundle.vocab_size:
            raise ModelMismatch("session state is corrupt (non-finite values or a bad token id)", input=Input.SESSION)
        return cls(after, before, last)

    def encode(self) -> bytes:
        return b"".join((self.after.astype("<f4", copy=False).tobytes(), self.before.astype("<f4", copy=False).tobytes(),
                         self.last.to_bytes(8, "little", signed=True)))


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
    log_probs: np.ndarray  # (vocab,) float32: the next word's distribution
    session: SessionRecord | None = None  # after this request's write
    scores: np.ndarray | None = None  # (seq,) float64: each token's probability given the ones before it


@dataclass(frozen=True)
class BatchItem:
    """One validated item of a batch request."""

    text: str
    session_id: str | None = None
    model: str | None = None
    if_version: int | None = None
    top_k: int = 10
    scores: bool = False  # each token's probability given the ones before it (a model step per token)


class _Call(NamedTuple):
    """One caller's item in the group commit."""

    item: BatchItem
    owner: str
    cancel: Cancel | None


@dataclass(frozen=True)
class _Job:
    """Tokens to feed: after a session's state, or from the zero state (`state` None: a stateless step)."""

    scheduler: Scheduler
    ids: np.ndarray  # (seq,) int64
    state: SessionState | None
    scores: bool = False  # fed one token at a time, each token's probability kept


@dataclass(frozen=True)
class _Stepped:
    """What feeding a job gave: the next word's distribution and the state to store."""

    log_probs: np.ndarray  # (vocab,) float32
    state: SessionState
    scores: np.ndarray | None = None  # (seq,) float64, for a job that asked for them


@dataclass
class _Write:
    """A session's pending write: the record it was read at, the state its steps leave, the items those steps were
    (in order; none for a generation, whose one step is its stream), and what the write counts as."""

    record: SessionRecord
    scheduler: Scheduler
    state: SessionState
    items: list[int]
    steps: int = 0  # the version grows by this many
    tokens: int = 0  # tokens consumed

    def add(self, item: int, state: SessionState, tokens: int) -> None:
        self.items.append(item)
        self.state, self.steps, self.tokens = state, self.steps + 1, self.tokens + tokens


def _check_model(record: SessionRecord, model: str | None) -> None:
    """A caller that names a model must name the session's."""
    if model is not None and model != record.model:
        raise ModelMismatch(f"session {record.session_id} belongs to model {record.model!r}, not {model!r}",
                            input=Input.MODEL)


def _lost_race(session_id: str, pinned: bool = False, times: int = 1) -> ServiceError:
    """The error of a write that lost its race to another and is not re-run: PreconditionFailed for a caller that
    named the version it expected, else SessionConflict."""
    changed = "changed" if times == 1 else f"changed {times} times"
    message = f"session {session_id} {changed} while this request ran; nothing was written"
    return PreconditionFailed(message, input=Input.SESSION) if pinned else SessionConflict(message, input=Input.SESSION)


@dataclass(frozen=True)
class Token:
    index: int
    id: int
    word: str
    probability: float


@dataclass(frozen=True)
class Done:
    finish_reason: str  # length | eos | stop
    text: str  # the generated words, detokenized (without a stop word or <eos> that ended it)
    tokens: int  # tokens generated, the one that ended it included
    model: str
    session: SessionRecord  # as committed


class _Slot:
    """A stream permit, released exactly once however many paths try."""

    def __init__(self, semaphore: threading.BoundedSemaphore):
        self._semaphore = semaphore
        self._lock = threading.Lock()
        self._held = True
        metrics.ACTIVE_STREAMS.inc()

    def release(self) -> None:
        with self._lock:
            if not self._held:
                return
            self._held = False
        metrics.ACTIVE_STREAMS.dec()
        self._semaphore.release()


class Engine:
    def __init__(self, models: dict[str, Scheduler], store: SessionStore, default_model: str,
                 max_text_tokens: int = 512, cas_retries: int = 64, max_streams: int = 32,
                 group_items: int | None = None):
        self.models = models
        self.store = store
        self.default_model = default_model
        self.max_text_tokens = max_text_tokens
        self.cas_retries = cas_retries
        self.max_streams = max_streams
        self._streams = threading.BoundedSemaphore(max_streams)
        self._session_bytes: dict[str, tuple[int | None, float]] = {}  # model -> (Redis bytes per session, when)
        # The session steps of concurrent requests: one pipelined read, one model call, one pipelined write; at most
        # `group_items` items (a distribution each) at once, so the memory a group holds is bounded.
        self._steps = GroupCommit(self._apply_calls, max_items=group_items)

    def close(self) -> None:
        for scheduler in self.models.values():
            scheduler.close()
        self.store.close()

    # --- models and text -------------------------------------------------------------------------------------------

    def model(self, name: str | None) -> Scheduler:
        name = name or self.default_model
        try:
            return self.models[name]
        except KeyError:
            raise UnknownModel(f"no model named {name!r}; loaded: {', '.join(sorted(self.models))}",
                               input=Input.MODEL) from None

    def read(self, scheduler: Scheduler, text: str) -> Reading:
        bundle = scheduler.bundle
        tokens = tokenize(text, bundle.convention)
        if not tokens:
            raise InvalidInput("the text has no words", input=Input.TEXT)
        if len(tokens) > self.max_text_tokens:
            raise InvalidInput(f"the text has {len(tokens)} tokens; the limit is {self.max_text_tokens}",
                               input=Input.TEXT)
        index, unk = bundle.index, bundle.unk
        ids = [index.get(t, unk) for t in tokens]
        unknown = [t for t, i in zip(tokens, ids) if i == unk and t != "<unk>"]
        metrics.TOKENS_READ.labels(model=bundle.name).inc(len(tokens))
        return Reading(tokens, np.array(ids, dtype=np.int64), unknown)

    # --- stateless and session steps -------------------------------------------------------------------------------

    def predict(self, text: str, model: str | None = None, session_id: str | None = None, owner: str = "",
                scores: bool = False, if_version: int | None = None) -> Prediction:
        if text == "":  # nothing to read: the distribution where the text stands, nothing written
            outcome = self._peek_many([BatchItem(text, session_id, model, if_version)], [owner])[0]
            if isinstance(outcome, ServiceError):
                raise outcome
            return replace(outcome, scores=np.empty(0)) if scores else outcome
        if session_id is None:
            scheduler = self.model(model)
            reading = self.read(scheduler, text)
            if scores:
                scored = self._score(scheduler, SessionState.fresh(scheduler), reading.ids)
                return Prediction(scheduler.bundle.name, reading, scored.log_probs, scores=scored.scores)
            log_probs, _ = scheduler.step(reading.ids)
            return Prediction(scheduler.bundle.name, reading, log_probs)
        call = _Call(BatchItem(text, session_id, model, if_version, scores=scores), owner, None)
        if scores:  # a model step per token, each with its distribution: applied alone, holding up no other caller
            outcome = self._apply([call.item], [call.owner], [call.cancel])[0]
            if isinstance(outcome, ServiceError):
                raise outcome
            return outcome
        return self._steps.run(call)

    @staticmethod
    def _feed(scheduler: Scheduler, state: SessionState, ids: np.ndarray) -> _Stepped:
        """Feeds ids after state: the distribution after the last id, and the new SessionState."""
        before = state.after
        if len(ids) > 1:  # keep the state before the last token: prefix first (no softmax), then the last token
            _, before = scheduler.step(ids[:-1], state.after, with_log_probs=False)
        log_probs, after = scheduler.step(ids[-1:], before)
        return _Stepped(log_probs, SessionState(after, before, int(ids[-1])))

    @staticmethod
    def _score(scheduler: Scheduler, state: SessionState, ids: np.ndarray) -> _Stepped:
        """Feeds ids one at a time after state, with each token's probability given what came before it. The first
        token is scored against the session's own next-word distribution, or, for a session that has read nothing
        (and without a session), against the start of a line (after <eos>)."""
        if state.last >= 0:
            log_probs, _ = scheduler.step(np.array([state.last]), state.before)
        else:
            log_probs, _ = scheduler.step(np.array([scheduler.bundle.eos]))
        probs = np.empty(len(ids))  # (seq,) float64
        current = before = state.after
        for i, token in enumerate(ids.tolist()):
            probs[i] = np.exp(np.float64(np.asarray(log_probs)[token]))  # a device row comes over whole: scores ask
            before = current
            log_probs, current = scheduler.step(np.array([token]), current)
        return _Stepped(log_probs, SessionState(current, before, int(ids[-1])), probs)

    def _load(self, session_id: str, owner: str, model: str | None, record: SessionRecord | None = None):
        """(record, scheduler, decoded state) of a session, read now or given as read; checked against the model the
        caller named and against the bundle that serves the session's model."""
        record = record or self.store.get(session_id, owner)
        _check_model(record, model)
        scheduler = self.model(record.model)
        if record.digest != scheduler.bundle.digest:
            raise ModelMismatch(f"session {session_id} was made with another version of {record.model!r} "
                                f"({record.digest[:12]}, serving {scheduler.bundle.digest[:12]}); start a new session",
                                input=Input.SESSION)
        return record, scheduler, SessionState.decode(record.state, scheduler)

    @staticmethod
    def _precondition(record: SessionRecord, if_version: int | None, steps: int = 0) -> None:
        """The version the caller named (If-Match) against the session's, `steps` items of this write after `record`."""
        version = record.version + steps
        if if_version is not None and version != if_version:
            raise PreconditionFailed(f"session {record.session_id} is at version {version}, not {if_version}; "
                                     "nothing was written", input=Input.SESSION)

    # --- batches ---------------------------------------------------------------------------------------------------

    def predict_batch(self, items: list[BatchItem], owner: str, cancel: Cancel | None = None
                      ) -> list["Prediction | ServiceError"]:
        """Each item as `predict` would answer it, or the error it failed with (the others still apply).

        Items naming the same session apply in item order, as one compare-and-set whose version grows by the number
        of items applied; every step of a wave (the n-th item of every session, and every stateless item) goes to
        the schedulers at once, and Redis is read and written in one pipelined round trip each.

        Once `cancel` is cancelled, the model steps left are skipped and the items fail with ClientClosedRequest.
        Commit rule: a session's items are written together or not at all, and nothing is written for a caller
        found gone before the write (`_attempt`); a write made before it went stays made."""
        if all(item.text for item in items):
            return self._steps.run_all([_Call(item, owner, cancel) for item in items])  # with the worker's other steps
        return self._batch_with_peeks(items, owner, cancel)

    # --- where a text stands, without writing --------------------------------------------------------------------

    def _peek_many(self, items: list[BatchItem], owners: list[str]) -> list["Prediction | ServiceError"]:
        """For items with an empty text: the next-word distribution at the start of a line (no session, or a session
        that has read nothing), or after everything the session has read, recomputed with one step from the state
        before its last token. Nothing is written; each session is read once, all steps go to the schedulers at
        once."""
        out: list = [None] * len(items)
        stored = [i for i, item in enumerate(items) if item.session_id is not None]
        loaded = dict(zip(stored, self.store.get_many([items[i].session_id for i in stored],
                                                      [owners[i] for i in stored]))) if stored else {}
        jobs: dict[int, tuple[_Job, SessionRecord | None]] = {}
        for i, item in enumerate(items):
            try:
                record, state = None, None
                if item.session_id is None:
                    scheduler = self.model(item.model)
                else:
                    if isinstance(loaded[i], ServiceError):
                        raise loaded[i]
                    record, scheduler, state = self._load(item.session_id, owners[i], item.model, record=loaded[i])
                    self._precondition(record, item.if_version)
                if state is None or state.last < 0:
                    jobs[i] = (_Job(scheduler, np.array([scheduler.bundle.eos]), None), record)
                else:  # the state before the last token, fed that token again
                    jobs[i] = (_Job(scheduler, np.array([state.last]), SessionState(state.before, state.before, -1)),
                               record)
            except ServiceError as e:
                out[i] = e
        outcomes = self._feed_many([job for job, _ in jobs.values()])
        nothing = Reading([], np.empty(0, dtype=np.int64), [])
        for (i, (job, record)), outcome in zip(jobs.items(), outcomes):
            out[i] = outcome if isinstance(outcome, ServiceError) else Prediction(job.scheduler.bundle.name, nothing,
                                                                                   outcome.log_probs, record)
        return out

    def _batch_with_peeks(self, items: list[BatchItem], owner: str, cancel: "Cancel | None"
                          ) -> list["Prediction | ServiceError"]:
        """`predict_batch` for a batch holding items with an empty text. Items run in segments: a segment's empty
        items first, then its others, and an empty item on a session that its segment already fed starts the next
        segment, so each sees the session as the items before it left it."""
        results: list = [None] * len(items)
        peeks: list[int] = []
        feeds: list[int] = []
        fed: set[str] = set()

        def flush() -> None:
            if peeks:
                for i, outcome in zip(peeks, self._peek_many([items[i] for i in peeks], [owner] * len(peeks))):
                    results[i] = outcome
            if feeds:
                for i, outcome in zip(feeds, self._steps.run_all([_Call(items[i], owner, cancel) for i in feeds])):
                    results[i] = outcome
            peeks.clear()
            feeds.clear()
            fed.clear()

        for i, item in enumerate(items):
            if item.text == "":
                if item.session_id is not None and item.session_id in fed:
                    flush()
                peeks.append(i)
            else:
                feeds.append(i)
                if item.session_id is not None:
                    fed.add(item.session_id)
        flush()
        return results

    # --- the one way a session changes ----------------------------------------------------------------------------

    def _apply_calls(self, calls: list[_Call]) -> list["Prediction | ServiceError"]:
        """The group commit's batch: `_apply` over its callers' items."""
        return self._apply([c.item for c in calls], [c.owner for c in calls], [c.cancel for c in calls])

    def _apply(self, items: list[BatchItem], owners: list[str], cancels: list) -> list["Prediction | ServiceError"]:
        """Every change to a session's words: load -> step -> compare-and-set, the steps of a session that lost a race
        re-run on the fresh state (`cas_retries` times, then 409), unless an item named the version it expects
        (then 412, nothing re-run). A generation's commit shares the write and its errors (`_commit`), not the re-run.

        Each item is read and written as its own owner (a session named by two owners is two chains, and the foreign
        one finds no session), and is dropped once its own caller has gone (`cancels`), whatever the others'
        callers do. Stateless items step alongside, in the same submissions."""
        results: list = [None] * len(items)
        chains: dict[tuple[str, str], list[int]] = {}  # (owner, session id) -> its items, in order
        stateless: list[tuple[int, Reading, _Job]] = []
        for i, item in enumerate(items):
            if _gone(cancels[i]):
                results[i] = _abandoned()
            elif item.session_id is None:
                try:
                    scheduler = self.model(item.model)
                    reading = self.read(scheduler, item.text)
                    stateless.append((i, reading, _Job(scheduler, reading.ids, None)))
                except ServiceError as e:
                    results[i] = e
            else:
                chains.setdefault((owners[i], item.session_id), []).append(i)
        outcomes = self._feed_many([job for _, _, job in stateless], [cancels[i] for i, _, _ in stateless])
        for (i, reading, job), outcome in zip(stateless, outcomes):
            results[i] = outcome if isinstance(outcome, ServiceError) else Prediction(job.scheduler.bundle.name,
                                                                                       reading, outcome.log_probs)
        readings: dict[int, Reading] = {}
        pending = chains
        for attempt in range(self.cas_retries + 1):
            if not pending:
                break
            if attempt:  # de-synchronise the racers
                time.sleep(random.uniform(0, 0.002 * min(attempt, 10)))
            pending = self._attempt(pending, items, results, readings, cancels)
        for (_, session_id), indices in pending.items():  # still conflicting after every retry
            for i in indices:
                results[i] = _lost_race(session_id, times=self.cas_retries + 1)
        return results

    def _attempt(self, chains: dict[tuple[str, str], list[int]], items: list[BatchItem], results: list,
                 readings: dict[int, Reading], cancels: list) -> dict[tuple[str, str], list[int]]:
        """One attempt at every session's chain of items: load all (one pipelined read), step wave by wave (the n-th
        item of every chain in one submission per model), compare-and-set all (one pipelined write). Returns the
        chains to re-run: those that lost a race, and those that applied an item of a caller found gone before the
        write, without that caller's items (two callers with one key may share a chain: the one who stays gets its
        items written on a state without the other's)."""
        keys = list(chains)
        writes: dict[tuple[str, str], _Write] = {}
        for (owner, session_id), loaded in zip(keys, self.store.get_many([s for _, s in keys], [o for o, _ in keys])):
            try:
                if isinstance(loaded, ServiceError):
                    raise loaded
                record, scheduler, state = self._load(session_id, owner, None, record=loaded)
                writes[(owner, session_id)] = _Write(record, scheduler, state, [])
            except ServiceError as e:
                for i in chains[(owner, session_id)]:
                    results[i] = e
        stepped: dict[int, _Stepped] = {}
        position = dict.fromkeys(writes, 0)
        while True:
            wave: list[tuple[tuple[str, str], int, _Job]] = []  # (chain, item, its step)
            for key, write in writes.items():
                chain = chains[key]
                while position[key] < len(chain):
                    i = chain[position[key]]
                    position[key] += 1
                    if _gone(cancels[i]):
                        results[i] = _abandoned()
                        continue
                    try:
                        item = items[i]
                        _check_model(write.record, item.model)
                        self._precondition(write.record, item.if_version, write.steps)
                        readings[i] = self.read(write.scheduler, item.text)
                        wave.append((key, i, _Job(write.scheduler, readings[i].ids, write.state, item.scores)))
                        break
                    except ServiceError as e:
                        results[i] = e
            if not wave:
                break
            outcomes = self._feed_many([job for _, _, job in wave], [cancels[i] for _, i, _ in wave])
            for (key, i, job), outcome in zip(wave, outcomes):
                if isinstance(outcome, ServiceError):
                    results[i] = outcome
                    continue
                stepped[i] = outcome
                writes[key].add(i, outcome.state, len(job.ids))
        rerun: dict[tuple[str, str], list[int]] = {}
        ready = []
        for key, write in writes.items():  # a gone caller's items are never written
            gone = {i for i in write.items if _gone(cancels[i])}  # asked once: the answer may change meanwhile
            for i in gone:
                results[i] = _abandoned()
            if gone:
                if len(gone) < len(write.items):
                    rerun[key] = [i for i in write.items if i not in gone]
            elif write.items:
                ready.append(key)
        now = time.time()
        for key, outcome in zip(ready, self._write_many([writes[key] for key in ready])):
            write = writes[key]
            if isinstance(outcome, SessionConflict):
                pinned = [items[i].if_version is not None for i in write.items]
                if not any(pinned):
                    rerun[key] = write.items
                    continue
                for i, named in zip(write.items, pinned):  # a caller named its version: nothing is re-run
                    results[i] = _lost_race(write.record.session_id, pinned=named)
                continue
            if isinstance(outcome, ServiceError):
                for i in write.items:
                    results[i] = outcome
                continue
            tokens = write.record.tokens
            for n, i in enumerate(write.items, start=1):  # each item sees the session as it left it
                tokens += len(readings[i].ids)
                view = replace(outcome, version=write.record.version + n, tokens=tokens, updated=now, state=b"")
                results[i] = Prediction(write.record.model, readings[i], stepped[i].log_probs, view, stepped[i].scores)
        return rerun

    def _write_many(self, writes: list[_Write]) -> list["SessionRecord | ServiceError"]:
        """Compare-and-set of each write against the version its session was read at, in one pipelined round trip.
        A lost race comes back as SessionConflict (counted here); the caller decides whether to re-run its steps."""
        outcomes = self.store.compare_and_set_many([(w.record.session_id, w.record.version, w.state.encode(), w.tokens,
                                                     w.steps) for w in writes])
        for write, outcome in zip(writes, outcomes):
            if isinstance(outcome, SessionConflict):
                metrics.SESSION_CONFLICTS.labels(model=write.scheduler.bundle.name).inc()
        return outcomes

    def _commit(self, write: _Write) -> SessionRecord:
        """A generation's write. Its tokens were already sent, so a lost race is not re-run: nothing is written."""
        outcome = self._write_many([write])[0]
        if isinstance(outcome, SessionConflict):
            raise _lost_race(write.record.session_id) from None
        if isinstance(outcome, ServiceError):
            raise outcome
        return outcome

    def _feed_many(self, jobs: list[_Job], cancels: list | None = None) -> list["_Stepped | ServiceError"]:
        """`_feed` (or `_score`, for a job that asks for scores) for many jobs at once: each one's outcome or its
        ServiceError. Each scheduler gets all its steps of a phase (prompt prefixes, then last tokens) in one
        submission, so they share its calls. A job whose caller has gone (`cancels[j]`) before a phase is submitted
        fails with ClientClosedRequest; the scheduler skips its steps already queued."""
        cancels = cancels or [None] * len(jobs)
        out: list = [_abandoned() if _gone(cancel) else None for cancel in cancels]
        prefixes = self._submit_many({j: (job.scheduler, job.ids[:-1], job.state.after, False)
                                      for j, job in enumerate(jobs) if len(job.ids) > 1 and job.state is not None
                                      and not job.scores and out[j] is None}, out, cancels)
        befores = {}
        for j, job in enumerate(jobs):
            if out[j] is not None or job.scores:
                continue
            if _gone(cancels[j]):
                out[j] = _abandoned()
                continue
            try:
                befores[j] = prefixes[j].wait(job.scheduler.timeout)[1] if j in prefixes else (
                    job.state.after if job.state is not None else None)
            except ServiceError as e:
                out[j] = e
        lasts = self._submit_many({j: (job.scheduler, job.ids if job.state is None else job.ids[-1:], befores[j], True)
                                   for j, job in enumerate(jobs) if out[j] is None and not job.scores}, out, cancels)
        for j, job in enumerate(jobs):  # scored steps one token at a time, while the others' calls run
            if job.scores and out[j] is None:
                try:
                    out[j] = self._score(job.scheduler, job.state, job.ids)
                except ServiceError as e:
                    out[j] = e
        for j, step in lasts.items():
            job = jobs[j]
            try:
                log_probs, after = step.wait(job.scheduler.timeout)
                before = befores[j] if befores[j] is not None else after
                out[j] = _Stepped(log_probs, SessionState(after, before, int(job.ids[-1])))
            except ServiceError as e:
                out[j] = e
        return out

    @staticmethod
    def _submit_many(steps: dict[int, tuple[Scheduler, np.ndarray, "np.ndarray | None", bool]], out: list,
                     cancels: list) -> dict:
        """{job: (scheduler, tokens, state, with_log_probs)} -> {job: Step}, one submission per scheduler, each step
        with its job's cancellation; a refused submission (Overloaded) is the error of each of its jobs."""
        by_scheduler: dict[int, list[int]] = {}
        for j, (scheduler, *_) in steps.items():
            by_scheduler.setdefault(id(scheduler), []).append(j)
        submitted = {}
        for jobs in by_scheduler.values():
            scheduler = steps[jobs[0]][0]
            try:
                made = scheduler.submit_many([steps[j][1:] for j in jobs], [cancels[j] for j in jobs])
            except ServiceError as e:
                for j in jobs:
                    out[j] = e
                continue
            submitted.update(zip(jobs, made))
        return submitted

    # --- generation ------------------------------------------------------------------------------------------------

    def start_generation(self, session_id: str, owner: str, prompt: str | None, params: SamplingParams,
                         max_tokens: int, stop: list[str], if_version: int | None = None,
                         cancel: Cancel | None = None, model: str | None = None) -> "Generation":
        """Checks and loads everything a generation needs and starts its stream, raising before any event exists.
        With `cancel`, a caller found gone stops the generation at its next token, and it commits nothing; with
        `model`, a session of another model is refused."""
        if not self._streams.acquire(blocking=False):
            raise Overloaded(f"this worker already runs {self.max_streams} generations; retry shortly")
        slot = _Slot(self._streams)
        try:
            record, scheduler, state = self._load(session_id, owner, model)
            self._precondition(record, if_version)
            bundle = scheduler.bundle
            reading = None
            if prompt:
                reading = self.read(scheduler, prompt)
                stepped, fed = self._feed(scheduler, state, reading.ids), len(reading.ids)
            elif state.last < 0:  # nothing read yet: start as at the beginning of a line
                stepped, fed = self._feed(scheduler, state, np.array([bundle.eos])), 1
            else:  # the distribution after the last consumed token, recomputed from the state before it
                stepped, fed = _Stepped(scheduler.step(np.array([state.last]), state.before)[0], state), 0
            log_probs, state = stepped.log_probs, stepped.state
            stop_ids = frozenset(bundle.index[w] for w in stop if w in bundle.index)
            stream = Stream(state.after, log_probs, params, max_tokens, stop_ids, bundle.eos)
            if _gone(cancel):
                raise _abandoned()
            scheduler.start(stream)
        except BaseException:
            slot.release()
            raise
        return Generation(self._commit, record, scheduler, stream, fed, reading, slot, (state.after, log_probs), cancel)

    # --- session lifecycle -----------------------------------------------------------------------------------------

    def session_size(self, name: str, measure: bool = True) -> dict:
        """What one session of model `name` costs in Redis: `state_bytes` (the stored blob), `redis_bytes` (the whole
        hash, measured by Redis once per worker; None while it cannot be: asked again after SIZE_RETRY_S, and not
        at all with `measure` False) and `sessions_per_gib`."""
        bundle = self.model(name).bundle
        state = SessionState.nbytes(bundle.state_shape)
        used, at = self._session_bytes.get(name, (None, -SIZE_RETRY_S))
        if measure and used is None and time.monotonic() - at >= SIZE_RETRY_S:
            try:
                used = self.store.measure(bundle.name, bundle.digest, state)
            except ServiceError:
                pass
            self._session_bytes[name] = (used, time.monotonic())
        return {"state_bytes": state, "redis_bytes": used, "sessions_per_gib": (1 << 30) // used if used else None}

    def create_session(self, model: str | None, owner: str) -> SessionRecord:
        scheduler = self.model(model)
        record = self.store.create(scheduler.bundle.name, scheduler.bundle.digest, owner)
        metrics.SESSIONS_CREATED.labels(model=scheduler.bundle.name).inc()
        return record

    def session_info(self, session_id: str, owner: str) -> SessionRecord:
        return self.store.get(session_id, owner)

    def delete_session(self, session_id: str, owner: str) -> None:
        record = self.store.delete(session_id, owner)
        metrics.SESSIONS_DELETED.labels(model=record.model).inc()


class Generation:
    """One generation: its stream in the scheduler, the session it commits to, and its stream slot.

    Iterating gives a `Token` per sampled word as the scheduler draws it, then one `Done`.
    Commit rule (atomic): the session is written once, after the stream has ended by itself (its limit, `<eos>` or a
    stop word) and its reader has taken every token: a compare-and-set against the version the generation started
    from, holding the prompt and every generated token (the one that ended it included); `Done` shows the session
    as written. A generation that fails, or that is closed before that (the client went away), writes nothing, not
    even its prompt: the session stays as it was, and the same request can be sent again. Another request changing
    the session meanwhile makes the commit fail (`session_conflict`) and nothing is written either. With a
    cancellation (`cancel`), a caller found gone after a token or before the commit ends it the same way
    (ClientClosedRequest): the drained (non-streaming) answer's client, whose leaving no write would reveal.
    """

    def __init__(self, commit: Callable[[_Write], SessionRecord], record: SessionRecord, scheduler: Scheduler,
                 stream: Stream, fed: int, reading: Reading | None, slot: _Slot, start: tuple[np.ndarray, np.ndarray],
                 cancel: Cancel | None = None):
        self.record, self.scheduler, self.stream = record, scheduler, stream
        self._commit = commit  # the engine's write of a session, without its re-run
        self.cancel = cancel
        self.fed, self.reading, self._slot = fed, reading, slot
        self._replay = (*start, 0, -1)  # (state, log_probs, index of the next token asked for, the token before it)
        self.model = scheduler.bundle.name
        self.generated = 0
        self.committed: SessionRecord | None = None

    def __iter__(self) -> Iterator["Token | Done"]:
        """Tokens as the scheduler draws them, then Done; the generation is closed when this ends, however."""
        bundle = self.scheduler.bundle
        words: list[str] = []
        try:
            while True:
                kind, *rest = self.stream.next_event(TOKEN_TIMEOUT_S)
                if _gone(self.cancel):
                    raise _abandoned()
                if kind == "token":
                    token, probability = rest
                    word = bundle.words[token]
                    if token != bundle.eos and token not in self.stream.stop_ids:
                        words.append(word)
                    self.generated += 1
                    yield Token(self.generated - 1, token, word, round(probability, 6))
                elif kind == "end":
                    finish, before, after, last = rest
                    self.committed = self._commit(_Write(self.record, self.scheduler, SessionState(after, before, last),
                                                         [], steps=1, tokens=self.fed + self.generated))
                    yield Done(finish, detokenize(words, bundle.convention), self.generated, self.model,
                               self.committed)
                    return
                else:
                    raise rest[0]
        finally:
            self.close()

    def distribution(self, token: Token):
        """(vocab,) log-probabilities that `token` was drawn from (a host array, or a device row that `np.asarray`
        copies over, as `Scheduler.step` gives), for callers that show alternatives (OpenAI's
        `logprobs`). Ask for this generation's tokens in order: the first is the distribution the stream started
        from, each later one costs one model step (the token before it fed again; a row's result never depends on
        its batch, so it is the decode loop's own)."""
        state, log_probs, expected, previous = self._replay
        if token.index != expected:
            raise ValueError(f"distribution() takes the tokens in order: expected index {expected}, got {token.index}")
        if expected:
            log_probs, state = self.scheduler.step(np.array([previous]), state)
        self._replay = (state, log_probs, expected + 1, token.id)
        return log_probs

    def close(self) -> None:
        """Idempotent: a stream still running is cancelled (nothing is committed) and the slot is freed."""
        if self.committed is None:
            self.stream.cancel()
        self._slot.release()

    def __enter__(self) -> "Generation":
        return self

    def __exit__(self, *exc) -> None:
        self.close()
