"""Any replica serves any step: two real service instances (separate gunicorn processes) on one Redis.

One session's steps alternate between the two and give exactly what one instance gives; stopping
one instance with SIGTERM under load loses nothing: its in-flight requests (a stream included)
finish, later ones fail to connect, and the other instance continues every session.
"""

from __future__ import annotations

import signal
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest
import requests

from tests.sse import SSEReader, open_stream, read_events

BINARY = "application/octet-stream"


def start_pair(service_factory, a_env: dict | None = None, b_env: dict | None = None):
    """Two instances started side by side (each takes a second or two to load)."""
    with ThreadPoolExecutor(2) as pool:
        a = pool.submit(service_factory, **(a_env or {}))
        b = pool.submit(service_factory, **(b_env or {}))
        return a.result(), b.result()


def new_session(url: str) -> str:
    response = requests.post(url + "/sessions", timeout=30)
    assert response.status_code == 201, response.text
    return response.json()["session_id"]


def feed(url: str, sid: str, text: str) -> dict:
    response = requests.post(url + "/predict", json={"text": text, "session_id": sid, "top_k": 8}, timeout=30)
    assert response.status_code == 200, response.text
    body = response.json()
    return {"predictions": body["predictions"], "tokens": body["session"]["tokens"]}


def drained(url: str, sid: str, **body) -> dict:
    response = requests.post(f"{url}/sessions/{sid}/generate", json=body, timeout=30)
    assert response.status_code == 200, response.text
    out = response.json()
    return {"tokens": [(d["word"], d["probability"]) for d in out["token_details"]], "text": out["text"],
            "finish_reason": out["finish_reason"], "session_tokens": out["session"]["tokens"]}


def streamed(url: str, sid: str, **body) -> dict:
    events = read_events(f"{url}/sessions/{sid}/generate", body)
    done = events[-1]
    assert done.event == "done", [e.event for e in events]
    tokens = [(e.json()["word"], e.json()["probability"]) for e in events[:-1]]
    return {"tokens": tokens, "text": done.json()["text"], "finish_reason": done.json()["finish_reason"],
            "session_tokens": done.json()["session"]["tokens"]}


def full_distribution(url: str, sid: str, text: str) -> np.ndarray:
    response = requests.post(url + "/predict", json={"text": text, "session_id": sid},
                             headers={"Accept": BINARY}, timeout=30)
    assert response.status_code == 200, response.text
    return np.frombuffer(response.content, dtype="<f4")


# One session's life: feeds (a keyboard) and generations (seeded, streamed or drained, with and
# without a prompt), each step a function of (instance url, session id).
STEPS = [
    lambda url, sid: feed(url, sid, "the cat"),
    lambda url, sid: drained(url, sid, max_tokens=6, seed=11),
    lambda url, sid: feed(url, sid, "again"),
    lambda url, sid: streamed(url, sid, text="a dog", max_tokens=6, seed=12),
    lambda url, sid: feed(url, sid, "the"),
    lambda url, sid: drained(url, sid, max_tokens=6, temperature=0.7, top_k=5, top_p=0.9, seed=13),
    lambda url, sid: streamed(url, sid, max_tokens=4, temperature=1e-6),
    lambda url, sid: feed(url, sid, "my friend"),
]


def _assert_same(got, want, where):
    if "predictions" in want:
        assert [p["word"] for p in got["predictions"]] == [p["word"] for p in want["predictions"]], where
        np.testing.assert_allclose([p["probability"] for p in got["predictions"]],
                                   [p["probability"] for p in want["predictions"]], atol=1e-6, err_msg=where)
        assert got["tokens"] == want["tokens"], where
    else:
        assert [w for w, _ in got["tokens"]] == [w for w, _ in want["tokens"]], where
        np.testing.assert_allclose([p for _, p in got["tokens"]], [p for _, p in want["tokens"]], atol=1e-6,
                                   err_msg=where)
        assert (got["text"], got["finish_reason"], got["session_tokens"]) == (
            want["text"], want["finish_reason"], want["session_tokens"]), where


def test_alternating_replicas_give_what_one_instance_gives(service_factory):
    a, b = start_pair(service_factory)
    alternating, single = new_session(a.url), new_session(a.url)
    for i, step in enumerate(STEPS):
        got = step((a, b)[i % 2].url, alternating)  # A, B, A, B, ...
        want = step(a.url, single)
        _assert_same(got, want, f"step {i}")
    np.testing.assert_allclose(full_distribution(b.url, alternating, "."), full_distribution(a.url, single, "."),
                               atol=1e-6)
    info = [requests.get(f"{x.url}/sessions/{alternating}", timeout=10).json() for x in (a, b)]
    assert info[0]["tokens"] == info[1]["tokens"] == requests.get(f"{a.url}/sessions/{single}").json()["tokens"]
    assert info[0]["version"] == len(STEPS) + 1


