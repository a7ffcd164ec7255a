"""The session store: one Redis hash per session, written by compare-and-set, and the count of expired sessions.

Knows nothing of models, tensors or HTTP: a session's recurrent state is opaque bytes here (the engine's
`SessionState` blob, which it encodes, decodes and validates against the bundle). Every command
and every Lua script touches exactly one key, so the store runs unchanged on Redis Cluster. Each access slides
the session's TTL; an idle session expires.

Hash fields (numbers as decimal strings):
    model, digest, owner   text
    version, tokens        integers; version starts at 0 and grows by 1 per successful write
    created, updated       unix seconds
    state                  raw bytes ("" = zero state)

Failures of Redis itself (down, timing out, loading, read-only, ...) become `StateStoreUnavailable` (transient: the
HTTP layer says when to retry); nothing is retried silently, since a retried write could be applied twice. The connection pool
reconnects by itself once Redis is back.
"""

from __future__ import annotations

import logging
import os
import re
import secrets
import socket
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Callable, Iterator

import redis

from service.errors import (Input, InternalError, ServiceError, SessionConflict, SessionNotFound, StateStoreFull,
                            StateStoreUnavailable)
from service.metrics import EXPIRY_WATCHER, REDIS_ERRORS, REDIS_LATENCY, SESSIONS_EXPIRED
from service.redis_client import connect, database, is_cluster_client

log = logging.getLogger(__name__)

KEY_PREFIX = "nextword:session:"
MEASURE_PREFIX = "nextword:measure:"  # a scratch session for `measure`: a name as long as a session's, never one
_ID_RE = re.compile(r"[A-Za-z0-9_-]{22,128}")  # token_urlsafe alphabet; 22 chars = 132 bits, the least we accept

# The one list of a session's hash fields: scripts read them in this order (passed in ARGV, rq-style) and
# `_record` decodes them in this order.
FIELDS = ("model", "digest", "version", "tokens", "state", "created", "updated", "owner")

FULL_LOG_INTERVAL_S = 30.0  # at most one log line per interval while Redis refuses writes for want of memory

CREATE_SCRIPT = """
-- KEYS[1] = session key
-- ARGV[1] = model, ARGV[2] = digest, ARGV[3] = owner, ARGV[4] = state bytes, ARGV[5] = now (unix s),
-- ARGV[6] = ttl seconds
-- Returns 1 when created, 0 when the key already exists (it is never overwritten).
if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1], 'model', ARGV[1], 'digest', ARGV[2], 'owner', ARGV[3], 'state', ARGV[4],
           'version', '0', 'tokens', '0', 'created', ARGV[5], 'updated', ARGV[5])
redis.call('EXPIRE', KEYS[1], ARGV[6])
return 1
"""

GET_SCRIPT = """
-- KEYS[1] = session key
-- ARGV[1] = owner, ARGV[2] = ttl seconds, ARGV[3..] = the fields to return (FIELDS)
-- Returns those fields and slides the TTL, or false when the key is missing or belongs to another owner (a
-- foreign read does not slide the TTL).
local owner = redis.call('HGET', KEYS[1], 'owner')
if owner == false or owner ~= ARGV[1] then
  return false
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return redis.call('HMGET', KEYS[1], unpack(ARGV, 3))
"""

CAS_SCRIPT = """
-- KEYS[1] = session key
-- ARGV[1] = expected version, ARGV[2] = new state bytes, ARGV[3] = tokens added, ARGV[4] = now (unix s),
-- ARGV[5] = ttl seconds, ARGV[6] = writes this counts as (the version grows by it), ARGV[7..] = fields to return
-- Returns {0} when the key is missing (nothing is created), {-1, current version} when the version differs
-- (nothing is written), else {1, the fields...} after the write (the state field comes back empty: the caller
-- has it).
local version = redis.call('HGET', KEYS[1], 'version')
if version == false then
  return {0}
end
if version ~= ARGV[1] then
  return {-1, version}
end
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'updated', ARGV[4])
redis.call('HINCRBY', KEYS[1], 'version', ARGV[6])
redis.call('HINCRBY', KEYS[1], 'tokens', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[5])
local out = {1}
for i = 7, #ARGV do
  if ARGV[i] == 'state' then
    out[#out + 1] = ''
  else
    out[#out + 1] = redis.call('HGET', KEYS[1], ARGV[i])
  end
end
return out
"""

