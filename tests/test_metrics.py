"""service/metrics.py: what /metrics exposes, and that it is right under several gunicorn workers.

Most tests run the real service (`python -m service`, gunicorn with gthread workers) on the tiny
bundles and the test Redis; the expiry watcher is also tested alone on real Redis.
"""

from __future__ import annotations

import logging
import os
import re
import signal
import subprocess
import threading
import time
import uuid
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from prometheus_client.metrics import MetricWrapperBase
from prometheus_client.parser import text_string_to_metric_families

from service import metrics
from service.process.redis_server import NOTIFY_KEYSPACE_EVENTS
from service.http.errors import ERROR_TYPES
from service.state import LEASE_KEY, OPERATIONS, ExpiryWatcher
from tests.servers import ROOT, wait_for

SERVICE_DIR = ROOT / "service"


# -- helpers (also used by test_logs.py and test_prometheus.py) ---------------------------------------------------

def scrape(url: str) -> list:
    """Samples of one scrape, each with .name, .labels, .value (a new connection: any worker may answer)."""
    response = requests.get(url + "/metrics", timeout=10, headers={"Connection": "close"})
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    return [s for family in text_string_to_metric_families(response.text) for s in family.samples]


def total(samples: list, name: str, **labels: str) -> float:
    return sum(s.value for s in samples if s.name == name and all(s.labels.get(k) == v for k, v in labels.items()))


def predict(url: str, text: str = "the cat eats", **body) -> requests.Response:
    response = requests.post(url + "/predict", json={"text": text, **body}, timeout=30,
                             headers={"Connection": "close"})
    return response


def mixed_traffic(url: str) -> dict:
    """predict, sessions (create/feed/show/delete), a generation as SSE and drained, and errors."""
    sent = {"predict": 0}
    for text in ("the cat eats", "a dog barks sticks", "my friend reads"):
        assert predict(url, text).status_code == 200
        sent["predict"] += 1
    assert requests.post(url + "/predict", json={"text": "the cat"}, headers={"Accept": "application/octet-stream"},
                         timeout=30).status_code == 200
    sent["predict"] += 1
    sid = requests.post(url + "/sessions", json={}, timeout=30).json()["session_id"]
    assert predict(url, "the bird sings", session_id=sid).status_code == 200
    sent["predict"] += 1
    assert requests.get(f"{url}/sessions/{sid}", timeout=30).status_code == 200
    with requests.post(f"{url}/sessions/{sid}/generate", json={"max_tokens": 5, "seed": 1},
                       headers={"Accept": "text/event-stream"}, stream=True, timeout=30) as r:
        assert r.status_code == 200
        body = r.text
    assert "event: done" in body
    r = requests.post(f"{url}/sessions/{sid}/generate", json={"max_tokens": 3, "seed": 2}, timeout=30)
    assert r.status_code == 200
    assert requests.delete(f"{url}/sessions/{sid}", timeout=30).status_code == 204
    # errors: unknown session, bad input, unknown model, unknown path, wrong method
    assert requests.get(f"{url}/sessions/{sid}", timeout=30).status_code == 404
    assert predict(url, "").status_code == 400
    sent["predict"] += 1
    assert predict(url, "the cat", model="no-such-model").status_code == 404
    sent["predict"] += 1
    assert requests.get(f"{url}/no/such/thing/{uuid.uuid4().hex}", timeout=30).status_code == 404
    assert requests.put(url + "/predict", json={}, timeout=30).status_code == 405
    sent["session_id"] = sid
    return sent


# -- declarations ---------------------------------------------------------------------------------------------------

def _declared() -> dict:
    return {name: m for name, m in vars(metrics).items() if isinstance(m, MetricWrapperBase)}


def test_every_declared_metric_is_recorded_outside_the_metrics_module():
    sources = {p: p.read_text() for p in SERVICE_DIR.rglob("*.py") if p.name != "metrics.py"}
    for name in _declared():
        users = [p.name for p, text in sources.items() if re.search(rf"\b{name}\b\s*\.", text)
                 or re.search(rf"metrics\.{name}\b", text)]
        assert users, f"metrics.{name} is declared but never recorded"


