"""Redis memory: the embedded Redis's limit and eviction policy, and a full Redis as a distinct, quiet error."""

from __future__ import annotations

import logging
import time

import pytest
import redis as redis_py

from service.process.redis_server import MAXMEMORY_POLICY


@pytest.fixture
def admin(restartable_redis):
    client = redis_py.Redis.from_url(restartable_redis.url)
    yield client
    client.config_set("maxmemory", "0")
    client.config_set("maxmemory-policy", MAXMEMORY_POLICY)
    client.close()


@pytest.fixture
def client_on(make_app, restartable_redis):
    return make_app(redis_url=restartable_redis.url).test_client()


def test_the_embedded_redis_has_a_limit_and_evicts_only_keys_with_a_ttl(admin):
    config = admin.config_get("maxmemory*")
    assert int(config["maxmemory"]) == 256 * 1024 * 1024
    assert config["maxmemory-policy"] == MAXMEMORY_POLICY == "volatile-lru"


@pytest.mark.slow
def test_a_full_redis_evicts_the_sessions_idle_longest(client_on, admin):
    def fed_session() -> str:
        sid = client_on.post("/sessions").json["session_id"]
        assert client_on.post("/predict", json={"text": "the cat", "session_id": sid}).status_code == 200
        return sid

    base = int(admin.info("memory")["used_memory"])
    old = [fed_session() for _ in range(200)]
    per_session = (int(admin.info("memory")["used_memory"]) - base) / len(old)
    time.sleep(2.1)  # Redis's LRU clock ticks once a second: the newer sessions must be visibly newer
    new = [fed_session() for _ in range(20)]
    admin.config_set("maxmemory", str(int(admin.info("memory")["used_memory"] - 60 * per_session)))
    for sid in new:  # the newest sessions keep working while the oldest make room
        assert client_on.post("/predict", json={"text": "eats", "session_id": sid}).status_code == 200
    assert int(admin.info("stats")["evicted_keys"]) >= 40
    assert all(client_on.get(f"/sessions/{sid}").json["tokens"] == 3 for sid in new)
    gone = [sid for sid in old if client_on.get(f"/sessions/{sid}").status_code == 404]
    assert len(gone) >= 40  # evicted sessions are simply unknown, as if they had expired


def test_out_of_memory_is_507_logged_once_and_reported_by_readyz(client_on, admin, caplog):
    """With volatile-lru a session write evicts idle sessions (even its own) before Redis refuses it; Redis
    refuses writes outright when nothing is evictable, or under `noeviction` (the default of a Redis configured
    by someone else): that is the case here."""
    sid = client_on.post("/sessions").json["session_id"]
    admin.config_set("maxmemory-policy", "noeviction")
    admin.set("nextword:test:ballast", b"x" * 2_000_000)
    admin.config_set("maxmemory", str(int(admin.info("memory")["used_memory"]) - 1_000_000))
    with caplog.at_level(logging.INFO):
        answers = [client_on.post("/predict", json={"text": "the", "session_id": sid}) for _ in range(5)]
        answers.append(client_on.post("/sessions"))
    for answer in answers:
        assert answer.status_code == 507
        assert answer.json["error"]["code"] == "state_store_full"
        assert "Retry-After" not in answer.headers
    assert client_on.post("/predict", json={"text": "the"}).status_code == 200  # stateless predict still works
    assert client_on.get(f"/sessions/{sid}").status_code == 200  # reads still work
    full = [r for r in caplog.records if "out of memory" in r.getMessage()]
    assert len(full) == 1 and full[0].levelno == logging.WARNING
    assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
    ready = client_on.get("/readyz")
    assert ready.status_code == 503 and ready.json["redis"].startswith("full")

    admin.config_set("maxmemory", "0")
    assert client_on.post("/predict", json={"text": "the", "session_id": sid}).status_code == 200


def test_models_and_readyz_report_what_a_session_costs_in_redis(client, redis_url):
    """The size a session's state takes, from the served bundle, and the whole hash as this Redis counts it: what
    MEMORY USAGE says of a real session (the scratch session it is measured on has an owner; here there is none)."""
    from service.engine import SessionState
    from service.state import session_key

    r = redis_py.Redis.from_url(redis_url)
    try:
        sid = client.post("/sessions", json={"model": "tiny-lstm"}).json["session_id"]
        assert client.post("/predict", json={"text": "the cat", "session_id": sid}).status_code == 200
        real = r.memory_usage(session_key(sid), samples=0)
        [lstm] = [m for m in client.get("/models").json["models"] if m["name"] == "tiny-lstm"]
        bundle = client.application.extensions["nextword"].engine.model("tiny-lstm").bundle
        size = lstm["session"]
        assert size["state_bytes"] == SessionState.nbytes(bundle.state_shape) == len(r.hget(session_key(sid), "state"))
        # the scratch session also holds an owner (a 64-character digest); the allocator's size classes round the
        # difference up to between 80 and 160 bytes depending on what the server allocated before
        assert real <= size["redis_bytes"] <= real + 192
        assert size["sessions_per_gib"] == (1 << 30) // size["redis_bytes"]
        assert client.get("/models/tiny-lstm").json["session"] == size
        assert [m["session"] for m in client.get("/readyz").json["models"] if m["name"] == "tiny-lstm"] == [size]
        assert r.keys("nextword:measure:*") == []  # the scratch session is gone
    finally:
        r.close()