DELETE_SCRIPT = """
-- KEYS[1] = session key
-- ARGV[1] = owner, ARGV[2..] = the fields to return (FIELDS)
-- Returns the deleted fields, or false when the key is missing or belongs to another owner (then nothing is
-- deleted).
local owner = redis.call('HGET', KEYS[1], 'owner')
if owner == false or owner ~= ARGV[1] then
  return false
end
local f = redis.call('HMGET', KEYS[1], unpack(ARGV, 2))
redis.call('DEL', KEYS[1])
return f
"""

SCRIPTS = {"create": CREATE_SCRIPT, "get": GET_SCRIPT, "cas": CAS_SCRIPT, "delete": DELETE_SCRIPT}
OPERATIONS = (*SCRIPTS, "ping", "lease", "expiry_watch")  # the `operation` label of the Redis metrics


def session_key(session_id: str) -> str:
    """The one place session keys are built."""
    return KEY_PREFIX + session_id


@dataclass(frozen=True)
class SessionRecord:
    session_id: str
    model: str
    digest: str  # sha256 of the bundle's model.onnx the state was made with
    version: int  # starts at 0, +1 per successful write
    tokens: int  # tokens consumed so far
    state: bytes = field(repr=False)  # opaque to the store (the engine's SessionState); b"" = zero state
    created: float  # unix seconds
    updated: float
    owner: str  # sha256 hex of the API key that created it, "" when auth is off
    expires_in: int  # TTL seconds remaining after this access


def _record(session_id: str, values: list, expires_in: int, state: bytes | None = None) -> SessionRecord:
    """Decode field values in FIELDS order (`state` given: use it instead of the state field's value)."""
    try:
        if len(values) != len(FIELDS):
            raise ValueError(f"{len(values)} values for {len(FIELDS)} fields")
        v = dict(zip(FIELDS, values))
        return SessionRecord(session_id=session_id, model=v["model"].decode(), digest=v["digest"].decode(),
                             version=int(v["version"]), tokens=int(v["tokens"]),
                             state=bytes(v["state"]) if state is None else state, created=float(v["created"]),
                             updated=float(v["updated"]), owner=v["owner"].decode(), expires_in=expires_in)
    except (ValueError, TypeError, AttributeError, UnicodeDecodeError) as e:  # a hash someone else wrote to
        log.error("session %s: corrupt record in Redis (%s)", session_id[:8], e)
        raise InternalError("corrupt session record") from None


