"""Bad requests, as a table: each gets the JSON error `{"error": {"code", "message", "field"}}` with
the right status, code and field, and nothing ever answers 500 with a traceback."""

from __future__ import annotations

import json
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest

from service.config import Settings
from service.http.app import create_app
from service.state import SessionStore

SID = SessionStore.new_id()  # well-formed, never created
LONG_TEXT = "the " * 513  # one token past the default limit (512)
HUGE = "a " * 40_000  # 80 kB: past the default 64 kB body limit


def _json(body) -> dict:
    return {"data": json.dumps(body), "content_type": "application/json"}


def _raw(data: bytes | str, content_type: str | None = "application/json") -> dict:
    return {"data": data, "content_type": content_type} if content_type else {"data": data}


GENERATE = f"/sessions/{SID}/generate"

# (id, method, path, request kwargs, status, code, field)
CASES = [
    # -- /predict: the body itself
    ("malformed-json", "POST", "/predict", _raw('{"text": '), 400, "invalid_json", None),
    ("empty-body", "POST", "/predict", _raw(""), 400, "invalid_json", None),
    ("json-array", "POST", "/predict", _raw('["the cat"]'), 400, "invalid_json", None),
    ("json-string", "POST", "/predict", _raw('"the cat"'), 400, "invalid_json", None),
    ("json-nan", "POST", "/predict", _raw('{"text": "the", "top_k": NaN}'), 400, "invalid_json", None),
    ("non-utf8", "POST", "/predict", _raw(b'{"text": "caf\xe9"}'), 400, "invalid_json", None),
    ("utf16", "POST", "/predict", _raw('{"text": "the"}'.encode("utf-16")), 400, "invalid_json", None),
    ("text-plain", "POST", "/predict", _raw("the cat", "text/plain"), 415, "unsupported_media_type", None),
    ("form", "POST", "/predict", {"data": {"text": "the"}}, 415, "unsupported_media_type", None),
    ("no-content-type", "POST", "/predict", _raw(b'{"text": "the"}', None), 415, "unsupported_media_type", None),
    ("too-large", "POST", "/predict", _json({"text": HUGE}), 413, "payload_too_large", None),
    # -- /predict: fields
    ("missing-text", "POST", "/predict", _json({}), 400, "invalid_input", "text"),
    ("null-text", "POST", "/predict", _json({"text": None}), 400, "invalid_input", "text"),
    ("empty-text", "POST", "/predict", _json({"text": ""}), 400, "invalid_input", "text"),
    ("blank-text", "POST", "/predict", _json({"text": " \n\t "}), 400, "invalid_input", "text"),
    ("no-words", "POST", "/predict", _json({"text": "\u200b\ufe0f\u0007"}), 400, "invalid_input", "text"),
    ("nul-in-text", "POST", "/predict", _json({"text": "the\u0000cat"}), 400, "invalid_input", "text"),
    ("text-number", "POST", "/predict", _json({"text": 5}), 400, "invalid_input", "text"),
    ("text-list", "POST", "/predict", _json({"text": ["the"]}), 400, "invalid_input", "text"),
    ("text-too-many-tokens", "POST", "/predict", _json({"text": LONG_TEXT}), 400, "invalid_input", "text"),
    ("model-number", "POST", "/predict", _json({"text": "the", "model": 7}), 400, "invalid_input", "model"),
    ("model-empty", "POST", "/predict", _json({"text": "the", "model": ""}), 400, "invalid_input", "model"),
    ("top-k-string", "POST", "/predict", _json({"text": "the", "top_k": "3"}), 400, "invalid_input", "top_k"),
    ("top-k-bool", "POST", "/predict", _json({"text": "the", "top_k": True}), 400, "invalid_input", "top_k"),
    ("top-k-float", "POST", "/predict", _json({"text": "the", "top_k": 2.5}), 400, "invalid_input", "top_k"),
    ("top-k-zero", "POST", "/predict", _json({"text": "the", "top_k": 0}), 400, "invalid_input", "top_k"),
    ("top-k-negative", "POST", "/predict", _json({"text": "the", "top_k": -1}), 400, "invalid_input", "top_k"),
    ("top-k-too-big", "POST", "/predict", _json({"text": "the", "top_k": 1001}), 400, "invalid_input", "top_k"),
    ("session-number", "POST", "/predict", _json({"text": "the", "session_id": 12}), 400, "invalid_input",
     "session_id"),
    ("unknown-field", "POST", "/predict", _json({"text": "the", "temperature": 1}), 400, "invalid_input",
     "temperature"),
    ("unknown-model", "POST", "/predict", _json({"text": "the", "model": "nope"}), 404, "unknown_model", "model"),
    ("unknown-session", "POST", "/predict", _json({"text": "the", "session_id": SID}), 404, "session_not_found",
     "session_id"),
    ("junk-session", "POST", "/predict", _json({"text": "the", "session_id": "../../etc/passwd"}), 404,
     "session_not_found", "session_id"),
    ("not-acceptable", "POST", "/predict", {**_json({"text": "the"}), "headers": {"Accept": "text/html"}}, 406,
     "not_acceptable", None),
    # -- /predict/batch: a malformed item makes the request malformed, naming the item
    ("batch-no-items", "POST", "/predict/batch", _json({}), 400, "invalid_input", "items"),
    ("batch-items-object", "POST", "/predict/batch", _json({"items": {"text": "the"}}), 400, "invalid_input",
     "items"),
    ("batch-empty", "POST", "/predict/batch", _json({"items": []}), 400, "invalid_input", "items"),
    ("batch-too-many", "POST", "/predict/batch", _json({"items": [{"text": "the"}] * 257}), 400, "invalid_input",
     "items"),
    ("batch-item-string", "POST", "/predict/batch", _json({"items": [{"text": "the"}, "cat"]}), 400,
     "invalid_input", "items[1]"),
    ("batch-item-no-text", "POST", "/predict/batch", _json({"items": [{"text": "the"}, {"top_k": 3}]}), 400,
     "invalid_input", "items[1].text"),
    ("batch-item-top-k", "POST", "/predict/batch", _json({"items": [{"text": "the", "top_k": 1001}]}), 400,
     "invalid_input", "items[0].top_k"),
    ("batch-item-unknown-field", "POST", "/predict/batch", _json({"items": [{"text": "the"}] * 3 +
                                                                  [{"text": "cat", "scores": True}]}), 400,
     "invalid_input", "items[3].scores"),
    ("batch-item-version-string", "POST", "/predict/batch",
     _json({"items": [{"text": "the", "session_id": SID, "if_version": "1"}]}), 400, "invalid_input",
     "items[0].if_version"),
    ("batch-unknown-field", "POST", "/predict/batch", _json({"items": [{"text": "the"}], "top_k": 3}), 400,
     "invalid_input", "top_k"),
    # -- /sessions
    ("session-model-number", "POST", "/sessions", _json({"model": 5}), 400, "invalid_input", "model"),
    ("session-unknown-model", "POST", "/sessions", _json({"model": "nope"}), 404, "unknown_model", "model"),
    ("session-unknown-field", "POST", "/sessions", _json({"name": "x"}), 400, "invalid_input", "name"),
    ("session-malformed", "POST", "/sessions", _raw("{"), 400, "invalid_json", None),
    ("session-text-plain", "POST", "/sessions", _raw("tiny-lstm", "text/plain"), 415, "unsupported_media_type",
     None),
    ("session-too-large", "POST", "/sessions", _json({"model": HUGE}), 413, "payload_too_large", None),
    ("get-unknown-session", "GET", f"/sessions/{SID}", {}, 404, "session_not_found", "session_id"),
    ("delete-unknown-session", "DELETE", f"/sessions/{SID}", {}, 404, "session_not_found", "session_id"),
    # -- /sessions/<id>/generate (fields are checked before the session is looked up)
    ("gen-no-body", "POST", GENERATE, {}, 415, "unsupported_media_type", None),
    ("gen-malformed", "POST", GENERATE, _raw("{]"), 400, "invalid_json", None),
    ("gen-temperature-zero", "POST", GENERATE, _json({"temperature": 0}), 400, "invalid_input", "temperature"),
    ("gen-temperature-high", "POST", GENERATE, _json({"temperature": 101}), 400, "invalid_input", "temperature"),
    ("gen-temperature-string", "POST", GENERATE, _json({"temperature": "hot"}), 400, "invalid_input",
     "temperature"),
    ("gen-temperature-huge-int", "POST", GENERATE, _raw('{"temperature": 1' + "0" * 400 + "}"), 400,
     "invalid_input", "temperature"),  # too large for a float: no OverflowError, no 500
    ("gen-top-p-zero", "POST", GENERATE, _json({"top_p": 0}), 400, "invalid_input", "top_p"),
    ("gen-top-p-high", "POST", GENERATE, _json({"top_p": 1.5}), 400, "invalid_input", "top_p"),
    ("gen-top-k-negative", "POST", GENERATE, _json({"top_k": -1}), 400, "invalid_input", "top_k"),
    ("gen-max-tokens-zero", "POST", GENERATE, _json({"max_tokens": 0}), 400, "invalid_input", "max_tokens"),
    ("gen-max-tokens-high", "POST", GENERATE, _json({"max_tokens": 257}), 400, "invalid_input", "max_tokens"),
    ("gen-seed-negative", "POST", GENERATE, _json({"seed": -1}), 400, "invalid_input", "seed"),
    ("gen-seed-huge", "POST", GENERATE, _json({"seed": 2**63}), 400, "invalid_input", "seed"),
    ("gen-stop-string", "POST", GENERATE, _json({"stop": "."}), 400, "invalid_input", "stop"),
    ("gen-stop-blank", "POST", GENERATE, _json({"stop": [" "]}), 400, "invalid_input", "stop"),
    ("gen-stop-many", "POST", GENERATE, _json({"stop": ["x"] * 17}), 400, "invalid_input", "stop"),
    ("gen-stop-long", "POST", GENERATE, _json({"stop": ["x" * 101]}), 400, "invalid_input", "stop"),
    ("gen-empty-text", "POST", GENERATE, _json({"text": ""}), 400, "invalid_input", "text"),
    ("gen-unknown-field", "POST", GENERATE, _json({"n": 3}), 400, "invalid_input", "n"),
    ("gen-unknown-session", "POST", GENERATE, _json({"max_tokens": 2}), 404, "session_not_found", "session_id"),
    # -- routing
    ("no-endpoint", "GET", "/nope", {}, 404, "not_found", None),
    ("predict-get", "GET", "/predict", {}, 405, "method_not_allowed", None),
    ("models-delete", "DELETE", "/models", {}, 405, "method_not_allowed", None),
    ("session-put", "PUT", f"/sessions/{SID}", {}, 405, "method_not_allowed", None),
    ("unknown-model-info", "GET", "/models/nope", {}, 404, "unknown_model", "model"),
    ("unknown-model-vocab", "GET", "/models/nope/vocab", {}, 404, "unknown_model", "model"),
]


