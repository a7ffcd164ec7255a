"""The session store: one Redis hash per session, written by compare-and-set. The only module that imports redis.

Knows nothing of models, tensors or HTTP: a session's recurrent state is opaque bytes here (raw little-endian
float32 tensors concatenated in manifest order; the engine validates them against the bundle). Every command
and every Lua script touches exactly one key, so the store runs unchanged on Redis Cluster. Each access slides
the session's TTL; an idle session expires.

Hash fields (numbers as decimal strings):
    model, digest, owner   text
    version, tokens        integers; version starts at 0 and grows by 1 per successful write
    created, updated       unix seconds
    state                  raw bytes ("" = zero state)

Failures of Redis itself (down, timing out, loading, read-only, ...) become `StateStoreUnavailable` (503 with
Retry-After: 1); nothing is retried silently, since a retried write could be applied twice. The connection pool
reconnects by itself once Redis is back.
"""

from __future__ import annotations

import logging
import re
import secrets
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Iterator

import redis
from redis.backoff import NoBackoff
from redis.retry import Retry

from service.errors import InternalError, SessionConflict, SessionNotFound, StateStoreUnavailable
from service.metrics import REDIS_ERRORS, REDIS_LATENCY

log = logging.getLogger(__name__)

KEY_PREFIX = "nextword:session:"
_ID_RE = re.compile(r"[A-Za-z0-9_-]{22,128}")  # token_urlsafe alphabet; 22 chars = 132 bits, the least we accept

# The fields every script returns, in this order (HMGET), and `_record` decodes.
FIELDS = ("model", "digest", "version", "tokens", "state", "created", "updated", "owner")

SOCKET_TIMEOUT_S = 2.0  # a healthy Redis answers in well under a millisecond; 2 s means it is not healthy
HEALTH_CHECK_INTERVAL_S = 30  # PING a pooled connection that sat idle this long before reusing it

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
-- ARGV[1] = owner, ARGV[2] = ttl seconds
-- Returns the fields (model, digest, version, tokens, state, created, updated, owner) and slides the TTL,
-- or false when the key is missing or belongs to another owner (a foreign read does not slide the TTL).
local owner = redis.call('HGET', KEYS[1], 'owner')
if owner == false or owner ~= ARGV[1] then
  return false
end
redis.call('EXPIRE', KEYS[1], ARGV[2])
return redis.call('HMGET', KEYS[1], 'model', 'digest', 'version', 'tokens', 'state', 'created', 'updated', 'owner')
"""

CAS_SCRIPT = """
-- KEYS[1] = session key
-- ARGV[1] = expected version, ARGV[2] = new state bytes, ARGV[3] = tokens added, ARGV[4] = now (unix s),
-- ARGV[5] = ttl seconds
-- Returns {0} when the key is missing (nothing is created), {-1, current version} when the version differs
-- (nothing is written), else {1, model, digest, version, tokens, created, updated, owner} after the write.
local version = redis.call('HGET', KEYS[1], 'version')
if version == false then
  return {0}
end
if version ~= ARGV[1] then
  return {-1, version}
end
redis.call('HSET', KEYS[1], 'state', ARGV[2], 'updated', ARGV[4])
redis.call('HINCRBY', KEYS[1], 'version', 1)
redis.call('HINCRBY', KEYS[1], 'tokens', ARGV[3])
redis.call('EXPIRE', KEYS[1], ARGV[5])
local f = redis.call('HMGET', KEYS[1], 'model', 'digest', 'version', 'tokens', 'created', 'updated', 'owner')
return {1, f[1], f[2], f[3], f[4], f[5], f[6], f[7]}
"""

DELETE_SCRIPT = """
-- KEYS[1] = session key
-- ARGV[1] = owner
-- Returns the deleted fields (model, digest, version, tokens, state, created, updated, owner), or false when
-- the key is missing or belongs to another owner (then nothing is deleted).
local owner = redis.call('HGET', KEYS[1], 'owner')
if owner == false or owner ~= ARGV[1] then
  return false
