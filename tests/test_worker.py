"""The HTTP worker (service/process/worker.py) under slow, malformed and oversized requests, on the real service.

Raw sockets on 127.0.0.1 only; every connection and loop is bounded in time and count.
"""

from __future__ import annotations

import json
import selectors
import signal
import socket
import threading
import time

import pytest
import requests


def _connect(service) -> socket.socket:
    sock = socket.create_connection(("127.0.0.1", service.port), timeout=10)
    _UNREAD.pop(sock.fileno(), None)  # left by an earlier socket with the same descriptor
    return sock


_UNREAD: dict[int, bytes] = {}  # bytes read past the end of a response, by socket fd (pipelined answers)


def _response(sock: socket.socket, timeout: float = 10) -> tuple[int, dict, bytes]:
    """Read one HTTP response with a Content-Length body: (status, headers, body). Skips 1xx responses; bytes of
    a following response stay for the next call on the same socket."""
    sock.settimeout(timeout)
    data = _UNREAD.pop(sock.fileno(), b"")
    while True:
        while b"\r\n\r\n" not in data:
            chunk = sock.recv(65536)
            if not chunk:
                raise ConnectionError(f"closed before a full response head: {data[:200]!r}")
            data += chunk
        head, _, data = data.partition(b"\r\n\r\n")
        lines = head.decode("latin-1").split("\r\n")
        status = int(lines[0].split()[1])
        headers = {k.strip().lower(): v.strip() for k, v in (line.split(":", 1) for line in lines[1:])}
        if status >= 200:
            break
    length = int(headers.get("content-length", 0))
    while len(data) < length:
        chunk = sock.recv(65536)
        if not chunk:
            break
        data += chunk
    if data[length:]:
        _UNREAD[sock.fileno()] = data[length:]
    return status, headers, data[:length]


def _exchange(service, raw: bytes, timeout: float = 10) -> tuple[int, dict, bytes]:
    with _connect(service) as sock:
        sock.sendall(raw)
        return _response(sock, timeout)


def _error(body: bytes) -> dict:
    payload = json.loads(body)
    assert set(payload) == {"error"} and set(payload["error"]) == {"code", "message", "field"}
    return payload["error"]


def _post(path: str, body: bytes, extra: str = "") -> bytes:
    return (f"POST {path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {len(body)}\r\n"
            f"{extra}\r\n").encode() + body


@pytest.fixture
def service(service_factory):
    return service_factory(workers=1, NEXTWORD_MAX_STREAMS="2",
                           NEXTWORD_REQUEST_READ_TIMEOUT_S="1", NEXTWORD_MAX_BODY_BYTES="4096")


@pytest.mark.parametrize("raw, status, code", [
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\nBad\x01Name: 1\r\n\r\n", 400, "malformed_request"),
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX: a\x00b\r\n\r\n", 400, "malformed_request"),
    (b"NOT A REQUEST\r\n\r\n", 400, "malformed_request"),
    (b"GET /" + b"a" * 5000 + b" HTTP/1.1\r\nHost: x\r\n\r\n", 414, "uri_too_long"),
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\n" + b"".join(b"X-%d: 1\r\n" % i for i in range(150)) + b"\r\n",
     431, "headers_too_large"),
    (b"GET /healthz HTTP/1.1\r\nHost: x\r\nX: " + b"a" * 9000 + b"\r\n\r\n", 431, "headers_too_large"),
    (b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: br, chunked\r\n\r\n", 501,
     "transfer_coding_not_implemented"),
    (b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n0\r\n\r\n", 501,
     "transfer_coding_not_implemented"),  # RFC 9112 6.1: a coding it does not understand is 501, never ignored
    (_post("/predict", b"\x1f\x8b\x08\x00", "Content-Encoding: gzip\r\n"), 415, "unsupported_media_type"),
    (b"POST /predict HTTP/1.1\r\nHost: x\r\nExpect: teapot\r\nContent-Length: 2\r\n\r\n{}", 417,
     "expectation_failed"),
    (b"POST /predict HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n{}\r\n0\r\n\r\n", 400,
     "malformed_request"),
    (_post("/predict", b"", "").replace(b"Content-Length: 0", b"Content-Length: 999999"), 413, "payload_too_large"),
])
def test_protocol_rejections_are_json(service, raw, status, code):
    got, headers, body = _exchange(service, raw)
    assert got == status
    assert headers["content-type"] == "application/json" and headers["connection"] == "close"
    assert len(headers["x-request-id"]) == 32
    assert _error(body)["code"] == code
    assert requests.get(service.url + "/healthz", timeout=5).status_code == 200
    assert '"level": "error"' not in service.log()  # a client's mistake is no traceback in the log


