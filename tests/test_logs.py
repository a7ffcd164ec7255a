"""service/logs.py and the request log line: one JSON object per request, request ids, no secrets or user text.

Request lines are checked on an app built by create_app (fast); startup lines and the whole stderr of
the real service (gunicorn's own messages included) on `python -m service`.
"""

from __future__ import annotations

import io
import json
import logging
import re
import uuid

import pytest
import redis as redis_py
import requests

from service import logs

HEX_ID = re.compile(r"^[0-9a-f]{32}$")


class Captured:
    def __init__(self):
        self.stream = io.StringIO()

    @property
    def text(self) -> str:
        return self.stream.getvalue()

    @property
    def lines(self) -> list[dict]:
        return [json.loads(line) for line in self.text.splitlines() if line.strip()]

    def requests(self) -> list[dict]:
        return [line for line in self.lines if line["msg"] == "request"]


@pytest.fixture
def captured():
    """JSON lines of the `nextword` logger (request lines, startup lines), formatted by logs.JsonFormatter."""
    cap = Captured()
    handler = logging.StreamHandler(cap.stream)
    handler.setFormatter(logs.JsonFormatter())
    logger = logging.getLogger("nextword")
    root = logging.getLogger()
    saved = (logger.level, root.level, list(root.handlers))
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    yield cap
    logger.removeHandler(handler)
    logger.setLevel(saved[0])
    root.setLevel(saved[1])
    root.handlers[:] = saved[2]


@pytest.fixture
def make_app(captured, make_app):
    """conftest's make_app at log level info, after `captured` is listening."""
    return lambda **overrides: make_app(log_level="info", **overrides)


def test_formatter_writes_one_json_object_per_line():
    record = logging.LogRecord("nextword", logging.INFO, __file__, 1, "hello\nworld", None, None)
    record.fields = {"path": "/predict", "n": 3}
    line = logs.JsonFormatter().format(record)
    assert "\n" not in line
    out = json.loads(line)
    assert out["msg"] == "hello\nworld" and out["path"] == "/predict" and out["n"] == 3
    assert out["level"] == "info" and out["logger"] == "nextword" and isinstance(out["pid"], int)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", out["ts"])


def test_one_line_per_request_with_its_fields(make_app, captured):
    client = make_app().test_client()
    response = client.post("/predict", json={"text": "the cat eats"}, headers={"X-Request-ID": "req-42.a:b_c"})
    assert response.status_code == 200
    assert response.headers["X-Request-ID"] == "req-42.a:b_c"
    (line,) = captured.requests()
    assert line["request_id"] == "req-42.a:b_c"
    assert line["method"] == "POST" and line["path"] == "/predict" and line["status"] == 200
    assert line["model"] == "tiny-lstm" and line["tokens"] == 3
    assert isinstance(line["latency_ms"], float) and line["latency_ms"] > 0
    assert line["level"] == "info" and line["logger"] == "nextword"


def test_every_request_gets_an_id(make_app, captured):
    client = make_app().test_client()
    first = client.get("/healthz").headers["X-Request-ID"]
    second = client.get("/healthz").headers["X-Request-ID"]
    assert HEX_ID.match(first) and HEX_ID.match(second) and first != second
    assert [line["request_id"] for line in captured.requests()] == [first, second]
    assert all(set(line) >= {"method", "path", "status", "latency_ms", "model", "tokens", "request_id"}
               for line in captured.requests())


@pytest.mark.parametrize("bad", ["a b", "x" * 129, "<script>alert(1)</script>", "id\u00e9", "a;rm -rf", "\"quoted\""])
def test_a_malformed_request_id_is_replaced(make_app, captured, bad):
    client = make_app().test_client()
    response = client.get("/healthz", headers={"X-Request-ID": bad})
    rid = response.headers["X-Request-ID"]
    assert HEX_ID.match(rid)
    assert captured.requests()[0]["request_id"] == rid
    assert bad not in captured.text


def test_paths_are_templates_never_raw(make_app, captured):
    client = make_app().test_client()
    sid = client.post("/sessions", json={}).get_json()["session_id"]
    assert client.get(f"/sessions/{sid}").status_code == 200
    assert client.post(f"/sessions/{sid}/generate", json={"max_tokens": 2, "seed": 3}).status_code == 200
    assert client.delete(f"/sessions/{sid}").status_code == 204
    junk = f"/no/such/thing/{uuid.uuid4().hex}"
    assert client.get(junk).status_code == 404
    paths = [(line["method"], line["path"], line["status"]) for line in captured.requests()]
    assert paths == [("POST", "/sessions", 201), ("GET", "/sessions/<session_id>", 200),
                     ("POST", "/sessions/<session_id>/generate", 200), ("DELETE", "/sessions/<session_id>", 204),
                     ("GET", "unmatched", 404)]
    assert sid not in captured.text
    assert junk not in captured.text and "no/such" not in captured.text


