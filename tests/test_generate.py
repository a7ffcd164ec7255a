"""POST /sessions/<id>/generate: drained JSON, SSE streaming, determinism, limits, and what a
disconnect or a failure mid-stream leaves in the session.

In-process tests use the Flask test client on the real Redis and the tiny exported bundles. The
stream tests run the real service under gunicorn and read it as EventSource does (tests/sse.py).
The tiny model makes a token in microseconds, so those servers run with NEXTWORD_BATCH_WAIT_MS:
a product setting (how long every scheduler call waits for batch peers) that paces every tick
without changing any result, so a stream lasts long enough to watch, interrupt and race.
"""

from __future__ import annotations

import contextlib
import re
import time

import numpy as np
import pytest
import requests

from service.errors import StateStoreUnavailable
from service.tokenizer import detokenize
from tests.servers import wait_for
from tests.sse import SSE, SSEReader, open_stream, read_events

PROMPT = "the cat"  # two tokens of the tiny corpus
PACE_MS = 50  # NEXTWORD_BATCH_WAIT_MS of the stream servers: every model step takes at least this long
LONG = 16  # tokens of a "long" stream: (LONG - 1) x PACE_MS = 750 ms from its first event to its end
BINARY = "application/octet-stream"


# --- helpers: the same few calls on the Flask test client and on a real server --------------------


def new_session(client) -> str:
    response = client.post("/sessions")
    assert response.status_code == 201, response.get_data(as_text=True)
    return response.get_json()["session_id"]


def generate(client, sid: str, **body) -> dict:
    response = client.post(f"/sessions/{sid}/generate", json=body)
    assert response.status_code == 200, response.get_data(as_text=True)
    return response.get_json()


def distribution(client, sid: str, text: str) -> np.ndarray:
    """Feeds text to the session and returns the full next-word distribution, (vocab,) float32."""
    response = client.post("/predict", json={"text": text, "session_id": sid}, headers={"Accept": BINARY})
    assert response.status_code == 200, response.get_data(as_text=True)
    return np.frombuffer(response.data, dtype="<f4")


def long_seed(client, n: int = LONG, prompt: str = PROMPT) -> tuple[int, dict]:
    """(seed, drained response) for a continuation of `prompt` on a fresh session that runs n tokens
    without `<eos>` (the tiny model ends most lines within a few words). Found, not hard-coded, so a
    retrained tiny bundle still works; deterministic, since the same seed gives the same words."""
    for seed in range(3000):
        sid = new_session(client)
        drained = generate(client, sid, text=prompt, max_tokens=n, seed=seed)
        client.delete(f"/sessions/{sid}")
        if drained["finish_reason"] == "length":
            return seed, drained
    pytest.fail(f"no seed in 0..2999 gives {n} tokens without <eos>")


@contextlib.contextmanager
def long_stream(url: str, sid: str, seed: int):
    """Session `sid` on the server at `url` generating LONG tokens after PROMPT with `seed`, streamed: its events
    as they arrive."""
    with open_stream(f"{url}/sessions/{sid}/generate", {"text": PROMPT, "max_tokens": LONG, "seed": seed}) as response:
        yield iter(SSEReader(response))


def words_of(details: list[dict]) -> list[str]:
    return [d["word"] for d in details]


class Remote:
    """A real server seen through `requests`, with the Flask test client's call shape."""

    def __init__(self, url: str):
        self.url = url

    def post(self, path: str, json=None, headers=None):
        return _Reply(requests.post(self.url + path, json=json, headers=headers, timeout=30))

    def get(self, path: str):
        return _Reply(requests.get(self.url + path, timeout=30))

    def delete(self, path: str):
        return _Reply(requests.delete(self.url + path, timeout=30))


class _Reply:
    def __init__(self, response: requests.Response):
        self.r = response
        self.status_code, self.headers, self.data = response.status_code, response.headers, response.content

    def get_json(self):
        return self.r.json()

    def get_data(self, as_text: bool = False):
        return self.r.text if as_text else self.r.content


@pytest.fixture(scope="module")
def paced(module_service):
    """One real service (1 worker) whose model steps take >= PACE_MS, with a cap of ONE stream.

    Tests that use it read each stream to its end (which frees the slot before the body ends) or
    wait for its commit, so the next test finds the slot free."""
    return module_service(NEXTWORD_BATCH_WAIT_MS=str(PACE_MS), NEXTWORD_MAX_STREAMS="1")