def test_a_slow_head_and_a_slow_body_get_408(service):
    for first, rest in ((b"POST /predict HTTP/1.1\r\nHost: x\r\n", b"X: y\r\n"),
                        (_post("/predict", b"{" + b" " * 99)[:-99], b" ")):
        with _connect(service) as sock:
            started = time.monotonic()
            sock.sendall(first)
            answer = b""
            while time.monotonic() - started < 8 and not answer:  # a byte every 0.3 s: never complete in 1 s
                sock.sendall(rest)
                sock.settimeout(0.3)
                try:
                    answer = sock.recv(65536)
                except socket.timeout:
                    pass
            assert answer.startswith(b"HTTP/1.1 408 "), answer[:100]
            elapsed = time.monotonic() - started
            assert 0.9 <= elapsed < 8
            assert b'"request_timeout"' in answer


def test_an_idle_connection_is_closed_without_an_answer(service):
    with _connect(service) as sock:
        sock.settimeout(10)
        assert sock.recv(100) == b""  # no request began, so no 408 is owed


def test_chunked_bodies_are_read_and_limited(service):
    body = json.dumps({"text": "the cat"}).encode()
    chunks = b"".join(b"%x\r\n%s\r\n" % (len(part), part) for part in (body[:5], body[5:])) + b"0\r\n\r\n"
    head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    status, _, answer = _exchange(service, head + chunks)
    assert status == 200 and json.loads(answer)["predictions"]

    big = b"".join(b"400\r\n" + b" " * 1024 + b"\r\n" for _ in range(5))  # 5 KiB > the 4 KiB limit, never ended
    status, _, answer = _exchange(service, head + big)
    assert status == 413 and _error(answer)["code"] == "payload_too_large"


def test_a_chunk_declared_past_the_limit_is_413_at_once(service):
    head = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
    with _connect(service) as sock:
        started = time.monotonic()
        sock.sendall(head + b"2000\r\n" + b" " * 100)  # 8 KiB announced against the 4 KiB limit; the rest never comes
        status, _, answer = _response(sock, timeout=5)
        assert status == 413 and _error(answer)["code"] == "payload_too_large"
        assert time.monotonic() - started < 0.9  # before the 1 s read deadline, not at it


def test_expect_100_continue(service):
    body = json.dumps({"text": "the cat"}).encode()
    with _connect(service) as sock:
        sock.sendall(_post("/predict", b"", "Expect: 100-continue\r\n").replace(b"Content-Length: 0",
                                                                                 b"Content-Length: %d" % len(body)))
        sock.settimeout(5)
        assert sock.recv(100) == b"HTTP/1.1 100 Continue\r\n\r\n"
        sock.sendall(body)
        status, _, answer = _response(sock)
        assert status == 200 and json.loads(answer)["predictions"]
        sock.settimeout(0.5)
        with pytest.raises((socket.timeout, ConnectionError)):  # nothing more: no second 100 Continue
            extra = sock.recv(100)
            if not extra:
                raise ConnectionError


def test_keepalive_and_pipelined_requests(service):
    body = json.dumps({"text": "the cat"}).encode()
    with _connect(service) as sock:
        sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
        assert _response(sock)[0] == 200
        sock.sendall(_post("/predict", body) + b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"
                     + _post("/predict", body)[:20])  # a third request, half sent
        first, second = _response(sock), _response(sock)
        assert first[0] == 200 and json.loads(first[2])["predictions"]
        assert second[0] == 200 and json.loads(second[2]) == {"status": "alive"}
        sock.sendall(_post("/predict", body)[20:])
        third = _response(sock)
        assert third[0] == 200 and json.loads(third[2]) == json.loads(first[2])


