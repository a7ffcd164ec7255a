"""Sessions over HTTP: lifecycle, continuation equals one-shot reading, concurrency, expiry, 409s.

The Flask test client on a real Redis for most; the concurrency test runs the real service under
gunicorn (2 workers), since racing requests on one session is the point there.
"""

from __future__ import annotations

import shutil
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import redis
import requests

from service.state import SessionStore, session_key

BINARY = "application/octet-stream"
TOLERANCE = 1e-5


def distribution(client, body: dict) -> np.ndarray:
    r = client.post("/predict", json=body, headers={"Accept": BINARY})
    assert r.status_code == 200, r.get_data(as_text=True)
    return np.frombuffer(r.data, dtype="<f4")


def new_session(client, model: str | None = None) -> str:
    r = client.post("/sessions", json={"model": model} if model else None)
    assert r.status_code == 201, r.get_data(as_text=True)
    return r.json["session_id"]


# -- lifecycle -----------------------------------------------------------------------------------------------------

def test_create_show_delete(client):
    r = client.post("/sessions", json={"model": "tiny-rnn"})
    assert r.status_code == 201
    session = r.json
    sid = session["session_id"]
    assert len(sid) >= 22 and SessionStore.valid_id(sid)  # >= 128 random bits, URL-safe
    assert r.headers["Location"] == f"/sessions/{sid}"
    assert session["model"] == "tiny-rnn" and session["tokens"] == 0

    shown = client.get(f"/sessions/{sid}")
    assert shown.status_code == 200
    info = shown.json
    assert info["session_id"] == sid and info["model"] == "tiny-rnn" and info["tokens"] == 0
    assert 0 < info["expires_in"] <= 60  # make_settings: ttl 60 s
    assert info["expires_at"] == pytest.approx(time.time() + info["expires_in"], abs=5)
    assert info["model_version"] == client.get("/models/tiny-rnn").json["version"]

    assert client.delete(f"/sessions/{sid}").status_code == 204
    for call in (lambda: client.get(f"/sessions/{sid}"), lambda: client.delete(f"/sessions/{sid}"),
                 lambda: client.post("/predict", json={"text": "the", "session_id": sid})):
        gone = call()
        assert gone.status_code == 404
        assert gone.json["error"]["code"] == "session_not_found"


@pytest.mark.parametrize("kwargs", [{}, {"json": {}}, {"json": {"model": None}}])
def test_create_without_model_uses_the_default(client, kwargs):
    r = client.post("/sessions", **kwargs)
    assert r.status_code == 201
    assert r.json["model"] == "tiny-lstm"


def test_unknown_session_ids(client):
    for sid in (SessionStore.new_id(), "not-a-session", "x" * 200):
        for r in (client.get(f"/sessions/{sid}"), client.delete(f"/sessions/{sid}"),
                  client.post("/predict", json={"text": "the", "session_id": sid}),
                  client.post(f"/sessions/{sid}/generate", json={"max_tokens": 2})):
            assert r.status_code == 404, sid
            assert r.json["error"] == {"code": "session_not_found", "message": r.json["error"]["message"],
                                       "field": "session_id"}


# -- continuation ----------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("model", ["tiny-lstm", "tiny-rnn"])
def test_split_feeding_equals_one_shot(client, model):
    """"a b c" then "d e" on a session == "a b c d e" on a session == "a b c d e" without one."""
    split = new_session(client, model)
    first = client.post("/predict", json={"text": "the cat eats", "session_id": split})
    assert first.status_code == 200
    assert first.json["session"]["tokens"] == 3 and first.json["tokens"] == ["the", "cat", "eats"]
    assert first.headers["X-Session-Tokens"] == "3"
    continued = distribution(client, {"text": "fish today", "session_id": split})

    whole = new_session(client, model)
    at_once = distribution(client, {"text": "the cat eats fish today", "session_id": whole})
    stateless = distribution(client, {"text": "the cat eats fish today", "model": model})

    assert np.abs(continued - at_once).max() <= TOLERANCE
    assert np.abs(continued - stateless).max() <= TOLERANCE
    assert np.abs(continued - distribution(client, {"text": "the cat eats fish", "model": model})).max() > 1e-4
    assert client.get(f"/sessions/{split}").json["tokens"] == 5
    assert client.get(f"/sessions/{whole}").json["tokens"] == 5


def test_word_by_word_equals_one_shot(client):
    sid = new_session(client)
    words = "a child draws pictures slowly .".split()
    for i, word in enumerate(words, 1):
        body = client.post("/predict", json={"text": word, "session_id": sid, "top_k": 51}).json
        assert body["session"]["tokens"] == i
    last = {p["id"]: p["probability"] for p in body["predictions"]}
    one_shot = distribution(client, {"text": " ".join(words)})
    assert max(abs(one_shot[i] - p) for i, p in last.items()) <= TOLERANCE


def test_session_model_is_kept_without_naming_it(client):
    sid = new_session(client, "tiny-rnn")
    r = client.post("/predict", json={"text": "the dog", "session_id": sid})
    assert r.json["model"] == "tiny-rnn"  # not the default tiny-lstm
    named = client.post("/predict", json={"text": "barks", "session_id": sid, "model": "tiny-rnn"})
    assert named.status_code == 200 and named.json["session"]["tokens"] == 3