class SessionStore:
    """Sessions in Redis: create, get (sliding the TTL), compare-and-set the state, delete."""

    def __init__(self, client: "redis.Redis", ttl_seconds: int):
        if ttl_seconds < 1:
            raise ValueError(f"ttl_seconds must be >= 1, got {ttl_seconds}")
        self.client = client
        self.ttl = int(ttl_seconds)
        self._create = client.register_script(CREATE_SCRIPT)  # EVALSHA; reloaded by redis-py after NOSCRIPT
        self._get = client.register_script(GET_SCRIPT)
        self._cas = client.register_script(CAS_SCRIPT)
        self._delete = client.register_script(DELETE_SCRIPT)

    @classmethod
    def from_url(cls, url: str, ttl_seconds: int) -> "SessionStore":
        """One server, Sentinel or Cluster, by the URL's scheme (`service.redis_client`). No silent retries: a
        failed call fails fast, once (a retried CAS whose reply was lost would apply its tokens twice)."""
        return cls(connect(url, decode_responses=False, client_name="nextword"), ttl_seconds)  # state is raw bytes

    @staticmethod
    def new_id() -> str:
        """192 random bits, URL-safe (32 characters)."""
        return secrets.token_urlsafe(24)

    @staticmethod
    def valid_id(session_id: object) -> bool:
        """Shape check, so junk ids never reach Redis."""
        return isinstance(session_id, str) and _ID_RE.fullmatch(session_id) is not None

    # -- operations --------------------------------------------------------------------------------------------

    def create(self, model: str, digest: str, owner: str, state: bytes = b"") -> SessionRecord:
        now = time.time()
        for _ in range(3):  # a collision of 192-bit ids does not happen; the loop only keeps create honest
            session_id = self.new_id()
            with self._call("create"):
                created = self._create(keys=[session_key(session_id)],
                                       args=[model, digest, owner, bytes(state), _num(now), self.ttl])
            if created == 1:
                return SessionRecord(session_id=session_id, model=model, digest=digest, version=0, tokens=0,
                                     state=bytes(state), created=now, updated=now, owner=owner,
                                     expires_in=self.ttl)
        raise InternalError("could not allocate a new session id")

    def get(self, session_id: str, owner: str) -> SessionRecord:
        """The session, sliding its TTL. SessionNotFound when missing, expired or owned by someone else."""
        self._check_id(session_id)
        with self._call("get"):
            values = self._get(keys=[session_key(session_id)], args=[owner, self.ttl, *FIELDS])
        if values is None:
            raise _not_found()
        return _record(session_id, values, self.ttl)

    def compare_and_set(self, session_id: str, expected_version: int, state: bytes, tokens_added: int,
                        writes: int = 1) -> SessionRecord:
        """Write `state` if the version is still `expected_version`: version + writes, tokens += tokens_added, slide
        the TTL. (`writes` > 1: one write standing for several steps applied in order, as a batch does.)

        SessionNotFound when the session is gone (it is not recreated); SessionConflict when another write won.
        """
        self._check_id(session_id)
        args = self._cas_args(expected_version, state, tokens_added, writes)
        with self._call("cas"):
            reply = self._cas(keys=[session_key(session_id)], args=args)
        return self._cas_result(session_id, expected_version, bytes(state), reply)

    def get_many(self, session_ids: list[str], owners: list[str]) -> list["SessionRecord | ServiceError"]:
        """Several sessions (each read as its owner) in one pipelined round trip; each a record, or SessionNotFound
        for that id."""
        valid = [i for i, sid in enumerate(session_ids) if self.valid_id(sid)]
        out: list = [_not_found()] * len(session_ids)
        if not valid:
            return out
        with self._call("get"):
            replies = self._pipelined(self._get, [([session_key(session_ids[i])], [owners[i], self.ttl, *FIELDS])
                                                  for i in valid])
            for reply in replies:
                if isinstance(reply, redis.RedisError):
                    raise reply
        for i, values in zip(valid, replies):
            out[i] = _not_found() if values is None else _record(session_ids[i], values, self.ttl)
        return out

    def compare_and_set_many(self, writes: list[tuple[str, int, bytes, int, int]]) -> list["SessionRecord | ServiceError"]:
        """Several compare-and-sets (session_id, expected_version, state, tokens_added, writes) in one pipelined
        round trip. Each is its own atomic script: one may fail (SessionConflict, SessionNotFound) while the
        others apply."""
        if not writes:
            return []
        for session_id, *_ in writes:
            self._check_id(session_id)
        calls = [([session_key(sid)], self._cas_args(version, state, added, count))
                 for sid, version, state, added, count in writes]
        with self._call("cas"):
            replies = self._pipelined(self._cas, calls)
        out = []
        for (session_id, version, state, _, _), reply in zip(writes, replies):
            if isinstance(reply, redis.RedisError):
                out.append(_store_error("cas", reply))
                continue
            try:
                out.append(self._cas_result(session_id, version, bytes(state), reply))
            except (SessionConflict, SessionNotFound) as e:
                out.append(e)
        return out

    def _pipelined(self, script, calls: list[tuple[list, list]]) -> list:
        """Runs script once per (keys, args) in one round trip; a reply is a value or the RedisError it raised.
        A Redis that lost its scripts (NOSCRIPT: nothing ran) gets them loaded and the calls sent once more.
        On Redis Cluster, whose redis-py pipelines refuse scripts, the calls go one by one, each to its key's node."""
        if is_cluster_client(self.client):
            replies = []
            for keys, args in calls:
                try:
                    replies.append(script(keys=keys, args=args))
                except redis.ResponseError as e:  # the pipeline's raise_on_error=False: an error is that call's reply
                    replies.append(e)
            return replies
        for attempt in (1, 2):
            pipe = self.client.pipeline(transaction=False)
            for keys, args in calls:
                pipe.evalsha(script.sha, len(keys), *keys, *args)
            replies = pipe.execute(raise_on_error=False)
            if attempt == 1 and any(isinstance(r, redis.exceptions.NoScriptError) for r in replies):
                self.client.script_load(script.script)
                continue
            return replies
        return replies

    def _cas_args(self, expected_version: int, state: bytes, tokens_added: int, writes: int) -> list:
        for name, value, low in (("expected_version", expected_version, 0), ("tokens_added", tokens_added, 0),
                                 ("writes", writes, 1)):
            if isinstance(value, bool) or not isinstance(value, int) or value < low:
                raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
        return [expected_version, bytes(state), tokens_added, _num(time.time()), self.ttl, writes, *FIELDS]

    def _cas_result(self, session_id: str, expected_version: int, state: bytes, reply) -> SessionRecord:
        code = int(reply[0])
        if code == 0:
            raise _not_found()
        if code == -1:
            raise SessionConflict(f"session changed underneath this write (expected version {expected_version}, "
                                  f"found {int(reply[1])})", input=Input.SESSION)
        return _record(session_id, reply[1:], self.ttl, state=state)

    def delete(self, session_id: str, owner: str) -> SessionRecord:
        """Delete and return the session; SessionNotFound when missing or foreign (then nothing is deleted)."""
        self._check_id(session_id)
        with self._call("delete"):
            values = self._delete(keys=[session_key(session_id)], args=[owner, *FIELDS])
        if values is None:
            raise _not_found()
        return _record(session_id, values, 0)

    def measure(self, model: str, digest: str, state_bytes: int) -> int:
        """Bytes Redis takes for one session whose state has `state_bytes` bytes (`MEMORY USAGE` of a scratch
        session written as `create` writes one, with an owner, then deleted at once): the state blob, the other
        fields, the hash's overhead and the allocator's rounding, as this Redis counts them."""
        key = MEASURE_PREFIX + self.new_id()
        with self._call("measure"):
            try:
                self._create(keys=[key], args=[model, digest, "0" * 64, bytes(state_bytes), _num(time.time()),
                                               self.ttl])
                return int(self.client.memory_usage(key, samples=0))
            finally:
                self.client.delete(key)

    @property
    def full_at(self) -> float:
        """time.monotonic() of this process's last write refused for want of memory (0: never); /readyz reads it."""
        return OUT_OF_MEMORY.at

    def ping(self) -> None:
        """Raises StateStoreUnavailable when Redis does not answer (for /readyz)."""
        with self._call("ping"):
            self.client.ping()

    def close(self) -> None:
        """Drop the pooled connections (worker shutdown)."""
        self.client.close()

    # -- helpers -----------------------------------------------------------------------------------------------

    def _check_id(self, session_id: str) -> None:
        if not self.valid_id(session_id):
            raise _not_found()

    @contextmanager
    def _call(self, operation: str) -> Iterator[None]:
        """Time one Redis round trip; turn any redis-py failure into a ServiceError."""
        start = time.perf_counter()
        try:
            yield
        except redis.RedisError as e:
            raise _store_error(operation, e) from None
        finally:
            REDIS_LATENCY.labels(operation=operation).observe(time.perf_counter() - start)