SLOW = 2048  # slow sockets: more than the 1 000 connections gunicorn lets a worker hold by default


class _SlowClients:
    """`count` sockets that each send a request head (or a body) one byte every `interval` s, reconnecting
    whenever the server closes one; all driven by one thread with a selector."""

    def __init__(self, port: int, count: int, interval: float = 0.5):
        self.port, self.count, self.interval = port, count, interval
        self.answers: dict[int, int] = {}  # status -> how many the server sent
        self.connects = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _open(self, sel, i: int) -> None:
        sock = socket.create_connection(("127.0.0.1", self.port), timeout=5)
        sock.setblocking(False)
        if i % 2:  # slow body: a complete head announcing 1000 bytes, then the body a byte at a time
            first = b"POST /predict HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n"
            drip = b" "
        else:  # slow head: never-ending header lines
            first, drip = b"POST /predict HTTP/1.1\r\nHost: x\r\n", b"X"
        sock.send(first)
        self.connects += 1
        sel.register(sock, selectors.EVENT_READ, (i, drip))

    def _run(self) -> None:
        sel = selectors.DefaultSelector()
        for i in range(self.count):
            self._open(sel, i)
        next_drip = time.monotonic()
        while not self._stop.is_set():
            for key, _ in sel.select(timeout=0.05):
                i, _drip = key.data
                try:
                    data = key.fileobj.recv(65536)
                except OSError:
                    data = b""
                if data.startswith(b"HTTP/1.1 "):
                    status = int(data.split()[1])
                    self.answers[status] = self.answers.get(status, 0) + 1
                sel.unregister(key.fileobj)
                key.fileobj.close()
                self._open(sel, i)
            if time.monotonic() >= next_drip:
                next_drip += self.interval
                for key in list(sel.get_map().values()):
                    try:
                        key.fileobj.send(key.data[1])
                    except OSError:
                        pass
        for key in list(sel.get_map().values()):
            key.fileobj.close()
        sel.close()

    def __enter__(self) -> "_SlowClients":
        self._thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self._stop.set()
        self._thread.join(10)


def test_slow_clients_cannot_starve_the_service(service_factory):
    """2 048 slow sockets (half dripping a head, half a body) for 20 s against one worker, each reconnecting when it
    is cut off at its read deadline: another client's /healthz and session /predict keep answering. The bound is
    generous (1 s); this checks that nothing starves, it measures no speed."""
    service = service_factory(workers=1, NEXTWORD_REQUEST_READ_TIMEOUT_S="5")
    http = requests.Session()
    sid = http.post(service.url + "/sessions", timeout=5).json()["session_id"]
    worst, probes = 0.0, 0
    with _SlowClients(service.port, SLOW) as slow:
        time.sleep(2)  # every slow socket is connected and has started its request
        end = time.monotonic() + 20
        while time.monotonic() < end:
            for method, path, body in (("GET", "/healthz", None),
                                       ("POST", "/predict", {"text": "the", "session_id": sid})):
                started = time.monotonic()
                r = http.request(method, service.url + path, json=body, timeout=5)
                worst = max(worst, time.monotonic() - started)
                probes += 1
                assert r.status_code == 200, r.text
            time.sleep(0.2)
    assert probes > 50
    assert worst < 1.0, f"slowest probe took {worst:.2f} s"
    assert slow.answers.get(408, 0) >= SLOW  # every slow socket was cut off at its deadline, with a 408
    assert set(slow.answers) == {408}
    assert http.get(f"{service.url}/sessions/{sid}", timeout=5).json()["tokens"] == probes // 2


def _session(service) -> str:
    return requests.post(service.url + "/sessions", timeout=10).json()["session_id"]


def _sse_request(sid: str, body: dict) -> bytes:
    payload = json.dumps(body).encode()
    return _post(f"/sessions/{sid}/generate", payload, "Accept: text/event-stream\r\n")