def assert_error(response, status: int, code: str, field: str | None) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)[:500]
    assert response.mimetype == "application/json"
    body = response.json
    assert set(body) == {"error"} and set(body["error"]) == {"code", "message", "field"}
    error = body["error"]
    assert (error["code"], error["field"]) == (code, field), error
    assert isinstance(error["message"], str) and error["message"]
    assert "Traceback" not in response.get_data(as_text=True)
    assert response.headers.get("X-Request-ID")
    return error


@pytest.fixture(scope="module")
def error_client(models_dir, redis_server):
    """One app for the whole table (rows never create sessions)."""
    app = create_app(Settings(models_dir=models_dir, redis_url=redis_server.url, default_model="tiny-lstm",
                              device="cpu", session_ttl_seconds=60, log_level="error"))
    yield app.test_client()
    app.extensions["nextword"].engine.close()


@pytest.mark.parametrize("method, path, kwargs, status, code, field", [c[1:] for c in CASES],
                         ids=[c[0] for c in CASES])
def test_bad_request(error_client, method, path, kwargs, status, code, field):
    response = error_client.open(path, method=method, **kwargs)
    assert_error(response, status, code, field)
    if status == 405:
        assert method not in response.headers["Allow"] and response.headers["Allow"]


def test_message_names_the_field_and_limit(error_client):
    error = error_client.post("/predict", json={"text": "the", "top_k": 5000}).json["error"]
    assert "`top_k`" in error["message"] and "1000" in error["message"]
    error = error_client.post("/predict", json={"text": LONG_TEXT}).json["error"]
    assert "513" in error["message"] and "512" in error["message"]