def test_names_carry_units_and_labels_are_bounded():
    allowed = {"endpoint", "method", "status", "code", "model", "operation", "version", "architecture", "provider"}
    for name, metric in _declared().items():
        full = metric._name
        assert full.startswith("nextword_"), full
        kind = metric._type
        if kind == "counter":
            assert not full.endswith("_total"), "prometheus_client appends _total itself"
        if kind == "histogram" and full != "nextword_model_batch_size":  # every other histogram times something
            assert full.endswith("_seconds"), f"{full}: time histograms end in _seconds"
        assert set(metric._labelnames) <= allowed, f"{full}: unexpected labels {metric._labelnames}"
    assert metrics.ACTIVE_STREAMS._multiprocess_mode == "livesum"
    assert metrics.EXPIRY_WATCHER._multiprocess_mode == "livesum"
    assert metrics.MODEL_INFO._multiprocess_mode == "max"
    # sub-millisecond to seconds
    assert metrics.LATENCY_BUCKETS[0] <= 0.0001 and metrics.LATENCY_BUCKETS[-1] >= 30


def test_metrics_stay_open_when_api_keys_are_set(make_app):
    client = make_app(api_keys=("a-key",)).test_client()
    assert client.post("/predict", json={"text": "the cat"}).status_code == 401
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("text/plain; version=0.0.4")
    assert "nextword_http_requests_total" in response.get_data(as_text=True)


# -- several workers ------------------------------------------------------------------------------------------------

def _pids_answering(log: str, path: str) -> set[str]:
    return set(re.findall(rf'"pid": (\d+), "msg": "request".*?"path": "{re.escape(path)}"', log))


def test_request_counter_is_exact_whichever_worker_answers(service_factory):
    service = service_factory(workers=2)
    def workers_ready() -> set[str] | None:
        pids = set(re.findall(r'"pid": (\d+), "msg": "worker ready"', service.log()))
        return pids if len(pids) == 2 else None

    ready = wait_for(workers_ready, what="both workers to be ready")
    n = 0
    with ThreadPoolExecutor(8) as pool:  # concurrent, fresh connections, until both workers have answered some
        while n < 400 and len(_pids_answering(service.log(), "/predict")) < 2:
            codes = list(pool.map(lambda i: predict(service.url, f"the cat eats fish {i % 3}").status_code,
                                  range(20)))
            assert codes == [200] * 20
            n += 20
    assert _pids_answering(service.log(), "/predict") == ready, "both workers answered /predict"
    scrapes = 0
    while scrapes < 8 or (len(_pids_answering(service.log(), "/metrics")) < 2 and scrapes < 100):
        samples = scrape(service.url)  # whichever worker answers, it sums both workers' files
        scrapes += 1
        assert total(samples, "nextword_http_requests_total", endpoint="/predict") == n
        assert total(samples, "nextword_http_requests_total", endpoint="/predict", method="POST", status="200") == n
        assert total(samples, "nextword_http_request_duration_seconds_count", endpoint="/predict") == n
    # Both workers answered /predict (asserted above), so a scrape that counts all n requests read the other
    # worker's file too, whichever worker answered it. Which worker accepts a fresh connection is the kernel's
    # choice: with the buffering worker one of them can win all 100 scrapes, so that is not required here.
    assert _pids_answering(service.log(), "/metrics") <= ready
    # the scrapes count under their own endpoint, not under /predict
    assert total(scrape(service.url), "nextword_http_requests_total", endpoint="/metrics") == scrapes


