"""Runs deploy/nginx/nginx.conf, the reverse proxy of docker-compose.yml, in front of the real
service on loopback and checks what deploy/README.md promises of it: requests pass, over-large
bodies (plain or chunked) are refused by nginx with the service's JSON error format, a request
head that never completes is cut off by nginx without reaching the service, and a generation
streams through. Needs the `nginx` binary (Debian package `nginx-light`; .ci/run installs it).

    .venv/bin/python -m pytest tests/test_proxy.py -q
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import time
from pathlib import Path

import pytest
import requests

from service.config import Settings
from tests.servers import free_port, wait_for
from tests.sse import SSEReader

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "deploy" / "nginx" / "nginx.conf"
SLOW_CLIENTS = 16
HEADER_TIMEOUT_S = 5  # client_header_timeout in nginx.conf (checked below)


@pytest.fixture(scope="module")
def service(module_service):
    return module_service()


@pytest.fixture(scope="module")
def proxy(service, tmp_path_factory):
    nginx = shutil.which("nginx")
    if nginx is None:
        pytest.skip("nginx not on PATH (Debian package `nginx-light`): the reverse proxy is not run")
    workdir = tmp_path_factory.mktemp("nginx")
    port = free_port()
    text = CONF.read_text(encoding="utf-8")
    assert f"client_header_timeout {HEADER_TIMEOUT_S}s;" in text
    # The shipped file, pointed at this test's service and port (a fixed address: Debian's nginx 1.22
    # predates `resolve`), its writable paths in workdir.
    for old, new in (("server nextword:8000 resolve;", f"server 127.0.0.1:{service.port};"),
                     ("listen 8080;", f"listen 127.0.0.1:{port};"), ("/tmp/", f"{workdir}/")):
        assert old in text, old
        text = text.replace(old, new)
    if os.geteuid() == 0:  # workers would otherwise run as nobody, who cannot enter pytest's 0700 folders
        text = "user root;\n" + text
    conf = workdir / "nginx.conf"
    conf.write_text(text, encoding="utf-8")
    log = (workdir / "nginx.log").open("wb")
    proc = subprocess.Popen([nginx, "-c", str(conf), "-e", str(workdir / "error.log"), "-g", "daemon off;"],
                            stdout=log, stderr=subprocess.STDOUT)

    def listening():
        try:
            return requests.get(f"http://127.0.0.1:{port}/healthz", timeout=2).status_code == 200
        except requests.ConnectionError:
            return False

    try:
        wait_for(listening, timeout=20, what="nginx")
        yield f"http://127.0.0.1:{port}"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
        log.close()


def test_requests_pass_through(proxy, service):
    body = {"text": "the cat sat on the", "top_k": 3}
    via_proxy = requests.post(proxy + "/predict", json=body, timeout=10)
    direct = requests.post(service.url + "/predict", json=body, timeout=10)
    assert via_proxy.status_code == 200
    assert via_proxy.json() == direct.json()
    assert via_proxy.headers["X-Request-ID"], "the service's headers come through"


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_large_bodies_are_refused_by_the_proxy_as_json(proxy, chunked):
    payload = b'{"text": "' + b"a " * Settings().max_body_bytes + b'"}'
    data = iter([payload[i:i + 8192] for i in range(0, len(payload), 8192)]) if chunked else payload
    response = requests.post(proxy + "/predict", data=data, headers={"Content-Type": "application/json"}, timeout=10)
    assert response.status_code == 413
    assert response.headers["Content-Type"].startswith("application/json")
    assert response.json()["error"]["code"] == "payload_too_large"


def test_a_body_within_the_limit_passes(proxy):
    text = " ".join(["the"] * 200)
    response = requests.post(proxy + "/predict", json={"text": text, "top_k": 1}, timeout=10)
    assert response.status_code == 200 and len(response.json()["tokens"]) == 200


def test_unreachable_service_is_a_json_503(proxy, tmp_path):
    """The proxy's own error format for a dead upstream: a second nginx pointed at a closed port."""
    nginx = shutil.which("nginx")
    port, dead = free_port(), free_port()
    text = CONF.read_text(encoding="utf-8")
    for old, new in (("server nextword:8000 resolve;", f"server 127.0.0.1:{dead};"),
                     ("listen 8080;", f"listen 127.0.0.1:{port};"), ("/tmp/", f"{tmp_path}/")):
        text = text.replace(old, new)
    if os.geteuid() == 0:
        text = "user root;\n" + text
    (tmp_path / "nginx.conf").write_text(text, encoding="utf-8")
    proc = subprocess.Popen([nginx, "-c", str(tmp_path / "nginx.conf"), "-e", str(tmp_path / "error.log"),
                             "-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        def answer():  # a list, since a 503 Response is falsy
            try:
                return [requests.post(f"http://127.0.0.1:{port}/predict", json={"text": "a"}, timeout=5)]
            except requests.ConnectionError:
                return None

        (response,) = wait_for(answer, timeout=20, what="second nginx")
        assert response.status_code == 503 and response.headers["Retry-After"] == "1"
        assert response.json()["error"]["code"] == "upstream_unavailable"
    finally:
        proc.terminate()
        proc.wait(timeout=10)


@pytest.mark.slow
def test_slow_request_heads_are_cut_off_by_the_proxy(proxy, service):
    """Sockets that send half a request head and then nothing: nginx closes each after
    client_header_timeout, and the service never sees them; meanwhile other requests are served."""
    host, port = proxy.removeprefix("http://").split(":")
    requests_before = _predict_requests(service)
    sockets = []
    try:
        for _ in range(SLOW_CLIENTS):
            s = socket.create_connection((host, int(port)), timeout=HEADER_TIMEOUT_S * 4)
            s.sendall(b"POST /predict HTTP/1.1\r\nHost: x\r\n")
            sockets.append(s)
        assert requests.post(proxy + "/predict", json={"text": "the"}, timeout=10).status_code == 200
        closed_after = []
        for s in sockets:  # recv returns b"" once nginx closes; bounded by the socket timeout
            started = time.monotonic()
            assert s.recv(1024) == b"", "nginx answers nothing to a head that never completed"
            closed_after.append(time.monotonic() - started)
    finally:
        for s in sockets:
            s.close()
    assert len(closed_after) == SLOW_CLIENTS
    # one of the requests above went through; none of the half-sent ones reached the service
    assert _predict_requests(service) == requests_before + 1


def test_generation_streams_through(proxy):
    session = requests.post(proxy + "/sessions", json={}, timeout=10).json()["session_id"]
    with requests.post(f"{proxy}/sessions/{session}/generate", json={"text": "the", "max_tokens": 5, "seed": 1},
                       headers={"Accept": "text/event-stream"}, stream=True, timeout=30) as response:
        assert response.status_code == 200
        assert response.headers["Content-Type"].startswith("text/event-stream")
        kinds = [event.event for event in SSEReader(response)]
    assert kinds[-1] == "done" and 1 <= kinds.count("token") <= 5


def _predict_requests(service) -> float:
    """POST /predict answers the service has counted, from its own /metrics."""
    text = requests.get(service.url + "/metrics", timeout=10).text
    total = 0.0
    for line in text.splitlines():
        if line.startswith("nextword_http_requests_total{") and 'endpoint="/predict"' in line \
                and 'method="POST"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total