def test_limits_follow_the_settings(make_app):
    client = make_app(max_text_tokens=3, max_top_k=5, max_body_bytes=1024).test_client()
    assert client.post("/predict", json={"text": "a b c", "top_k": 5}).status_code == 200
    assert_error(client.post("/predict", json={"text": "a b c d"}), 400, "invalid_input", "text")
    assert_error(client.post("/predict", json={"text": "a", "top_k": 6}), 400, "invalid_input", "top_k")
    assert_error(client.post("/predict", json={"text": "a " * 600}), 413, "payload_too_large", None)


# -- auth ------------------------------------------------------------------------------------------------------------

@pytest.fixture
def keyed_client(make_app):
    return make_app(api_keys=("key-one", "key-two")).test_client()


@pytest.mark.parametrize("authorization", [None, "", "Bearer", "Bearer wrong", "Basic a2V5LW9uZQ==", "key-one"])
def test_missing_or_wrong_key_is_401(keyed_client, authorization):
    headers = {} if authorization is None else {"Authorization": authorization}
    for method, path, kwargs in (("POST", "/predict", _json({"text": "the"})), ("GET", "/models", {}),
                                 ("POST", "/sessions", {}), ("GET", f"/sessions/{SID}", {}),
                                 ("POST", GENERATE, _json({}))):
        response = keyed_client.open(path, method=method, headers=headers, **kwargs)
        assert_error(response, 401, "unauthorized", None)
        assert response.headers["WWW-Authenticate"].startswith("Bearer")