def test_mixed_traffic_is_measured(service_factory):
    service = service_factory(workers=2)
    sent = mixed_traffic(service.url)
    samples = scrape(service.url)
    assert total(samples, "nextword_http_requests_total", endpoint="/predict") == sent["predict"]
    assert total(samples, "nextword_http_requests_total", endpoint="/sessions", method="POST", status="201") == 1
    generate = "/sessions/<session_id>/generate"  # a stream is counted when it closes, just after its last event
    samples = wait_for(lambda: (s := scrape(service.url)) and total(s, "nextword_http_requests_total",
                                                                       endpoint=generate) == 2 and s,
                       what="both generations in the scrape")
    assert total(samples, "nextword_http_requests_total", endpoint="/sessions/<session_id>", method="DELETE") == 1
    assert total(samples, "nextword_http_requests_total", endpoint="unmatched", status="404") == 1
    assert total(samples, "nextword_errors_total", code="session_not_found") == 1
    assert total(samples, "nextword_errors_total", code="invalid_input") == 1
    assert total(samples, "nextword_errors_total", code="unknown_model") == 1
    assert total(samples, "nextword_errors_total", code="not_found") == 1
    assert total(samples, "nextword_errors_total", code="method_not_allowed") == 1
    assert total(samples, "nextword_sessions_created_total", model="tiny-lstm") == 1
    assert total(samples, "nextword_sessions_deleted_total", model="tiny-lstm") == 1
    assert total(samples, "nextword_tokens_generated_total", model="tiny-lstm") >= 2  # eos may end a generation
    assert total(samples, "nextword_tokens_read_total", model="tiny-lstm") >= 3 + 4 + 3 + 2 + 3
    for name in ("nextword_model_step_duration_seconds_count", "nextword_model_batch_size_count",
                 "nextword_batch_wait_seconds_count"):
        assert total(samples, name, model="tiny-lstm") > 0, name
    assert total(samples, "nextword_stream_time_to_first_token_seconds_count", model="tiny-lstm") == 2
    assert total(samples, "nextword_active_streams") == 0
    for op in ("create", "get", "cas", "delete", "ping"):
        assert total(samples, "nextword_redis_command_duration_seconds_count", operation=op) > 0, op
    info = [s for s in samples if s.name == "nextword_model_info"]
    assert {(s.labels["model"], s.labels["architecture"], s.labels["provider"], s.value) for s in info} == {
        ("tiny-lstm", "lstm", "CPU", 1.0), ("tiny-rnn", "rnn_tanh", "CPU", 1.0)}
    assert all(re.fullmatch(r"[0-9a-f]{12}", s.labels["version"]) for s in info)
    assert "pid" not in {k for s in samples for k in s.labels}  # multiprocess mode aggregated the workers
    # never a session id or a raw path in a label
    text = requests.get(service.url + "/metrics", timeout=10).text
    assert sent["session_id"] not in text
    assert "/no/such/thing" not in text
    for s in samples:
        if "endpoint" in s.labels:
            assert s.labels["endpoint"] == "unmatched" or s.labels["endpoint"].startswith("/"), s
            assert not re.search(r"[A-Za-z0-9_-]{22,}", s.labels["endpoint"]), s


def test_session_ids_and_raw_paths_never_become_labels(service_factory):
    service = service_factory(workers=1)
    ids = [requests.post(service.url + "/sessions", json={}, timeout=30).json()["session_id"] for _ in range(3)]
    for sid in ids:
        requests.get(f"{service.url}/sessions/{sid}", timeout=30)
        predict(service.url, "the cat", session_id=sid)
    junk = f"/no/such/thing/{uuid.uuid4().hex}"
    assert requests.get(service.url + junk, timeout=30).status_code == 404
    assert requests.get(f"{service.url}/sessions/{uuid.uuid4().hex}x{uuid.uuid4().hex}", timeout=30).status_code == 404
    text = requests.get(service.url + "/metrics", timeout=10).text
    for sid in ids:
        assert sid not in text
    assert junk not in text and "no/such" not in text


def test_a_restart_on_the_same_directory_starts_from_zero(service_factory):
    service = service_factory(workers=1)
    prom_dir = Path(service.env["PROMETHEUS_MULTIPROC_DIR"])
    for _ in range(5):
        assert predict(service.url).status_code == 200
    assert total(scrape(service.url), "nextword_http_requests_total", endpoint="/predict") == 5
    stale = {p.name for p in prom_dir.glob("*.db")}
    assert stale
    unrelated = prom_dir / "README.operator"  # the launcher removes samples only, nothing else it finds there
    unrelated.write_text("keep me")
    service.stop()
    service.start()
    assert unrelated.read_text() == "keep me"
    samples = scrape(service.url)
    assert total(samples, "nextword_http_requests_total", endpoint="/predict") == 0
    assert predict(service.url).status_code == 200
    assert total(scrape(service.url), "nextword_http_requests_total", endpoint="/predict") == 1