def test_a_connection_after_sigterm_is_refused_or_answered_at_once(service_factory):
    service = service_factory(workers=1, NEXTWORD_BATCH_WAIT_MS="50", NEXTWORD_GRACEFUL_TIMEOUT="20",
                              NEXTWORD_MAX_GENERATE_TOKENS="400")
    with _connect(service) as streaming:  # a stream of ~400 x 50 ms keeps the worker in its graceful shutdown
        streaming.sendall(_sse_request(_session(service), {"text": "the cat", "max_tokens": 400, "seed": 3}))
        streaming.settimeout(10)
        assert streaming.recv(65536).startswith(b"HTTP/1.1 200 ")
        service.proc.send_signal(signal.SIGTERM)
        time.sleep(0.5)
        started = time.monotonic()
        try:
            with socket.create_connection(("127.0.0.1", service.port), timeout=5) as late:
                late.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
                status = _response(late, timeout=5)[0]
        except ConnectionRefusedError:
            status = None
        assert time.monotonic() - started < 1.0
        assert status in (None, 200)
        received = b""
        while chunk := streaming.recv(65536):  # the stream in flight still ends as it should
            received += chunk
    assert b"event: done" in received or b'"finish_reason"' in received
    assert service.proc.wait(30) == 0


def test_a_thousand_idle_keepalive_connections_cost_nobody_anything(service):
    idle = []
    try:
        for _ in range(1000):
            sock = _connect(service)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            idle.append(sock)
        assert all(_response(sock)[0] == 200 for sock in idle)  # each answered and kept alive
        http = requests.Session()
        for _ in range(10):
            started = time.monotonic()
            assert http.post(service.url + "/predict", json={"text": "the cat"}, timeout=5).status_code == 200
            assert time.monotonic() - started < 1.0
        for sock in idle[:50]:  # still open and served, within gunicorn's keep-alive (5 s)
            sock.sendall(b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n")
            assert _response(sock)[0] == 200
        time.sleep(6)
        for sock in idle:  # past the keep-alive, the server closed them
            sock.settimeout(5)
            assert sock.recv(100) == b""
    finally:
        for sock in idle:
            sock.close()


def test_a_client_that_stops_reading_is_cut_off_and_others_keep_their_pace(service_factory):
    """A client pipelines requests for big answers and reads none: once the socket buffers are full the server's send
    blocks, and after NEXTWORD_SEND_TIMEOUT_S it gives the connection up (a stream's reader is cut off the same way;
    the scheduler's side, a stream that waits for its reader, is in test_scheduler). A stream on the same worker keeps
    its pace meanwhile."""
    service = service_factory(workers=1, NEXTWORD_SEND_TIMEOUT_S="1", NEXTWORD_BATCH_WAIT_MS="20")
    stalled = socket.socket()
    stalled.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # a small window, so the server's sends block
    stalled.connect(("127.0.0.1", service.port))
    try:
        request = b"GET /openapi.json HTTP/1.1\r\nHost: x\r\n\r\n"
        stalled.sendall(request * 400)  # ~40 MB of answers, none read
        with _connect(service) as other:
            other.sendall(_sse_request(_session(service), {"text": "the cat", "max_tokens": 16, "seed": 2}))
            other.settimeout(10)
            received, gaps, last = b"", [], time.monotonic()
            while b"event: done" not in received and b"event: error" not in received:
                chunk = other.recv(65536)
                assert chunk, received[-300:]
                now = time.monotonic()
                gaps.append(now - last)
                received, last = received + chunk, now
        assert max(gaps) < 0.5, gaps
        time.sleep(3)  # the stalled send is past NEXTWORD_SEND_TIMEOUT_S: the server has given the connection up
        stalled.settimeout(10)
        answers, closed = 0, False
        try:
            while chunk := stalled.recv(1 << 20):  # what was in flight, then the server's close
                answers += chunk.count(b"HTTP/1.1 200 ")
            closed = True
        except ConnectionResetError:  # closed with our unread requests still in its buffer: the kernel resets
            closed = True
        assert closed and 0 < answers < 400
    finally:
        stalled.close()
    assert requests.get(service.url + "/healthz", timeout=5).status_code == 200