def test_keys_open_the_api_and_own_sessions(keyed_client):
    one, two = {"Authorization": "Bearer key-one"}, {"Authorization": "Bearer key-two"}
    assert keyed_client.post("/predict", json={"text": "the"}, headers=one).status_code == 200
    sid = keyed_client.post("/sessions", headers=one).json["session_id"]
    assert keyed_client.get(f"/sessions/{sid}", headers=one).status_code == 200
    # another key's session does not exist for this key
    assert_error(keyed_client.get(f"/sessions/{sid}", headers=two), 404, "session_not_found", "session_id")
    assert_error(keyed_client.post("/predict", json={"text": "the", "session_id": sid}, headers=two), 404,
                 "session_not_found", "session_id")
    for path in ("/healthz", "/readyz", "/metrics", "/openapi.json"):
        assert keyed_client.get(path).status_code == 200, path


# -- 429, 409 under races, and the 500 handler ------------------------------------------------------------------------------

def test_too_many_streams_is_429(make_app):
    client = make_app(max_streams=1).test_client()
    sid = client.post("/sessions").json["session_id"]
    held = client.post(f"/sessions/{sid}/generate", json={"max_tokens": 3, "seed": 1},
                       headers={"Accept": "text/event-stream"}, buffered=False)
    assert held.status_code == 200  # started, not yet read: it holds the only slot
    response = client.post(f"/sessions/{sid}/generate", json={"max_tokens": 3})
    assert_error(response, 429, "overloaded", None)
    assert int(response.headers["Retry-After"]) >= 1
    held.get_data()  # drain: the slot is freed
    held.close()
    assert client.post(f"/sessions/{sid}/generate", json={"max_tokens": 3}).status_code == 200


def test_lost_races_without_retries_are_409_and_never_lost_writes(make_app, monkeypatch):
    """With no CAS re-runs, steps whose session another replica wrote between their read and their write get 409
    session_conflict; the session counts exactly the winners' tokens. One worker's concurrent requests on a session
    never race each other (they are applied as one chain), so the race is made certain with a second app on the same
    Redis, which writes during the first app's first model call: the requests in that call lose."""
    app, replica = make_app(cas_retries=0), make_app()
    sid = app.test_client().post("/sessions").json["session_id"]
    scheduler = app.extensions["nextword"].engine.model(None)
    real, held = scheduler.runtime.run, threading.Event()

    def run(tokens, states, with_log_probs=True):
        if not held.is_set():
            held.set()
            assert replica.test_client().post("/predict", json={"text": "dog", "session_id": sid}).status_code == 200
        return real(tokens, states, with_log_probs)

    monkeypatch.setattr(scheduler.runtime, "run", run)
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(lambda _: app.test_client().post("/predict", json={"text": "cat", "session_id": sid}),
                                range(6)))
    assert held.is_set()
    won = [r for r in answers if r.status_code == 200]
    for r in answers:
        if r.status_code != 200:
            assert_error(r, 409, "session_conflict", "session_id")
    assert len(won) < 6  # at least the first call's requests read the session before the replica wrote
    assert app.test_client().get(f"/sessions/{sid}").json["tokens"] == 1 + len(won)  # the replica's and the winners'


def test_unexpected_errors_are_json_500_without_a_traceback(app):
    def boom():
        raise RuntimeError("secret internals /etc/shadow")

    app.add_url_rule("/boom", "boom", boom)
    response = app.test_client().get("/boom", headers={"X-Request-ID": "req-123"})
    error = assert_error(response, 500, "internal", None)
    assert "req-123" in error["message"]
    assert "secret" not in response.get_data(as_text=True) and "RuntimeError" not in response.get_data(as_text=True)