def _documented_counters() -> dict[str, list[str]]:
    """docs/metrics.md's table: every counter's name and labels."""
    rows = re.findall(r"^\| `(nextword_\w+)` \| counter \| ([^|]+) \|", (ROOT / "docs" / "metrics.md").read_text(),
                      re.MULTILINE)
    return {name: re.findall(r"`(\w+)`", labels) for name, labels in rows}


def test_every_documented_counter_is_on_the_first_scrape(service_factory):
    """A dashboard panel or alert on a counter reads 0 from the start, not "no data" until its first event."""
    counters = _documented_counters()
    assert {"nextword_redis_errors_total", "nextword_session_write_conflicts_total"} <= set(counters)
    service = service_factory(workers=1)
    samples = scrape(service.url)  # the first scrape of a fresh service: no API call has been made
    known = {"model": ["tiny-lstm", "tiny-rnn"], "operation": list(OPERATIONS), "code": [e.code for e in ERROR_TYPES]}
    for name, labels in counters.items():
        series = [s for s in samples if s.name == name]
        assert series, f"{name} is missing from the first scrape"
        for label in labels:
            if label in known:
                assert sorted({s.labels[label] for s in series}) == sorted(known[label]), f"{name} by {label}"
    assert total(samples, "nextword_session_write_conflicts_total", model="tiny-rnn") == 0
    assert total(samples, "nextword_redis_errors_total", operation="cas") == 0


def _worker_pids(service) -> list[int]:
    out = subprocess.run(["ps", "-o", "pid=,ppid=,args=", "-ax"], capture_output=True, text=True).stdout
    procs = [line.split(None, 2) for line in out.splitlines()]
    master = [int(p) for p, pp, args in procs if int(pp) == service.proc.pid and "gunicorn" in args]
    assert len(master) == 1, "one gunicorn master under the launcher"
    return [int(p) for p, pp, args in procs if int(pp) == master[0]]


def test_a_dead_worker_is_marked_and_its_counts_kept(service_factory):
    service = service_factory(workers=1)
    prom_dir = Path(service.env["PROMETHEUS_MULTIPROC_DIR"])
    for _ in range(3):
        assert predict(service.url).status_code == 200
    (old,) = _worker_pids(service)
    assert (prom_dir / f"gauge_livesum_{old}.db").exists()
    os.kill(old, signal.SIGKILL)
    wait_for(lambda: (pids := _worker_pids(service)) and old not in pids, what="a replacement worker")
    wait_for(lambda: requests.get(service.url + "/readyz", timeout=5).status_code == 200, what="readiness")
    assert not (prom_dir / f"gauge_livesum_{old}.db").exists(), "child_exit marked the dead worker"
    samples = scrape(service.url)
    assert total(samples, "nextword_http_requests_total", endpoint="/predict") == 3  # its counters still count
    assert total(samples, "nextword_active_streams") == 0


# -- session expirations --------------------------------------------------------------------------------------------

class _Count:
    def __init__(self):
        self.n = 0
        self.lock = threading.Lock()

    def __call__(self):
        with self.lock:
            self.n += 1


def _watcher(redis_url: str, counter: _Count, lease: float = 1.5):
    return ExpiryWatcher.from_url(redis_url, lease_seconds=lease, on_expired=counter).start()


@pytest.mark.slow
def test_expirations_are_counted_once_by_the_lease_holder(session_store, redis_url):
    counts = [_Count(), _Count()]
    watchers = [_watcher(redis_url, c) for c in counts]
    try:
        wait_for(lambda: sum(w.counting for w in watchers) == 1, what="one watcher to hold the lease")
        time.sleep(0.3)
        assert sum(w.counting for w in watchers) == 1
        session_store.client.set("unrelated:key", "x", px=200)  # not a session: not counted
        short = type(session_store)(session_store.client, ttl_seconds=1)
        for _ in range(3):
            short.create("m", "d", "")
        gone = short.create("m", "d", "")
        short.delete(gone.session_id, "")  # deleted, not expired
        wait_for(lambda: counts[0].n + counts[1].n >= 3, timeout=10, what="3 expirations")
        time.sleep(1.0)
        assert counts[0].n + counts[1].n == 3
        holder = next(i for i, w in enumerate(watchers) if w.counting)
        assert counts[1 - holder].n == 0
        # the holder stops (worker exit): it hands the lease back and the other one takes over
        watchers[holder].stop()
        other = watchers[1 - holder]
        wait_for(lambda: other.counting, timeout=5, what="the other watcher to take over")
        short.create("m", "d", "")
        wait_for(lambda: counts[1 - holder].n == 1, timeout=10, what="the expiration counted by the new holder")
        assert counts[holder].n == 3
    finally:
        for w in watchers:
            w.stop()


