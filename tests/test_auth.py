"""Bearer API keys (service/http/auth.py): 401 without a valid key, sessions owned by the key that
made them (404 for any other), open health probes, and keys that never reach logs or Redis.

In-process tests use the Flask client on the real Redis; the log, key-file and startup tests run the
real service under gunicorn.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets

import pytest
import redis
import requests

from service.http import auth
from tests.sse import read_events

# Distinctive keys, so finding one in a log or in Redis cannot be a coincidence.
K1 = "nwk1-" + secrets.token_urlsafe(24)
K2 = "nwk2-" + secrets.token_urlsafe(24)
K3 = "nwk3-" + secrets.token_urlsafe(24)  # only in the key file
BAD = "nwbad-" + secrets.token_urlsafe(24)  # presented, never configured


def bearer(key: str) -> dict:
    return {"Authorization": f"Bearer {key}"}


@pytest.fixture
def keyed(make_app):
    return make_app(api_keys=(K1, K2)).test_client()


def _api_calls(sid: str) -> list[tuple[str, str, dict | None]]:
    """Every API endpoint: (method, path, JSON body)."""
    return [("POST", "/predict", {"text": "the cat"}),
            ("POST", "/predict", {"text": "the cat", "session_id": sid}),
            ("GET", "/models", None),
            ("GET", "/models/tiny-lstm", None),
            ("GET", "/models/tiny-lstm/vocab", None),
            ("POST", "/sessions", None),
            ("GET", f"/sessions/{sid}", None),
            ("POST", f"/sessions/{sid}/generate", {"max_tokens": 2}),
            ("DELETE", f"/sessions/{sid}", None)]


@pytest.mark.parametrize("headers, challenge", [
    ({}, 'Bearer realm="nextword"'),
    ({"Authorization": ""}, 'Bearer realm="nextword"'),
    ({"Authorization": f"Basic {K1}"}, 'Bearer realm="nextword"'),  # the right key in the wrong scheme
    ({"Authorization": "Bearer "}, 'Bearer realm="nextword"'),
    (bearer(BAD), 'Bearer error="invalid_token"'),
    (bearer(K1 + "x"), 'Bearer error="invalid_token"'),
    (bearer(K1[:-1]), 'Bearer error="invalid_token"'),
])
def test_every_api_endpoint_needs_a_valid_key(keyed, headers, challenge):
    sid = keyed.post("/sessions", headers=bearer(K1)).get_json()["session_id"]
    for method, path, body in _api_calls(sid):
        response = keyed.open(path, method=method, json=body, headers=headers)
        assert response.status_code == 401, (method, path, response.status_code)
        assert response.headers["WWW-Authenticate"] == challenge
        assert response.get_json()["error"]["code"] == "unauthorized"
    assert keyed.get(f"/sessions/{sid}", headers=bearer(K1)).get_json()["version"] == 0  # nothing happened


def test_valid_keys_open_the_api_and_probes_stay_open(keyed):
    for key in (K1, K2):
        assert keyed.post("/predict", json={"text": "the cat"}, headers=bearer(key)).status_code == 200
    assert keyed.post("/predict", json={"text": "the"}, headers={"Authorization": f"bearer  {K1} "}).status_code == 200
    for path in ("/healthz", "/readyz"):
        response = keyed.get(path)
        assert response.status_code == 200, path


def test_every_configured_key_is_compared_in_constant_time(keyed, monkeypatch):
    calls, real = [], hmac.compare_digest

    def counting(a, b):
        calls.append((len(a), len(b)))
        return real(a, b)

    monkeypatch.setattr(auth.hmac, "compare_digest", counting)
    for key, status in ((K1, 200), (K2, 200), (BAD, 401), ("x", 401), (K1 * 50, 401)):
        calls.clear()
        assert keyed.get("/models", headers=bearer(key)).status_code == status
        # no early exit, and always digests of one length: the time says nothing about the key
        assert calls == [(64, 64), (64, 64)], key


def test_a_session_belongs_to_the_key_that_created_it(keyed):
    sid = keyed.post("/sessions", headers=bearer(K1)).get_json()["session_id"]
    missing = "x" * 32  # well-formed, never created: a foreign session must look exactly like this
    for target in (sid, missing):
        for method, path, body in _api_calls(target):
            if path in ("/sessions", "/models", "/models/tiny-lstm", "/models/tiny-lstm/vocab") or body == {
                    "text": "the cat"}:
                continue  # not about a session
            response = keyed.open(path, method=method, json=body, headers=bearer(K2))
            assert response.status_code == 404, (method, path)
            assert response.get_json()["error"]["code"] == "session_not_found"
    # K2's attempts (delete included) changed nothing; the owner still has it, untouched
    info = keyed.get(f"/sessions/{sid}", headers=bearer(K1)).get_json()
    assert (info["version"], info["tokens"]) == (0, 0)
    fed = keyed.post("/predict", json={"text": "the cat", "session_id": sid}, headers=bearer(K1))
    assert fed.status_code == 200 and fed.get_json()["session"]["tokens"] == 2
    generated = keyed.post(f"/sessions/{sid}/generate", json={"max_tokens": 2}, headers=bearer(K1))
    assert generated.status_code == 200
    assert keyed.delete(f"/sessions/{sid}", headers=bearer(K1)).status_code == 204


def _redis_dump(url: str) -> list[bytes]:
    """Every key name and every value (hash fields and values, strings) in the Redis."""
    client = redis.Redis.from_url(url)
    try:
        out = []
        for key in client.scan_iter(count=1000):
            out.append(key)
            kind = client.type(key)
            if kind == b"hash":
                for field, value in client.hgetall(key).items():
                    out += [field, value]
            elif kind == b"string":
                out.append(client.get(key) or b"")
            elif kind == b"list":
                out += client.lrange(key, 0, -1)
            elif kind in (b"set", b"zset"):
                out += list(client.smembers(key)) if kind == b"set" else client.zrange(key, 0, -1)
        return out
    finally:
        client.close()


def _owners(url: str) -> set[str]:
    client = redis.Redis.from_url(url)
    try:
        return {client.hget(k, "owner").decode() for k in client.scan_iter(match="nextword:session:*")}
    finally:
        client.close()


def test_redis_holds_a_hash_of_the_key_never_the_key(keyed, redis_url):
    for key in (K1, K2):
        sid = keyed.post("/sessions", headers=bearer(key)).get_json()["session_id"]
        keyed.post("/predict", json={"text": "the cat", "session_id": sid}, headers=bearer(key))
    dump = _redis_dump(redis_url)
    assert dump
    for secret in (K1, K2):
        assert not any(secret.encode() in item for item in dump)
    assert _owners(redis_url) == {hashlib.sha256(k.encode()).hexdigest() for k in (K1, K2)}


def test_keys_from_env_and_file_on_the_real_service(service_factory, redis_url, tmp_path):
    key_file = tmp_path / "keys.txt"
    key_file.write_text(f"# nextword API keys, one a line\n\n  {K3}  \n", encoding="utf-8")
    proc = service_factory(NEXTWORD_API_KEYS=f"{K1}, {K2}", NEXTWORD_API_KEYS_FILE=str(key_file),
                           NEXTWORD_LOG_LEVEL="debug")
    url = proc.url
    for path in ("/healthz", "/readyz"):
        assert requests.get(url + path, timeout=10).status_code == 200
    assert requests.post(url + "/sessions", timeout=10).status_code == 401
    assert requests.post(url + "/sessions", headers=bearer(BAD), timeout=10).status_code == 401
    sessions = {}
    for key in (K1, K2, K3):
        response = requests.post(url + "/sessions", headers=bearer(key), timeout=10)
        assert response.status_code == 201, response.text
        sessions[key] = response.json()["session_id"]
        fed = requests.post(url + "/predict", json={"text": "the cat", "session_id": sessions[key]},
                            headers=bearer(key), timeout=10)
        assert fed.status_code == 200
    # a stream is owned too: K3's session streams for K3 and is 404 for K1
    events = read_events(f"{url}/sessions/{sessions[K3]}/generate", {"max_tokens": 2}, headers=bearer(K3))
    assert events[-1].event == "done"
    foreign = requests.post(f"{url}/sessions/{sessions[K3]}/generate", json={"max_tokens": 2},
                            headers={**bearer(K1), "Accept": "text/event-stream"}, timeout=10)
    assert foreign.status_code == 404
    proc.stop()  # flush everything the service had to say
    log = proc.log()
    assert log.count('"msg": "request"') >= 8  # every request was logged...
    for secret in (K1, K2, K3, BAD):  # ...and no key, good or bad, in any line
        assert secret not in log
    assert "3 configured" in log  # the startup lines count the keys instead
    assert "no API keys configured" not in log
    dump = _redis_dump(redis_url)
    for secret in (K1, K2, K3, BAD):
        assert not any(secret.encode() in item for item in dump)


def test_without_keys_the_service_runs_open_and_says_so(service_factory):
    proc = service_factory()
    assert requests.post(proc.url + "/sessions", timeout=10).status_code == 201
    assert "no API keys configured: the API is open" in proc.log()