def _long_seed(url: str, n: int) -> int:
    """A seed whose continuation of "the cat" runs n tokens without <eos> (the tiny model ends most
    lines within a few words)."""
    for seed in range(3000):
        sid = new_session(url)
        if drained(url, sid, text="the cat", max_tokens=n, seed=seed)["finish_reason"] == "length":
            requests.delete(f"{url}/sessions/{sid}", timeout=10)
            return seed
        requests.delete(f"{url}/sessions/{sid}", timeout=10)
    pytest.fail("no long seed")


def test_sigterm_under_load_loses_no_session(service_factory):
    # A's model steps wait 100 ms for batch peers (NEXTWORD_BATCH_WAIT_MS, a product setting), so at any
    # moment several requests are inside it; B answers at full speed.
    a, b = start_pair(service_factory, {"NEXTWORD_BATCH_WAIT_MS": "100"}, {})
    seed = _long_seed(b.url, 8)
    threads_n, max_requests = 6, 15
    sessions = [new_session(b.url) for _ in range(threads_n)]
    records: list[list[tuple]] = [[] for _ in range(threads_n)]  # (target, started, ended, status or error)
    stop = threading.Event()

    def load(i: int) -> None:
        http = requests.Session()  # keep-alive, like a real client
        target = a.url
        try:
            while not stop.is_set() and len(records[i]) < max_requests:
                started = time.perf_counter()
                try:
                    response = http.post(target + "/predict", json={"text": "the cat", "session_id": sessions[i]},
                                         timeout=20)
                    outcome = response.status_code
                except requests.ConnectionError as e:
                    outcome = type(e).__name__
                records[i].append((target, started, time.perf_counter(), outcome))
                if outcome != 200 and target == a.url:
                    target = b.url  # A is gone: carry on with the other instance
        finally:
            http.close()

    workers = [threading.Thread(target=load, args=(i,), daemon=True) for i in range(threads_n)]
    for w in workers:
        w.start()
    stream_sid = new_session(b.url)
    response = open_stream(f"{a.url}/sessions/{stream_sid}/generate", {"text": "the cat", "max_tokens": 8,
                                                                      "seed": seed})
    with response:
        events = iter(SSEReader(response))
        first = next(events)  # a stream is in flight on A...
        time.sleep(0.3)  # ...and so are feeds
        term = time.perf_counter()
        a.proc.send_signal(signal.SIGTERM)
        rest = list(events)
    rc = a.proc.wait(timeout=30)
    exited = time.perf_counter()
    time.sleep(0.3)  # let the load continue on B for a moment
    stop.set()
    for w in workers:
        w.join(timeout=30)
        assert not w.is_alive()

    # A shut down gracefully: exit 0 within the grace period, the stream finished, nothing was killed
    assert rc == 0, a.log()[-3000:]
    assert exited - term < 10
    stream = [first, *rest]
    assert [e.event for e in stream] == ["token"] * 8 + ["done"]
    assert stream[-1].json()["session"]["tokens"] == 2 + 8
    log = a.log()
    assert "SIGKILL" not in log and "WORKER TIMEOUT" not in log and '"level": "error"' not in log, log[-3000:]

    flat = [r for rs in records for r in rs]
    failed = [r for r in flat if r[3] != 200]
    assert all(isinstance(r[3], int) or r[0] == a.url for r in flat)  # only A's requests may fail, only by
    assert not [r for r in flat if isinstance(r[3], int) and r[3] != 200], failed  # not connecting: no 5xx
    assert all(r[1] > term for r in failed), (term, failed)  # every request A took before SIGTERM completed
    finished_in_grace = [r for r in flat if r[0] == a.url and r[1] < term < r[2] and r[3] == 200]
    assert finished_in_grace, "no request was in flight on A when it got SIGTERM"
    assert any(r[0] == b.url and r[3] == 200 for r in flat)

    # B continues every session, each holding exactly the feeds that succeeded: none lost, none half-written
    for sid, rs in zip(sessions, records):
        ok = sum(1 for r in rs if r[3] == 200)
        assert requests.get(f"{b.url}/sessions/{sid}", timeout=10).json()["tokens"] == 2 * ok
        reference = new_session(b.url)
        if ok:
            full_distribution(b.url, reference, " ".join(["the cat"] * ok))
        np.testing.assert_allclose(full_distribution(b.url, sid, "the cat"),
                                   full_distribution(b.url, reference, "the cat"), atol=1e-6)
        assert requests.get(f"{b.url}/sessions/{sid}", timeout=10).json()["tokens"] == 2 * (ok + 1)
    assert requests.get(f"{b.url}/sessions/{stream_sid}", timeout=10).json()["tokens"] == 2 + 8
