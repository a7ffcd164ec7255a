"""Runs the real service (`python -m service`: gunicorn + the app) as a child process for tests."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import requests

ROOT = Path(__file__).resolve().parent.parent


def wait_for(predicate, timeout: float = 15.0, interval: float = 0.05, what: str = "condition"):
    """predicate()'s first truthy value, polling until `timeout` seconds have passed."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class ServiceProcess:
    """`python -m service` on 127.0.0.1:<port>; `.url`, `.stop()`, `.log()` (its stderr so far)."""

    def __init__(self, models_dir: Path, redis_url: str, workdir: Path, workers: int = 1, **env: str):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.workdir = workdir
        workdir.mkdir(parents=True, exist_ok=True)
        self._log_path = workdir / f"service-{self.port}.log"
        self.env = {**os.environ, "NEXTWORD_BIND": f"127.0.0.1:{self.port}", "NEXTWORD_MODELS_DIR": str(models_dir),
                    "REDIS_URL": redis_url, "NEXTWORD_WORKERS": str(workers), "NEXTWORD_DEVICE": "cpu",
                    "NEXTWORD_DEFAULT_MODEL": "tiny-lstm", "PROMETHEUS_MULTIPROC_DIR": str(workdir / f"prom-{self.port}"),
                    "NEXTWORD_GRACEFUL_TIMEOUT": "10", "PYTHONUNBUFFERED": "1", **env}
        self.proc: subprocess.Popen | None = None

    def start(self, timeout: float = 60) -> "ServiceProcess":
        log = self._log_path.open("ab")
        self.proc = subprocess.Popen([sys.executable, "-m", "service"], cwd=ROOT, env=self.env, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"service exited with {self.proc.returncode}:\n{self.log()[-3000:]}")
            try:
                if requests.get(self.url + "/readyz", timeout=5).status_code == 200:
                    return self
            except requests.RequestException:
                pass
            time.sleep(0.2)
        self.stop()
        raise RuntimeError(f"service not ready after {timeout} s:\n{self.log()[-3000:]}")

    def stop(self, sig: int = signal.SIGTERM, timeout: float = 30) -> int | None:
        if self.proc is None or self.proc.poll() is not None:
            return None if self.proc is None else self.proc.returncode
        self.proc.send_signal(sig)
        try:
            return self.proc.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)
            return self.proc.wait()

    def log(self) -> str:
        return self._log_path.read_text(errors="replace") if self._log_path.exists() else ""

    def __enter__(self) -> "ServiceProcess":
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()