def test_concurrent_predicts_on_one_session_all_count(service_factory):
    """20 racing /predict calls, each with one word, on one session of a 2-worker server: all 20 are
    consumed, and the state equals 20 sequential feeds (compared through one more word on both)."""
    service = service_factory(workers=2, NEXTWORD_MAX_STREAMS="6")
    url = service.url
    http = requests.Session()

    def create() -> str:
        r = http.post(f"{url}/sessions", json={})
        assert r.status_code == 201, r.text
        return r.json()["session_id"]

    racing, sequential = create(), create()

    spans = []  # (sent, answered) of each call

    def one(_):
        with requests.Session() as s:  # a connection per thread, so requests really overlap
            sent = time.perf_counter()
            answer = s.post(f"{url}/predict", json={"text": "cat", "session_id": racing}, timeout=60)
            spans.append((sent, time.perf_counter()))
            return answer

    with ThreadPoolExecutor(20) as pool:
        answers = list(pool.map(one, range(20)))
    assert [r.status_code for r in answers] == [200] * 20, [r.text for r in answers if r.status_code != 200]
    # every call saw its own write: the token counts after each are exactly 1..20
    assert sorted(r.json()["session"]["tokens"] for r in answers) == list(range(1, 21))
    # the calls really overlapped (a worker chains its concurrent ones, the workers race each other's writes)
    spans = sorted(spans)
    assert any(later[0] < earlier[1] for earlier, later in zip(spans, spans[1:]))
    info = http.get(f"{url}/sessions/{racing}").json()
    assert info["tokens"] == 20 and info["version"] == 20

    for _ in range(20):
        assert http.post(f"{url}/predict", json={"text": "cat", "session_id": sequential}).status_code == 200

    def after_one_more(sid: str) -> np.ndarray:
        r = http.post(f"{url}/predict", json={"text": "eats", "session_id": sid}, headers={"Accept": BINARY})
        assert r.status_code == 200 and r.headers["X-Session-Tokens"] == "21"
        return np.frombuffer(r.content, dtype="<f4")

    a, b = after_one_more(racing), after_one_more(sequential)
    assert np.abs(a - b).max() <= TOLERANCE
    stateless = http.post(f"{url}/predict", json={"text": " ".join(["cat"] * 20 + ["eats"])},
                          headers={"Accept": BINARY})
    assert np.abs(a - np.frombuffer(stateless.content, dtype="<f4")).max() <= TOLERANCE


# -- expiry ------------------------------------------------------------------------------------------------------------

def test_every_access_slides_the_expiry(client, redis_url):
    sid = new_session(client)
    raw = redis.Redis.from_url(redis_url)
    try:
        key = session_key(sid)
        time.sleep(1.2)
        before = raw.pttl(key)
        assert 50_000 < before <= 58_900  # ttl 60 s, 1.2 s gone
        assert client.get(f"/sessions/{sid}").status_code == 200
        assert raw.pttl(key) > 59_000
        time.sleep(1.2)
        assert client.post("/predict", json={"text": "the", "session_id": sid}).status_code == 200
        assert raw.pttl(key) > 59_000
    finally:
        raw.close()


def test_idle_session_expires(make_app):
    client = make_app(session_ttl_seconds=1).test_client()
    sid = new_session(client)
    assert client.get(f"/sessions/{sid}").json["expires_in"] == 1
    time.sleep(1.6)
    r = client.post("/predict", json={"text": "the", "session_id": sid})
    assert r.status_code == 404 and r.json["error"]["code"] == "session_not_found"
    assert client.get(f"/sessions/{sid}").status_code == 404


# -- 409: another model, another bundle version ------------------------------------------------------------------------

def test_session_of_another_model_is_409(client):
    sid = new_session(client, "tiny-rnn")
    client.post("/predict", json={"text": "the cat", "session_id": sid})
    r = client.post("/predict", json={"text": "eats", "session_id": sid, "model": "tiny-lstm"})
    assert r.status_code == 409
    assert r.json["error"]["code"] == "model_mismatch" and r.json["error"]["field"] == "model"
    assert client.get(f"/sessions/{sid}").json["tokens"] == 2  # untouched


def test_session_of_another_bundle_version_is_409(make_app, models_dir, tiny_exported, tmp_path):
    """The same model name served from a re-trained bundle: an old session is refused, never reused or reset."""
    old_app = make_app()
    sid = new_session(old_app.test_client())
    assert old_app.test_client().post("/predict", json={"text": "the cat", "session_id": sid}).status_code == 200

    retrained = tmp_path / "models"
    shutil.copytree(models_dir, retrained)
    shutil.rmtree(retrained / "tiny-lstm")
    shutil.copytree(tiny_exported(seed=4321), retrained / "tiny-lstm")
    client = make_app(models_dir=retrained).test_client()
    assert client.get("/models/tiny-lstm").json["sha256"] != old_app.extensions["nextword"].engine.model(
        "tiny-lstm").bundle.digest
    for r in (client.post("/predict", json={"text": "eats", "session_id": sid}),
              client.post(f"/sessions/{sid}/generate", json={"max_tokens": 2})):
        assert r.status_code == 409, r.get_data(as_text=True)
        assert r.json["error"]["code"] == "model_mismatch" and r.json["error"]["field"] == "session_id"
    assert client.get(f"/sessions/{sid}").json["tokens"] == 2  # untouched
    assert new_session(client) != sid  # the remedy: a new session works


def test_corrupt_state_bytes_are_409_not_500(client, redis_url, app):
    """A record with the right digest but a state of the wrong size (written by something else)."""
    digest = app.extensions["nextword"].engine.model("tiny-lstm").bundle.digest
    store = SessionStore.from_url(redis_url, 60)
    try:
        sid = store.create("tiny-lstm", digest, "", state=b"\x00" * 12).session_id
    finally:
        store.close()
    r = client.post("/predict", json={"text": "the", "session_id": sid})
    assert r.status_code == 409
    assert r.json["error"]["code"] == "model_mismatch" and r.json["error"]["field"] == "session_id"