def test_the_sse_reader_parses_as_eventsource_does():
    """The helper itself: fields split across chunks, CRLF/CR/LF line ends, comments, multi-line data."""
    wire = (b": keep-alive\r\n\r\nevent: token\r\ndata: {\"a\":\r\ndata:1}\r\n\r\n"
            b"data: plain\rid: 7\r\revent: empty\n\nevent: done\ndata:{\"\xc3\xa9\": 2}\n\nevent: cut\ndata: x\n")
    for size in (1, 2, 3, 7, len(wire)):  # every way of cutting it into chunks gives the same events
        events = list(SSEReader(wire[i:i + size] for i in range(0, len(wire), size)))
        assert [(e.event, e.data, e.id) for e in events] == [
            ("token", '{"a":\n1}', None), ("message", "plain", "7"), ("done", '{"é": 2}', "7")]
        assert events[-1].json() == {"é": 2}
        assert all(a.arrived <= b.arrived for a, b in zip(events, events[1:]))


# --- drained JSON, determinism, greedy, context, stop words, detokenization ------------------------


def test_without_sse_the_generator_is_drained_into_one_json(client):
    sid = new_session(client)
    response = client.post(f"/sessions/{sid}/generate", json={"text": PROMPT, "max_tokens": 5, "seed": 7})
    assert response.status_code == 200 and response.mimetype == "application/json"
    body = response.get_json()
    details = body["token_details"]
    assert body["finish_reason"] == ("eos" if details[-1]["word"] == "<eos>" else "length")  # no stop words
    assert body["tokens"] == len(details) and 1 <= len(details) <= 5
    assert [d["index"] for d in details] == list(range(len(details)))
    for d in details:
        assert isinstance(d["word"], str) and d["word"] and 0 < d["probability"] <= 1
    kept = [d["word"] for d in details if d["word"] != "<eos>"]
    assert body["text"] == detokenize(kept, "wikitext")
    # the prompt and every generated token are now the session's context
    assert body["session"]["tokens"] == 2 + len(details)
    assert client.get(f"/sessions/{sid}").get_json()["tokens"] == 2 + len(details)


def test_same_seed_and_state_give_the_same_continuation(client):
    seed, _ = long_seed(client, 12)
    a, b, c = new_session(client), new_session(client), new_session(client)
    first = generate(client, a, text=PROMPT, max_tokens=12, seed=seed)
    second = generate(client, b, text=PROMPT, max_tokens=12, seed=seed)
    assert first["token_details"] == second["token_details"] and first["text"] == second["text"]
    # the same state reached another way (fed by /predict, then generated without a prompt)
    client.post("/predict", json={"text": PROMPT, "session_id": c})
    third = generate(client, c, max_tokens=12, seed=seed)
    assert third["token_details"] == first["token_details"]
    # and the seed matters: some other seed gives another continuation
    others = []
    for other in range(seed + 1, seed + 6):
        sid = new_session(client)
        others.append(words_of(generate(client, sid, text=PROMPT, max_tokens=12, seed=other)["token_details"]))
    assert any(words != words_of(first["token_details"]) for words in others)


def test_temperature_near_zero_is_argmax_at_every_step(client):
    gen, mirror = new_session(client), new_session(client)
    greedy = generate(client, gen, text=PROMPT, max_tokens=10, temperature=1e-6, seed=1)
    other_seed = generate(client, new_session(client), text=PROMPT, max_tokens=10, temperature=1e-6, seed=999)
    assert other_seed["token_details"] == greedy["token_details"]  # greedy draws nothing from the seed
    fed = PROMPT
    for detail in greedy["token_details"]:
        response = client.post("/predict", json={"text": fed, "session_id": mirror, "top_k": 3}).get_json()
        best = next(p for p in response["predictions"] if p["word"] != "<unk>")  # <unk> is never generated
        assert detail["word"] == best["word"]
        assert detail["probability"] == pytest.approx(best["probability"], abs=1e-6)
        fed = detail["word"]


def test_generated_tokens_become_the_sessions_context(client):
    seed, _ = long_seed(client, 8)
    sid, reference = new_session(client), new_session(client)
    body = generate(client, sid, text=PROMPT, max_tokens=8, seed=seed)
    words = words_of(body["token_details"])
    # a session fed the prompt and the emitted words explicitly is in the same state
    distribution(client, reference, " ".join([PROMPT, *words]))
    np.testing.assert_allclose(distribution(client, sid, "the"), distribution(client, reference, "the"), atol=1e-6)
    assert (client.get(f"/sessions/{sid}").get_json()["tokens"]
            == client.get(f"/sessions/{reference}").get_json()["tokens"] == 2 + 8 + 1)