def test_a_stream_is_logged_once_after_its_last_event(make_app, captured):
    client = make_app().test_client()
    sid = client.post("/sessions", json={}).get_json()["session_id"]
    response = client.post(f"/sessions/{sid}/generate", json={"text": "the cat", "max_tokens": 4, "seed": 7},
                           headers={"Accept": "text/event-stream"})
    body = response.get_data(as_text=True)
    assert "event: done" in body
    response.close()
    lines = [line for line in captured.requests() if line["path"] == "/sessions/<session_id>/generate"]
    assert len(lines) == 1
    (line,) = lines
    assert line["model"] == "tiny-lstm" and line["tokens"] == 2
    assert line["generated"] == body.count("event: token") >= 1


def test_user_text_stays_out_of_logs_by_default(make_app, captured):
    client = make_app().test_client()
    secret = f"zq{uuid.uuid4().hex}"  # unique, so any trace of it in the logs is a leak
    text = f"the cat {secret}"
    assert client.post("/predict", json={"text": text}).status_code == 200
    assert client.post("/predict", json={"text": text, "model": f"m{secret}"}).status_code == 404
    assert client.post("/predict", json={"text": text, "top_k": f"{secret}"}).status_code == 400
    sid = client.post("/sessions", json={}).get_json()["session_id"]
    assert client.post("/predict", json={"text": text, "session_id": sid}).status_code == 200
    assert client.post(f"/sessions/{sid}/generate", json={"text": text, "max_tokens": 2}).status_code == 200
    assert client.post(f"/sessions/{sid}/generate", json={"text": text, "max_tokens": 2},
                       headers={"Accept": "text/event-stream"}).status_code == 200
    assert len(captured.requests()) == 6
    assert secret not in captured.text


def test_user_text_is_logged_when_opted_in(make_app, captured):
    client = make_app(log_text=True).test_client()
    text = f"the cat zq{uuid.uuid4().hex}"
    assert client.post("/predict", json={"text": text}).status_code == 200
    assert client.get("/healthz").status_code == 200
    predict_line, health_line = captured.requests()
    assert predict_line["text"] == text
    assert health_line["text"] is None


def test_api_keys_never_reach_the_logs(make_app, captured):
    key = f"key-{uuid.uuid4().hex}"
    client = make_app(api_keys=(key,)).test_client()
    assert client.post("/predict", json={"text": "the cat"}).status_code == 401
    assert client.post("/predict", json={"text": "the cat"}, headers={"Authorization": f"Bearer {key}"}).status_code \
        == 200
    assert client.post("/predict", json={"text": "the cat"}, headers={"Authorization": "Bearer wrong-key"}).status_code \
        == 401
    assert [line["status"] for line in captured.requests()] == [401, 200, 401]
    ready = [line for line in captured.lines if line["msg"] == "worker ready"]
    assert ready and ready[0]["settings"]["api_keys"] == "1 configured"
    assert key not in captured.text and "wrong-key" not in captured.text


def test_the_service_logs_json_startup_lines_without_secrets(service_factory, restartable_redis):
    password = f"pw-{uuid.uuid4().hex}"
    key = f"key-{uuid.uuid4().hex}"
    admin = redis_py.Redis.from_url(restartable_redis.url)
    admin.config_set("requirepass", password)
    try:
        url = restartable_redis.url.replace("redis://", f"redis://:{password}@")
        service = service_factory(workers=2, redis=url, NEXTWORD_API_KEYS=key, NEXTWORD_CONNECTIONS="64",
                                  NEXTWORD_MAX_STREAMS="2")
        response = requests.post(service.url + "/predict", json={"text": "the cat"}, timeout=30,
                                 headers={"Authorization": f"Bearer {key}", "X-Request-ID": "from-client-1"})
        assert response.status_code == 200 and response.headers["X-Request-ID"] == "from-client-1"
        service.stop()
        text = service.log()
        lines = [json.loads(line) for line in text.splitlines() if line.startswith("{")]
        others = [line for line in text.splitlines() if line.strip() and not line.startswith("{")]
        assert others and others[0].startswith("nextword is serving"), "every log line is JSON"
        assert all(line.startswith("  ") for line in others[1:]), "only the banner for people (stdout) is not JSON"
        (starting,) = [line for line in lines if line["msg"] == "service starting"]
        assert starting["workers"] == 2 and starting["connections"] == 64
        assert starting["worker_class"] == "service.process.worker.GreenletWorker"
        assert starting["redis_url"].startswith("redis://:***@127.0.0.1:")
        assert starting["api_keys"] == "1 configured" and starting["device"] == "cpu"
        loaded = {(line["pid"], line["model"], line["provider"]) for line in lines if line["msg"] == "model loaded"}
        assert {(m, p) for _, m, p in loaded} == {("tiny-lstm", "CPUExecutionProvider"),
                                                  ("tiny-rnn", "CPUExecutionProvider")}
        assert len({pid for pid, _, _ in loaded}) == 2, "each worker says what it loaded"
        (line,) = [line for line in lines if line["msg"] == "request" and line["path"] == "/predict"]
        assert line["request_id"] == "from-client-1" and line["status"] == 200 and line["model"] == "tiny-lstm"
        assert password not in text and key not in text
    finally:
        redis_py.Redis.from_url(restartable_redis.url, password=password).config_set("requirepass", "")