def test_a_holder_that_lost_its_lease_stops_counting_and_a_lapsed_lease_is_taken(session_store, redis_url):
    watcher = _watcher(redis_url, _Count())
    try:
        wait_for(lambda: watcher.counting, what="the watcher to hold the lease")
        # while this holder stalled its lease lapsed and another process took it, then died without releasing it
        session_store.client.set(LEASE_KEY, "elsewhere:1:dead", px=3000)
        wait_for(lambda: not watcher.counting, timeout=5, what="the watcher to notice at its next renewal")
        wait_for(lambda: watcher.counting, timeout=10, what="the dead holder's lease to lapse and be taken")
        assert session_store.client.get(LEASE_KEY) == watcher.token.encode()
    finally:
        watcher.stop()
    assert session_store.client.get(LEASE_KEY) is None  # handed back


@pytest.mark.parametrize("config", ["refused", "events off"])
def test_a_watcher_warns_when_redis_does_not_publish_expirations_and_counts_anyway(session_store, redis_url, caplog,
                                                                                  config):
    """The watcher reads notify-keyspace-events and never writes it: the server's configuration is the one place
    (for the test Redis, the file service/process/redis_server.py writes)."""
    admin = session_store.client
    admin.config_set("notify-keyspace-events", "")
    admin.acl_setuser("limited", enabled=True, passwords=["+limited-pw"], keys=["*"], channels=["*"],
                      commands=["+@all", "-config"])
    try:
        url = redis_url.replace("redis://", "redis://limited:limited-pw@") if config == "refused" else redis_url
        counter = _Count()
        with caplog.at_level(logging.WARNING, logger="service.state"):
            watcher = _watcher(url, counter)
            try:
                wait_for(lambda: watcher.counting, what="the watcher to subscribe anyway")
                (warning,) = [r.getMessage() for r in caplog.records if "expiry watcher" in r.getMessage()]
                assert ("cannot read notify-keyspace-events" if config == "refused" else
                        "notify-keyspace-events is ''") in warning
                assert "notify-keyspace-events Ex" in warning and "limited-pw" not in warning
                assert admin.config_get("notify-keyspace-events")["notify-keyspace-events"] == ""
                admin.config_set("notify-keyspace-events", "Ex")  # the operator sets it on the server
                type(session_store)(admin, ttl_seconds=1).create("m", "d", "")
                wait_for(lambda: counter.n == 1, timeout=10, what="the expiration")
            finally:
                watcher.stop()
    finally:
        admin.config_set("notify-keyspace-events", NOTIFY_KEYSPACE_EVENTS)
        admin.acl_deluser("limited")


def test_the_service_counts_expired_sessions_once_across_workers(service_factory):
    service = service_factory(workers=2, NEXTWORD_SESSION_TTL_SECONDS="1")
    wait_for(lambda: total(scrape(service.url), "nextword_session_expiry_watcher") == 1, what="an expiry watcher")
    ids = [requests.post(service.url + "/sessions", json={}, timeout=30).json()["session_id"] for _ in range(4)]
    assert requests.delete(f"{service.url}/sessions/{ids[0]}", timeout=30).status_code == 204
    wait_for(lambda: total(scrape(service.url), "nextword_sessions_expired_total") >= 3, timeout=15,
             what="3 expirations in the scrape")
    time.sleep(1.0)
    samples = scrape(service.url)
    assert total(samples, "nextword_sessions_expired_total") == 3
    assert total(samples, "nextword_sessions_deleted_total") == 1
    assert total(samples, "nextword_sessions_created_total") == 4
    assert total(samples, "nextword_session_expiry_watcher") == 1  # one of the two workers counts