def test_a_stop_word_ends_the_generation_and_stays_out_of_the_text(client):
    seed, drained = long_seed(client, 12)
    words = words_of(drained["token_details"])
    at = next(i for i in range(1, len(words)) if words[i] not in words[:i] and words[i] not in ".,")
    sid = new_session(client)
    body = generate(client, sid, text=PROMPT, max_tokens=12, seed=seed, stop=[words[at]])
    assert body["finish_reason"] == "stop"
    assert words_of(body["token_details"]) == words[: at + 1]  # the stop word's event is sent...
    assert body["text"] == detokenize(words[:at], "wikitext")  # ...but it is not part of the text
    assert body["tokens"] == at + 1 and body["session"]["tokens"] == 2 + at + 1  # and it was consumed


def test_generated_text_reads_naturally(client):
    for seed in range(200):  # a continuation with punctuation inside it
        sid = new_session(client)
        body = generate(client, sid, text=PROMPT, max_tokens=16, seed=seed)
        words = [w for w in words_of(body["token_details"]) if w != "<eos>"]
        if "." in words[1:]:
            break
    else:
        pytest.fail("no continuation with a period inside it")
    assert body["text"] == detokenize(words, "wikitext")
    assert not re.search(r"\s[.,;:!?]", body["text"]), body["text"]
    assert "@" not in body["text"] and "  " not in body["text"]


# --- limits and errors before the first event -----------------------------------------------------


@pytest.fixture
def limited_client(make_app):
    return make_app(max_generate_tokens=20).test_client()


@pytest.mark.parametrize("body, field", [
    ({"max_tokens": 21}, "max_tokens"),  # above NEXTWORD_MAX_GENERATE_TOKENS=20: refused, never clamped
    ({"max_tokens": 0}, "max_tokens"),
    ({"max_tokens": 2.5}, "max_tokens"),
    ({"temperature": 0}, "temperature"),
    ({"temperature": -1}, "temperature"),
    ({"temperature": "hot"}, "temperature"),
    ({"top_p": 0}, "top_p"),
    ({"top_p": 1.5}, "top_p"),
    ({"top_k": -1}, "top_k"),
    ({"seed": -1}, "seed"),
    ({"stop": "."}, "stop"),
    ({"text": ""}, "text"),
    ({"tokens": 3}, "tokens"),  # unknown field
])
@pytest.mark.parametrize("accept", ["application/json", SSE])
def test_bad_parameters_are_400_naming_the_field(limited_client, body, field, accept):
    sid = new_session(limited_client)
    response = limited_client.post(f"/sessions/{sid}/generate", json=body, headers={"Accept": accept})
    assert response.status_code == 400 and response.mimetype == "application/json"  # no stream was opened
    error = response.get_json()["error"]
    assert error["code"] == "invalid_input" and error["field"] == field
    assert f"`{field}`" in error["message"]
    if field == "max_tokens" and body[field] == 21:
        assert "20" in error["message"] and "NEXTWORD_MAX_GENERATE_TOKENS" in error["message"]
    assert limited_client.get(f"/sessions/{sid}").get_json()["version"] == 0  # nothing was consumed


def test_max_tokens_at_the_ceiling_is_accepted(limited_client):
    sid = new_session(limited_client)
    response = limited_client.post(f"/sessions/{sid}/generate", json={"max_tokens": 20, "temperature": 0.5})
    assert response.status_code == 200 and 1 <= response.get_json()["tokens"] <= 20


@pytest.mark.parametrize("accept", ["application/json", SSE])
def test_unknown_session_is_a_plain_404_not_a_stream(client, accept):
    sid = new_session(client)
    client.delete(f"/sessions/{sid}")
    response = client.post(f"/sessions/{sid}/generate", json={}, headers={"Accept": accept})
    assert response.status_code == 404 and response.mimetype == "application/json"
    assert response.get_json()["error"]["code"] == "session_not_found"


def _fail_first_commit(app, monkeypatch):
    """The session store fails the next compare-and-set (Redis gone for one call), then works. Every write of a
    session, a generation's commit included, is the engine's one pipelined compare-and-set."""
    store = app.extensions["nextword"].engine.store
    real, calls = store.compare_and_set_many, []

    def flaky(*args, **kwargs):
        calls.append(args)
        if len(calls) == 1:
            raise StateStoreUnavailable("the session store is unavailable; retry shortly")
        return real(*args, **kwargs)

    monkeypatch.setattr(store, "compare_and_set_many", flaky)
    return calls