end
local f = redis.call('HMGET', KEYS[1], 'model', 'digest', 'version', 'tokens', 'state', 'created', 'updated', 'owner')
redis.call('DEL', KEYS[1])
return f
"""

SCRIPTS = {"create": CREATE_SCRIPT, "get": GET_SCRIPT, "cas": CAS_SCRIPT, "delete": DELETE_SCRIPT}


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
    state: bytes = field(repr=False)  # raw little-endian float32 tensors in manifest order; b"" = zero state
    created: float  # unix seconds
    updated: float
    owner: str  # sha256 hex of the API key that created it, "" when auth is off
    expires_in: int  # TTL seconds remaining after this access


def _record(session_id: str, values: list, expires_in: int) -> SessionRecord:
    """Decode HMGET values in FIELDS order."""
    try:
        model, digest, version, tokens, state, created, updated, owner = values
        return SessionRecord(session_id=session_id, model=model.decode(), digest=digest.decode(),
                             version=int(version), tokens=int(tokens), state=bytes(state), created=float(created),
                             updated=float(updated), owner=owner.decode(), expires_in=expires_in)
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
        """redis://, rediss:// (TLS) or unix:// URL. No silent retries: a failed call fails fast, once."""
        client = redis.Redis.from_url(
            url,
            socket_timeout=SOCKET_TIMEOUT_S,
            socket_connect_timeout=SOCKET_TIMEOUT_S,
            health_check_interval=HEALTH_CHECK_INTERVAL_S,
            retry=Retry(NoBackoff(), 0),  # a retried CAS whose reply was lost would apply its tokens twice
            decode_responses=False,  # state is raw bytes
            client_name="nextword",
        )
        return cls(client, ttl_seconds)

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
            values = self._get(keys=[session_key(session_id)], args=[owner, self.ttl])
        if values is None:
            raise _not_found()
        return _record(session_id, values, self.ttl)

    def compare_and_set(self, session_id: str, expected_version: int, state: bytes,
                        tokens_added: int) -> SessionRecord:
        """Write `state` if the version is still `expected_version`: version+1, tokens+=tokens_added, slide TTL.

        SessionNotFound when the session is gone (it is not recreated); SessionConflict when another write won.
        """
        self._check_id(session_id)
        if isinstance(expected_version, bool) or not isinstance(expected_version, int) or expected_version < 0:
            raise ValueError(f"expected_version must be an int >= 0, got {expected_version!r}")
        if isinstance(tokens_added, bool) or not isinstance(tokens_added, int) or tokens_added < 0:
            raise ValueError(f"tokens_added must be an int >= 0, got {tokens_added!r}")
        state = bytes(state)
        with self._call("cas"):
            reply = self._cas(keys=[session_key(session_id)],
                              args=[expected_version, state, tokens_added, _num(time.time()), self.ttl])
        code = int(reply[0])
        if code == 0:
            raise _not_found()
        if code == -1:
            raise SessionConflict(f"session changed underneath this write (expected version {expected_version}, "
                                  f"found {int(reply[1])})")
        model, digest, version, tokens, created, updated, owner = reply[1:]
        return _record(session_id, [model, digest, version, tokens, state, created, updated, owner], self.ttl)

    def delete(self, session_id: str, owner: str) -> SessionRecord:
        """Delete and return the session; SessionNotFound when missing or foreign (then nothing is deleted)."""
        self._check_id(session_id)
        with self._call("delete"):
            values = self._delete(keys=[session_key(session_id)], args=[owner])
        if values is None:
            raise _not_found()
        return _record(session_id, values, 0)

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
        """Time one Redis round trip; turn any redis-py failure into StateStoreUnavailable."""
        start = time.perf_counter()
        try:
            yield
        except redis.RedisError as e:
            REDIS_ERRORS.labels(operation=operation).inc()
            if isinstance(e, (redis.ConnectionError, redis.TimeoutError, redis.exceptions.ReadOnlyError)):
                log.warning("redis %s failed: %s: %s", operation, type(e).__name__, e)
            else:  # OOM, MISCONF, WRONGTYPE, a script error...: still the store's fault, but worth a trace
                log.error("redis %s failed: %s: %s", operation, type(e).__name__, e, exc_info=True)
            raise StateStoreUnavailable("the session store is unavailable; retry shortly",
                                        headers={"Retry-After": "1"}) from None
        finally:
            REDIS_LATENCY.labels(operation=operation).observe(time.perf_counter() - start)


def _num(value: float) -> str:
    return f"{value:.6f}"


def _not_found() -> SessionNotFound:
    return SessionNotFound("unknown or expired session", field="session_id")
