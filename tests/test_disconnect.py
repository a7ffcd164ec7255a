"""service/http/disconnect.py: telling a gone client from a waiting one on real sockets, and the real service
skipping the work of a batch or a drained generation whose client reset its connection (SO_LINGER 0)."""

from __future__ import annotations

import json
import re
import socket
import struct
import time
from urllib.parse import urlsplit

import pytest
import requests

from service.http.disconnect import Disconnect
from tests.servers import wait_for


@pytest.fixture
def tcp_pair():
    """(the server's side, the client's side) of a real loopback TCP connection."""
    with socket.create_server(("127.0.0.1", 0)) as listener:
        client = socket.create_connection(listener.getsockname())
        server, _ = listener.accept()
    yield server, client
    server.close()
    client.close()


def _reset(sock: socket.socket) -> None:
    """Close with SO_LINGER 0: the peer gets a RST, not a FIN."""
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def test_a_waiting_client_is_there_and_a_pipelined_request_does_not_make_it_gone(tcp_pair):
    server, client = tcp_pair
    watch = Disconnect(server)
    assert not watch.cancelled
    client.sendall(b"GET /next HTTP/1.1\r\n")  # the next request of a kept-alive connection
    time.sleep(0.01)
    assert not watch.cancelled
    assert server.recv(100).startswith(b"GET /next")  # the peek consumed nothing
    watch.close()
    assert watch.cancelled  # the request has ended: nobody waits for its work


@pytest.mark.parametrize("leave", [_reset, socket.socket.close], ids=["reset", "close"])
def test_a_client_that_resets_or_closes_is_gone(tcp_pair, leave):
    server, client = tcp_pair
    watch = Disconnect(server)
    leave(client)
    wait_for(lambda: watch.cancelled, timeout=2, what="the client to be seen gone")
    watch.close()
    server.getsockname()  # the request's own socket is still open: only the duplicate was closed


# -- the real service ------------------------------------------------------------------------------------------------

def _send_and_reset(url: str, path: str, body: dict, after_s: float) -> None:
    """POST body over a raw socket, then reset the connection after `after_s` seconds without reading anything."""
    parts = urlsplit(url)
    payload = json.dumps(body).encode()
    head = (f"POST {path} HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(payload)}\r\n\r\n").encode()
    sock = socket.create_connection((parts.hostname, parts.port))
    sock.sendall(head + payload)
    time.sleep(after_s)
    _reset(sock)


def _metric(url: str, name: str) -> float:
    text = requests.get(f"{url}/metrics", timeout=10).text
    return sum(float(v) for v in re.findall(rf"^{name}(?:{{[^}}]*}})? ([0-9.e+]+)$", text, re.M))


def _settled(url: str, name: str) -> float:
    """The metric once it has stopped moving for a second."""
    last = _metric(url, name)
    while True:
        time.sleep(1.0)
        now = _metric(url, name)
        if now == last:
            return now
        last = now


@pytest.fixture
def paced(service_factory):
    """One worker whose every model call waits 50 ms for batch peers, so work takes long enough to walk away from."""
    return service_factory(NEXTWORD_BATCH_WAIT_MS="50")


def test_a_reset_batch_skips_its_remaining_steps_and_writes_nothing(paced):
    url = paced.url
    sessions = [requests.post(f"{url}/sessions", timeout=10).json()["session_id"] for _ in range(6)]
    body = lambda sids: {"items": [{"text": "the cat", "session_id": s} for _ in range(8) for s in sids]}  # noqa
    calls = "nextword_model_batch_size_count"
    start = _settled(url, calls)
    _send_and_reset(url, "/predict/batch", body(sessions), after_s=0.3)
    abandoned = _settled(url, calls) - start
    for sid in sessions:  # all or nothing: the batch was gone before its write
        assert requests.get(f"{url}/sessions/{sid}", timeout=10).json()["version"] == 0
    fresh = [requests.post(f"{url}/sessions", timeout=10).json()["session_id"] for _ in range(6)]
    start = _settled(url, calls)
    answered = requests.post(f"{url}/predict/batch", json=body(fresh), timeout=60)
    completed = _settled(url, calls) - start
    assert answered.status_code == 200
    assert requests.get(f"{url}/sessions/{fresh[0]}", timeout=10).json()["version"] == 8
    assert completed >= 16  # eight waves of a prefix call and a last-token call
    assert abandoned < completed / 2, (abandoned, completed)
    assert '"status": 499' in paced.log() and '"path": "/predict/batch"' in paced.log()


def _generate(sid: str, seed: int) -> tuple[str, dict]:
    return f"/sessions/{sid}/generate", {"text": "the cat", "max_tokens": 40, "seed": seed, "temperature": 100}


def _complete(sid: str, seed: int) -> tuple[str, dict]:
    return "/v1/completions", {"prompt": "the cat", "max_tokens": 40, "seed": seed, "temperature": 2,
                               "session_id": sid}


def _long_seed(url: str, request_) -> int:
    """A seed whose generation runs to max_tokens (the tiny model often samples <eos> early)."""
    for seed in range(500):
        sid = requests.post(f"{url}/sessions", timeout=10).json()["session_id"]
        path, body = request_(sid, seed)
        answer = requests.post(url + path, json=body, timeout=30).json()
        if (answer.get("finish_reason") or answer["choices"][0]["finish_reason"]) == "length":
            return seed
    pytest.fail("no seed of 500 generated 40 tokens")


@pytest.mark.parametrize("request_", [_generate, _complete], ids=["generate", "completions"])
def test_a_reset_drained_generation_stops_and_commits_nothing(service_factory, paced, request_):
    seed = _long_seed(service_factory().url, request_)  # found on an unpaced server: the same model, the same words
    url = paced.url
    sid = requests.post(f"{url}/sessions", timeout=10).json()["session_id"]
    generated = "nextword_tokens_generated_total"
    start = _settled(url, generated)
    _send_and_reset(url, *request_(sid, seed), after_s=0.5)  # 40 tokens at >= 50 ms: over 2 s
    wait_for(lambda: _metric(url, "nextword_active_streams") == 0, timeout=2, what="the generation to stop")
    assert _settled(url, generated) - start < 30
    assert requests.get(f"{url}/sessions/{sid}", timeout=10).json()["version"] == 0
    assert '"status": 499' in paced.log()
