"""/metrics as Prometheus itself reads it: `promtool check metrics` on a scrape after mixed traffic, and a real
Prometheus server on loopback that scrapes the service and answers a query about the traffic sent.

Needs Debian's `prometheus` package (promtool and the server, /usr/bin/promtool and /usr/bin/prometheus);
the tests skip, saying so, only when those binaries are absent.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import time
from pathlib import Path

import pytest
import requests

from tests.servers import free_port
from tests.test_metrics import mixed_traffic, predict, scrape, total, wait_for

PROMTOOL = shutil.which("promtool")
PROMETHEUS = shutil.which("prometheus")
INSTALL = "apt-get install -y --no-install-recommends prometheus"
ROOT = Path(__file__).resolve().parent.parent


@pytest.mark.skipif(PROMTOOL is None, reason=f"promtool is not installed ({INSTALL})")
def test_promtool_finds_nothing_to_report_after_mixed_traffic(service_factory, tmp_path):
    service = service_factory(workers=2)
    mixed_traffic(service.url)
    body = requests.get(service.url + "/metrics", timeout=10).content
    assert b"nextword_http_requests_total{" in body and b"nextword_model_info{" in body
    (tmp_path / "scrape.txt").write_bytes(body)
    result = subprocess.run([PROMTOOL, "check", "metrics"], input=body, capture_output=True, timeout=30)
    report = (result.stdout + result.stderr).decode(errors="replace")
    assert result.returncode == 0 and report.strip() == "", f"promtool check metrics:\n{report}"


class PrometheusServer:
    """A private Prometheus on 127.0.0.1: its own config and storage in tmp, scraping one target every second."""

    def __init__(self, workdir, target: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        (workdir / "prometheus.yml").write_text(
            "global:\n"
            "  scrape_interval: 1s\n"
            "  scrape_timeout: 1s\n"
            "scrape_configs:\n"
            "  - job_name: nextword\n"
            "    metrics_path: /metrics\n"
            "    static_configs:\n"
            f"      - targets: ['{target}']\n")
        self.proc: subprocess.Popen | None = None

    def start(self) -> "PrometheusServer":
        log = (self.workdir / "prometheus.log").open("wb")
        self.proc = subprocess.Popen(
            [PROMETHEUS, f"--config.file={self.workdir / 'prometheus.yml'}",
             f"--storage.tsdb.path={self.workdir / 'data'}", f"--web.listen-address=127.0.0.1:{self.port}",
             "--storage.tsdb.retention.time=1h", "--log.level=warn"],
            cwd=self.workdir, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        wait_for(self._ready, timeout=30, what="Prometheus to be ready")
        return self

    def _ready(self) -> bool:
        if self.proc.poll() is not None:
            raise RuntimeError(f"prometheus exited with {self.proc.returncode}: {self.log()[-2000:]}")
        try:
            return requests.get(self.url + "/-/ready", timeout=2).status_code == 200
        except requests.RequestException:
            return False

    def targets_up(self) -> bool:
        active = requests.get(self.url + "/api/v1/targets", timeout=5).json()["data"]["activeTargets"]
        return bool(active) and all(t["health"] == "up" for t in active)

    def query(self, promql: str) -> float | None:
        reply = requests.get(self.url + "/api/v1/query", params={"query": promql}, timeout=5).json()
        assert reply["status"] == "success", reply
        result = reply["data"]["result"]
        return float(result[0]["value"][1]) if result else None

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def log(self) -> str:
        path = self.workdir / "prometheus.log"
        return path.read_text(errors="replace") if path.exists() else ""


@pytest.mark.skipif(PROMETHEUS is None, reason=f"the prometheus server is not installed ({INSTALL})")
def test_a_real_prometheus_scrapes_the_traffic_sent(service_factory, tmp_path):
    service = service_factory(workers=2)
    server = PrometheusServer(tmp_path / "prometheus", f"127.0.0.1:{service.port}").start()
    try:
        wait_for(server.targets_up, timeout=20, interval=0.25, what=f"the target to be up:\n{server.log()[-2000:]}")
        n = 25
        for i in range(n):
            assert predict(service.url, f"the cat eats {i}").status_code == 200
        assert total(scrape(service.url), "nextword_http_requests_total", endpoint="/predict") == n
        query = 'sum(nextword_http_requests_total{endpoint="/predict"})'
        deadline = time.monotonic() + 20
        seen = None
        while time.monotonic() < deadline:
            seen = server.query(query)
            if seen == n:
                break
            assert seen is None or seen <= n, f"Prometheus counted {seen} requests, {n} were sent"
            time.sleep(0.25)
        assert seen == n, f"Prometheus reports {seen} for {query}, {n} were sent:\n{server.log()[-2000:]}"
        assert server.query('sum(nextword_model_info{provider="CPU"})') == 2  # two bundles
        assert server.query('up{job="nextword"}') == 1
    finally:
        server.stop()


@pytest.mark.skipif(PROMTOOL is None, reason=f"promtool is not installed ({INSTALL})")
def test_the_documented_and_shipped_scrape_configs_are_valid(tmp_path):
    doc = (ROOT / "docs" / "metrics.md").read_text()
    snippets = [block for block in re.findall(r"```yaml\n(.*?)```", doc, re.S) if "scrape_configs" in block]
    assert snippets, "docs/metrics.md shows a scrape config"
    configs = []
    for i, snippet in enumerate(snippets):
        path = tmp_path / f"doc{i}.yml"
        path.write_text(snippet)
        configs.append(path)
    shipped = ROOT / "deploy" / "prometheus" / "prometheus.yml"  # the one docker-compose.yml mounts
    if shipped.exists():
        assert "/metrics" in shipped.read_text() or "metrics_path" not in shipped.read_text()
        configs.append(shipped)
    # (deploy/prometheus/kubernetes.yml is not checked here: Debian's promtool is built without
    # Kubernetes service discovery and rejects kubernetes_sd_configs)
    for path in configs:
        result = subprocess.run([PROMTOOL, "check", "config", str(path)], capture_output=True, timeout=30)
        assert result.returncode == 0, (path, (result.stdout + result.stderr).decode(errors="replace"))