class _OutOfMemory:
    """Writes Redis refused for want of memory in this process: when the last one was (for /readyz), and one log
    line per FULL_LOG_INTERVAL_S with a count, instead of a trace per request."""

    def __init__(self):
        self.at = 0.0  # time.monotonic() of the last refusal; 0: never
        self._refused = 0  # since the last log line
        self._logged_at = -FULL_LOG_INTERVAL_S
        self._lock = threading.Lock()

    def note(self, operation: str) -> None:
        now = time.monotonic()
        with self._lock:
            self.at, self._refused = now, self._refused + 1
            if now - self._logged_at >= FULL_LOG_INTERVAL_S:
                log.warning("redis is out of memory (maxmemory reached, nothing left to evict): %d write(s) refused "
                            "since the last report, the latest a %s", self._refused, operation)
                self._logged_at, self._refused = now, 0


OUT_OF_MEMORY = _OutOfMemory()


def _store_error(operation: str, e: redis.RedisError) -> ServiceError:
    """The one mapping from a redis-py failure to a domain error (counted and logged here)."""
    REDIS_ERRORS.labels(operation=operation).inc()
    if isinstance(e, redis.exceptions.OutOfMemoryError) or "OOM command not allowed" in str(e):
        OUT_OF_MEMORY.note(operation)
        return StateStoreFull("the session store is full (Redis is out of memory); existing sessions can still be "
                              "read, new state cannot be written until memory is freed")
    if isinstance(e, (redis.ConnectionError, redis.TimeoutError, redis.exceptions.ReadOnlyError)):
        log.warning("redis %s failed: %s: %s", operation, type(e).__name__, e)
    else:  # OOM, MISCONF, WRONGTYPE, a script error...: still the store's fault, but worth a trace
        log.error("redis %s failed: %s: %s", operation, type(e).__name__, e, exc_info=True)
    return StateStoreUnavailable("the session store is unavailable; retry shortly")