def test_a_failed_commit_is_an_error_and_writes_nothing_later(app, client, monkeypatch):
    sid = new_session(client)
    calls = _fail_first_commit(app, monkeypatch)
    response = client.post(f"/sessions/{sid}/generate", json={"text": PROMPT, "max_tokens": 4, "seed": 3})
    assert response.status_code == 503
    assert response.get_json()["error"]["code"] == "state_store_unavailable"
    assert len(calls) == 1  # not retried when the generation closed: the client was told it failed
    info = client.get(f"/sessions/{sid}").get_json()
    assert (info["version"], info["tokens"]) == (0, 0)  # neither the prompt nor any token
    assert generate(client, sid, text=PROMPT, max_tokens=4)["session"]["version"] == 1  # slot was freed


def test_a_failed_commit_mid_stream_is_an_error_event(app, client, monkeypatch):
    sid = new_session(client)
    calls = _fail_first_commit(app, monkeypatch)
    response = client.post(f"/sessions/{sid}/generate", json={"text": PROMPT, "max_tokens": 4, "seed": 3},
                           headers={"Accept": SSE}, buffered=False)
    assert response.status_code == 200 and response.mimetype == SSE
    events = list(SSEReader(response.response))
    response.close()
    assert [e.event for e in events[:-1]] == ["token"] * (len(events) - 1) and len(events) >= 2
    assert events[-1].event == "error"
    assert events[-1].json() == {"error": {"code": "state_store_unavailable",
                                           "message": "the session store is unavailable; retry shortly",
                                           "field": None}}
    assert len(calls) == 1
    info = client.get(f"/sessions/{sid}").get_json()
    assert (info["version"], info["tokens"]) == (0, 0)


def test_a_model_failure_mid_stream_is_an_error_event_and_commits_nothing(app, client, monkeypatch):
    seed, _ = long_seed(client, 8)
    sid = new_session(client)
    scheduler = app.extensions["nextword"].engine.model(None)
    real, calls = scheduler.runtime.run, []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 5:
            raise RuntimeError("onnxruntime failed")
        return real(*args, **kwargs)

    monkeypatch.setattr(scheduler.runtime, "run", failing)
    response = client.post(f"/sessions/{sid}/generate", json={"text": PROMPT, "max_tokens": 8, "seed": seed},
                           headers={"Accept": SSE}, buffered=False)
    events = list(SSEReader(response.response))
    response.close()
    # calls: the prompt's prefix, its last token, then one per tick; a token is sent as soon as it is drawn,
    # before the call that feeds it: the third tick's call fails after its token went out
    assert [e.event for e in events] == ["token", "token", "token", "error"]
    assert events[-1].json()["error"]["code"] == "model_unavailable"
    info = client.get(f"/sessions/{sid}").get_json()
    assert (info["version"], info["tokens"]) == (0, 0)  # the tokens sent are not kept: the stream failed


# --- the real server: streaming, disconnects, the stream cap, failures mid-stream ------------------


def test_tokens_reach_the_client_as_they_are_made(paced, client):
    seed, drained = long_seed(client, LONG)
    server = Remote(paced.url)
    sid = new_session(server)
    url = f"{paced.url}/sessions/{sid}/generate"
    sent = time.perf_counter()
    with open_stream(url, {"text": PROMPT, "max_tokens": LONG, "seed": seed}) as response:
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith(SSE)
        assert response.headers["Cache-Control"] == "no-cache"
        events = iter(SSEReader(response))
        first = next(events)
        # The first token is in the client's hands while the generation still runs: nothing is
        # committed yet (a buffered body would arrive only after the commit).
        during = server.get(f"/sessions/{sid}").get_json()
        rest = list(events)
    assert (during["version"], during["tokens"]) == (0, 0)
    tokens, done = [first, *rest[:-1]], rest[-1]
    assert [e.event for e in tokens] == ["token"] * LONG and done.event == "done"
    # the stream is the drained generator, event for event
    assert [e.json() for e in tokens] == drained["token_details"]
    assert {k: v for k, v in done.json().items() if k != "session"} == {
        k: v for k, v in drained.items() if k not in ("session", "token_details")}
    assert done.json()["session"]["tokens"] == 2 + LONG and done.json()["session"]["version"] == 1
    # arrival times: spread over the generation (every model step takes >= PACE_MS), not all at the end
    pace = PACE_MS / 1000
    assert first.arrived - sent < done.arrived - sent - 0.5 * (LONG - 1) * pace, (first.arrived, done.arrived)
    gaps = np.diff([e.arrived for e in tokens])
    assert np.count_nonzero(gaps >= 0.5 * pace) >= LONG // 2, gaps