def _num(value: float) -> str:
    return f"{value:.6f}"


def _not_found() -> SessionNotFound:
    return SessionNotFound("unknown or expired session", input=Input.SESSION)


# -- counting expirations ----------------------------------------------------------------------------------------

LEASE_KEY = "nextword:expiry-watcher"  # a redis-py Lock whose value names its holder (host:pid:random)


class ExpiryWatcher:
    """Counts sessions that Redis expired (`nextword_sessions_expired_total`), once per expiration per Redis.

    A lookup cannot count expirations: a missing key looks the same whether it expired, was deleted or never
    existed. Redis itself knows: with `notify-keyspace-events` holding `E` and `x` it publishes every key it
    removes for its TTL on `__keyevent@<db>__:expired` (when the key is next touched, or found by its background
    sweep, so an event can come a little after the TTL ran out). Every worker of every replica runs a watcher, but
    only the one holding the lease subscribes and counts, so each expiration is counted once. The lease is
    redis-py's `Lock` on LEASE_KEY (`SET NX PX` with this process's token; `reacquire()` renews it every
    `lease_seconds / 3`, `release()` hands it back); the others try `acquire()` at the same pace and take over
    when its holder dies or hands it back.

    The count is a lower bound: events published while nobody holds the lease (up to `lease_seconds` after a
    holder dies without releasing it) are lost, since pub/sub keeps nothing; and a holder that could not renew in
    time stops counting until it holds the lease again, rather than risk counting twice. With Redis Cluster the
    events are per node and this watches only the node the URL names.

    The watcher never sets `notify-keyspace-events`: that is the server's configuration (the embedded Redis has it
    in the file `service.process.redis_server` writes; docker-compose.yml and deploy/ pass it; an external Redis needs it
    from its operator), which survives a Redis restart and needs no CONFIG rights. When it starts counting, it
    reads the setting (CONFIG GET) and logs a warning if the events are off, or if the server refuses CONFIG
    (managed Redis), and counts anyway.
    """

    def __init__(self, client: "redis.Redis", lease_seconds: float = 10.0,
                 on_expired: Callable[[], None] | None = None):
        self.client = client  # decode_responses=True
        self.lease_seconds = float(lease_seconds)
        self.on_expired = on_expired or SESSIONS_EXPIRED.inc
        self.token = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(8)}"
        # not thread-local: the watcher's thread takes and renews the lease, stop() hands it back from another
        self.lease = client.lock(LEASE_KEY, timeout=self.lease_seconds, blocking=False, thread_local=False)
        self.channel = f"__keyevent@{database(client)}__:expired"
        self.counting = False  # holds the lease and is subscribed
        self._held = False  # acquired, and not yet found lapsed
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._failing = False  # log a Redis outage once, not every retry

    @classmethod
    def from_url(cls, url: str, lease_seconds: float = 10.0,
                 on_expired: Callable[[], None] | None = None) -> "ExpiryWatcher":
        client = connect(url, decode_responses=True, client_name="nextword-expiry-watcher")
        return cls(client, lease_seconds, on_expired)

    def start(self) -> "ExpiryWatcher":
        self._thread = threading.Thread(target=self._run, name="expiry-watcher", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 2.0) -> None:
        """Stop counting and hand the lease back, so another process takes over at its next try."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
        try:
            self.lease.release()
        except redis.RedisError:  # not held (LockError), lapsed (LockNotOwnedError) or Redis down: it expires by itself
            pass
        self.client.close()

    # -- the loop ------------------------------------------------------------------------------------------------

    def _run(self) -> None:
        pubsub = None
        renew_every = self.lease_seconds / 3
        while not self._stop.is_set():
            try:
                started = time.monotonic()
                with self._call("lease"):
                    held = self._hold()
                if not held:
                    pubsub = self._unsubscribe(pubsub)
                    self._stop.wait(renew_every)
                    continue
                if pubsub is None:
                    self._check_notifications()
                    pubsub = self.client.pubsub(ignore_subscribe_messages=True)
                    pubsub.subscribe(self.channel)
                    self._set_counting(True)
                if self._failing:
                    log.info("expiry watcher: Redis answers again")
                    self._failing = False
                self._listen(pubsub, started + renew_every)  # the lease, renewed at `started`, outlives this
            except redis.RedisError as e:
                REDIS_ERRORS.labels(operation="expiry_watch").inc()
                if not self._failing:
                    log.warning("expiry watcher: redis failed (%s: %s); retrying", type(e).__name__, e)
                    self._failing = True
                pubsub = self._unsubscribe(pubsub)
                self._stop.wait(renew_every)
            except Exception:  # a bug must not end the thread silently: say so, and try again
                log.exception("expiry watcher failed; retrying")
                pubsub = self._unsubscribe(pubsub)
                self._stop.wait(renew_every)
        self._unsubscribe(pubsub)

    def _hold(self) -> bool:
        """Renew the lease when this process holds it, else try to take it; whether it holds it now."""
        if self._held:
            try:
                return self.lease.reacquire()
            except redis.exceptions.LockNotOwnedError:  # it lapsed while this process stalled: stop counting first
                self._held = False
                return False
        self._held = self.lease.acquire(token=self.token)
        return self._held

    def _listen(self, pubsub, until: float) -> None:
        """Count expired session keys until `until` (monotonic), waking often enough to notice stop() at once."""
        while not self._stop.is_set():
            remaining = until - time.monotonic()
            if remaining <= 0:
                return
            message = pubsub.get_message(timeout=min(remaining, 0.25))
            if message and message.get("type") == "message" and str(message.get("data", "")).startswith(KEY_PREFIX):
                self.on_expired()

    def _check_notifications(self) -> None:
        """Warn when the server does not publish expired-key events: notify-keyspace-events lacks `E`, or lacks
        both `x` and `A` (all classes), or CONFIG is refused so nobody here can tell."""
        try:
            flags = self.client.config_get("notify-keyspace-events").get("notify-keyspace-events", "")
        except redis.ResponseError as e:  # managed Redis: CONFIG renamed or forbidden
            problem = f"cannot read notify-keyspace-events ({e})"
        else:
            if "E" in flags and ("x" in flags or "A" in flags):
                return
            problem = f"notify-keyspace-events is {flags!r}"
        log.warning("expiry watcher: %s; the Redis server must be configured with notify-keyspace-events Ex, or "
                    "nextword_sessions_expired_total stays at 0", problem)

    def _unsubscribe(self, pubsub) -> None:
        if pubsub is not None:
            try:
                pubsub.close()
            except redis.RedisError:
                pass
            log.info("expiry watcher: stopped counting session expirations")
        self._set_counting(False)
        return None

    def _set_counting(self, counting: bool) -> None:
        if counting and not self.counting:
            log.info("expiry watcher: this process counts session expirations (%s, lease %s)", self.channel,
                     LEASE_KEY)
        self.counting = counting
        EXPIRY_WATCHER.set(1 if counting else 0)

    @contextmanager
    def _call(self, operation: str) -> Iterator[None]:
        start = time.perf_counter()
        try:
            yield
        finally:
            REDIS_LATENCY.labels(operation=operation).observe(time.perf_counter() - start)