@pytest.mark.slow
@pytest.mark.parametrize("received", [1, 3, LONG - 2])
def test_a_disconnect_commits_nothing_and_the_same_request_replays(paced, client, received):
    seed, drained = long_seed(client, LONG)
    server = Remote(paced.url)
    sid = new_session(server)
    body = {"text": PROMPT, "max_tokens": LONG, "seed": seed}
    response = open_stream(f"{paced.url}/sessions/{sid}/generate", body)
    try:
        assert response.status_code == 200
        events = iter(SSEReader(response))
        got = [next(events) for _ in range(received)]
    finally:
        response.close()  # the browser tab goes away: the socket is closed mid-stream
    assert [e.json()["word"] for e in got] == words_of(drained["token_details"])[:received]
    time.sleep((LONG + 4) * PACE_MS / 1000)  # past the moment the generation would have ended by itself
    info = server.get(f"/sessions/{sid}").get_json()
    assert (info["version"], info["tokens"]) == (0, 0)  # not a token, not the prompt
    assert "nextword_active_streams 0.0" in requests.get(paced.url + "/metrics", timeout=10).text  # slot freed
    # sent again, the same request gives the same continuation and commits it once
    again = read_events(f"{paced.url}/sessions/{sid}/generate", body)
    assert [e.json() for e in again[:-1]] == drained["token_details"]
    assert again[-1].json()["session"]["version"] == 1 and again[-1].json()["session"]["tokens"] == 2 + LONG


def test_a_stream_beyond_the_per_worker_cap_is_429(paced, client):
    seed, _ = long_seed(client, LONG)
    server = Remote(paced.url)
    a, b = new_session(server), new_session(server)
    with long_stream(paced.url, a, seed) as events:
        assert next(events).event == "token"  # the one slot (NEXTWORD_MAX_STREAMS=1) is taken
        for accept in (SSE, "application/json"):  # a drained generation needs a slot too
            refused = server.post(f"/sessions/{b}/generate", json={"max_tokens": 3}, headers={"Accept": accept})
            assert refused.status_code == 429 and refused.headers["Retry-After"] == "1"
            assert refused.get_json()["error"]["code"] == "overloaded"
        rest = list(events)
    assert rest[-1].event == "done"
    assert server.get(f"/sessions/{b}").get_json()["version"] == 0  # the refused requests changed nothing
    # the body ended after the slot was freed: the next stream is served
    assert read_events(f"{paced.url}/sessions/{b}/generate", {"max_tokens": 3})[-1].event == "done"


def test_a_conflicting_write_mid_stream_ends_it_with_an_error_event(paced, client):
    seed, _ = long_seed(client, LONG)
    server = Remote(paced.url)
    sid, reference = new_session(server), new_session(server)
    with long_stream(paced.url, sid, seed) as events:
        first = next(events)
        other = server.post("/predict", json={"text": "the dog", "session_id": sid})  # another client's step
        assert other.status_code == 200 and other.get_json()["session"]["version"] == 1
        rest = list(events)
    stream = [first, *rest]
    assert [e.event for e in stream[:-1]] == ["token"] * LONG
    error = stream[-1]
    assert error.event == "error"
    assert error.json()["error"]["code"] == "session_conflict" and error.json()["error"]["field"] == "session_id"
    # the session holds exactly the other request's write: not the prompt, not a token, not a mix
    info = server.get(f"/sessions/{sid}").get_json()
    assert (info["version"], info["tokens"]) == (1, 2)
    distribution(server, reference, "the dog")
    np.testing.assert_allclose(distribution(server, sid, "a"), distribution(server, reference, "a"), atol=1e-6)


def test_redis_failing_mid_stream_ends_it_with_an_error_event(service_factory, restartable_redis, client):
    seed, _ = long_seed(client, LONG)
    proc = service_factory(redis=restartable_redis.url, NEXTWORD_BATCH_WAIT_MS=str(PACE_MS))
    server = Remote(proc.url)
    sid = new_session(server)
    with long_stream(proc.url, sid, seed) as events:
        first = next(events)
        restartable_redis.stop()
        rest = list(events)
    stream = [first, *rest]
    assert [e.event for e in stream[:-1]] == ["token"] * LONG
    assert stream[-1].event == "error"
    assert stream[-1].json()["error"]["code"] == "state_store_unavailable"
    restartable_redis.start()  # an empty Redis on the same port: the service reconnects by itself
    wait_for(lambda: server.get("/readyz").status_code == 200)
    again = new_session(server)
    assert generate(server, again, text=PROMPT, max_tokens=2)["session"]["version"] == 1
