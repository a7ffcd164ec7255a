"""`python -m service`: the embedded Redis keeps sessions across a restart and is restarted when it dies; one
server per folder; bad settings fail clearly; `--help` lists every setting."""

from __future__ import annotations

import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests

from tests.servers import ROOT, ServiceProcess, free_port, wait_for
from tests.sse import SSEReader, open_stream
from tests.test_generate import LONG, PACE_MS, PROMPT, long_seed


@pytest.mark.slow
def test_sessions_survive_a_restart_on_the_embedded_redis(models_dir, tmp_path):
    env = {"REDIS_URL": "", "NEXTWORD_REDIS_DIR": str(tmp_path / "redis")}
    first = ServiceProcess(models_dir, "", tmp_path / "run1", **env).start()
    try:
        sid = requests.post(first.url + "/sessions", json={}, timeout=10).json()["session_id"]
        fed = requests.post(first.url + "/predict", json={"session_id": sid, "text": "the cat eats"}, timeout=10)
        assert fed.status_code == 200
        before = requests.post(first.url + "/predict", json={"text": "the cat eats fish"}, timeout=10).json()
    finally:
        assert first.stop() == 0
    second = ServiceProcess(models_dir, "", tmp_path / "run2", **env).start()
    try:
        info = requests.get(second.url + f"/sessions/{sid}", timeout=10)
        assert info.status_code == 200 and info.json()["tokens"] == 3
        after = requests.post(second.url + "/predict", json={"session_id": sid, "text": "fish"}, timeout=10).json()
        assert [p["word"] for p in after["predictions"]] == [p["word"] for p in before["predictions"]]
    finally:
        second.stop()
    assert "embedded Redis" in first.log()


def test_a_bad_setting_is_one_clear_line_and_exit_2():
    proc = subprocess.run([sys.executable, "-m", "service"], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={"PATH": "/usr/bin:/bin", "NEXTWORD_WORKERS": "many"})
    assert proc.returncode == 2
    assert proc.stderr.strip().splitlines() == ["nextword: configuration error: NEXTWORD_WORKERS='many' is not an integer"]


MISCONFIGURATIONS = [  # (what, environment, the setting the line must name, words of the advice)
    ("a missing models folder", {"NEXTWORD_MODELS_DIR": "{tmp}/nonexistent"}, "NEXTWORD_MODELS_DIR", "no such folder"),
    ("a folder with no bundle", {"NEXTWORD_MODELS_DIR": "{tmp}"}, "NEXTWORD_MODELS_DIR", "holds no bundle"),
    ("an unknown default model", {"NEXTWORD_DEFAULT_MODEL": "no-such-model"}, "NEXTWORD_DEFAULT_MODEL",
     "choose one of tiny-lstm, tiny-rnn"),
    ("a URL that is not Redis's", {"REDIS_URL": "http://x"}, "REDIS_URL", "redis+sentinel://"),
    pytest.param("an unreachable Redis", {"REDIS_URL": "redis://127.0.0.1:{port}/0"}, "REDIS_URL",
                 "did not answer within", marks=pytest.mark.slow, id="an unreachable Redis"),  # waits 5 s for it
]


@pytest.mark.parametrize("what, env, setting, advice", MISCONFIGURATIONS,
                         ids=[m[0] if isinstance(m, tuple) else m.id for m in MISCONFIGURATIONS])
def test_a_misconfiguration_is_one_line_exit_2_and_nothing_listens(what, env, setting, advice, models_dir, tmp_path):
    port = free_port()
    values = {k: v.format(tmp=tmp_path, port=free_port()) for k, v in env.items()}
    proc = _run_launcher({"NEXTWORD_MODELS_DIR": str(models_dir), "NEXTWORD_DEFAULT_MODEL": "tiny-lstm",
                          "REDIS_URL": "", "NEXTWORD_BIND": f"127.0.0.1:{port}",
                          "NEXTWORD_REDIS_DIR": str(tmp_path / "redis"),
                          "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / "prom"), **values})
    assert proc.returncode == 2, proc.stderr
    (line,) = proc.stderr.strip().splitlines()  # no traceback, no gunicorn line
    assert line.startswith(f"nextword: configuration error: {setting}") and advice in line, line
    assert proc.stdout == ""
    assert not (tmp_path / "redis").exists() and not (tmp_path / "prom").exists(), "nothing was started or touched"
    with socket.socket() as s:  # the port was never taken: it is still free to bind
        s.bind(("127.0.0.1", port))


def _run_launcher(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "service", *args], cwd=ROOT, capture_output=True, text=True,
                          timeout=60, env={**os.environ, **env})


def test_help_lists_every_setting_and_touches_nothing(tmp_path):
    prom = tmp_path / "prom"
    prom.mkdir()
    (prom / "counter_123.db").write_bytes(b"samples of a running server")
    proc = _run_launcher({"PROMETHEUS_MULTIPROC_DIR": str(prom), "NEXTWORD_REDIS_DIR": str(tmp_path / "redis"),
                          "REDIS_URL": ""}, "--help")
    assert proc.returncode == 0, proc.stderr
    for variable in ("NEXTWORD_BIND", "REDIS_URL", "NEXTWORD_WORKERS", "NEXTWORD_DEVICE", "NEXTWORD_LOG_LEVEL",
                     "NEXTWORD_API_KEYS_FILE", "NEXTWORD_REQUEST_READ_TIMEOUT_S", "NEXTWORD_REDIS_MAXMEMORY",
                     "PROMETHEUS_MULTIPROC_DIR"):
        assert variable in proc.stdout
    assert "(default: 127.0.0.1:8000)" in proc.stdout
    assert [p.name for p in prom.iterdir()] == ["counter_123.db"]
    assert not (tmp_path / "redis").exists()


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie (dead, not yet reaped by its parent) is not alive
        return Path(f"/proc/{pid}/stat").read_text().split(")")[-1].split()[0] != "Z"
    except OSError:
        return False


def _embedded(tmp_path, models_dir) -> ServiceProcess:
    return ServiceProcess(models_dir, "", tmp_path / "run", REDIS_URL="", NEXTWORD_REDIS_DIR=str(tmp_path / "redis"),
                          PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "prom"))


def _redis_pid(tmp_path) -> int:
    return int((tmp_path / "redis" / "redis.pid").read_text())


@pytest.mark.slow
def test_a_killed_embedded_redis_is_restarted_with_its_sessions(models_dir, tmp_path):
    service = _embedded(tmp_path, models_dir).start()
    try:
        sid = requests.post(service.url + "/sessions", json={}, timeout=10).json()["session_id"]
        assert requests.post(service.url + "/predict", json={"session_id": sid, "text": "the cat"},
                             timeout=10).status_code == 200
        time.sleep(1.5)  # appendfsync everysec: the AOF holds the write after at most a second
        first = _redis_pid(tmp_path)
        os.kill(first, signal.SIGKILL)
        wait_for(lambda: requests.get(service.url + "/readyz", timeout=5).status_code == 200
                 and _redis_pid(tmp_path) != first, timeout=30, what="a new embedded Redis")
        info = requests.get(f"{service.url}/sessions/{sid}", timeout=10)
        assert info.status_code == 200 and info.json()["tokens"] == 2
        assert "embedded Redis (pid" in service.log() and "restarting it" in service.log()
    finally:
        assert service.stop() == 0


@pytest.mark.slow
def test_a_second_launch_in_the_same_folder_touches_nothing(models_dir, tmp_path):
    service = _embedded(tmp_path, models_dir).start()
    try:
        sid = requests.post(service.url + "/sessions", json={}, timeout=10).json()["session_id"]
        requests.get(service.url + "/metrics", timeout=10)
        files = sorted(p.name for p in (tmp_path / "prom").glob("*.db"))
        assert files
        proc = _run_launcher({**service.env, "NEXTWORD_BIND": "127.0.0.1:1"})  # bind is never reached
        assert proc.returncode == 1
        (line,) = proc.stderr.strip().splitlines()
        assert "already running" in line and f"launcher pid {service.proc.pid}" in line
        assert sorted(p.name for p in (tmp_path / "prom").glob("*.db")) == files
        assert requests.get(f"{service.url}/sessions/{sid}", timeout=10).status_code == 200
    finally:
        assert service.stop() == 0


@pytest.mark.slow
def test_children_of_a_killed_launcher_are_reported_in_one_line(models_dir, tmp_path):
    service = _embedded(tmp_path, models_dir).start()
    redis_pid = _redis_pid(tmp_path)
    gunicorn_pid = None
    try:
        held = json.loads((tmp_path / "prom" / "launcher.lock").read_text())
        gunicorn_pid = held["gunicorn"]
        assert held["launcher"] == service.proc.pid and held["redis"] == redis_pid
        service.proc.kill()
        service.proc.wait()
        assert _pid_alive(gunicorn_pid) and _pid_alive(redis_pid)
        proc = _run_launcher(service.env)
        assert proc.returncode == 1
        (line,) = proc.stderr.strip().splitlines()
        assert f"dead launcher (pid {service.proc.pid})" in line
        assert f"gunicorn pid {gunicorn_pid}" in line and f"redis-server pid {redis_pid}" in line
        assert f"kill {gunicorn_pid} {redis_pid}" in line
        assert _pid_alive(gunicorn_pid) and _pid_alive(redis_pid)  # reported, not touched
    finally:
        for pid in (gunicorn_pid, redis_pid):
            if pid and _pid_alive(pid):
                os.kill(pid, signal.SIGTERM)
        wait_for(lambda: not any(pid and _pid_alive(pid) for pid in (gunicorn_pid, redis_pid)), timeout=30,
                 what="the orphans to stop")
    again = _embedded(tmp_path, models_dir)
    again.env["PROMETHEUS_MULTIPROC_DIR"] = str(tmp_path / "prom")
    again.start()  # with the orphans gone the folder is free again
    assert again.stop() == 0


# --------------------------------------------------------------------------- the banner and SIGHUP (hot reload)

def _served(service) -> list[str]:
    return sorted(m["name"] for m in requests.get(service.url + "/models", timeout=10).json()["models"])


@pytest.mark.slow
def test_sighup_loads_new_bundles_drops_removed_ones_and_keeps_a_stream_in_flight(models_dir, tmp_path, client):
    seed, drained = long_seed(client, LONG)  # a seed whose continuation runs LONG tokens on tiny-lstm
    folder = tmp_path / "models"
    shutil.copytree(models_dir / "tiny-lstm", folder / "tiny-lstm")
    service = ServiceProcess(models_dir, "", tmp_path / "run", REDIS_URL="", NEXTWORD_MODELS_DIR=str(folder),
                             NEXTWORD_REDIS_DIR=str(tmp_path / "redis"), NEXTWORD_BATCH_WAIT_MS=str(PACE_MS),
                             PROMETHEUS_MULTIPROC_DIR=str(tmp_path / "prom")).start()
    try:
        wait_for(lambda: "playground" in service.log(), timeout=10, what="the banner")
        assert f"  playground   {service.url}/" in service.log() and f"curl -s {service.url}/predict" in service.log()
        assert _served(service) == ["tiny-lstm"]
        typed = requests.post(service.url + "/sessions", json={}, timeout=10).json()["session_id"]
        assert requests.post(service.url + "/predict", json={"session_id": typed, "text": "the cat"},
                             timeout=10).status_code == 200
        streamed = requests.post(service.url + "/sessions", json={}, timeout=10).json()["session_id"]
        with open_stream(f"{service.url}/sessions/{streamed}/generate",
                         {"text": PROMPT, "max_tokens": LONG, "seed": seed}) as response:
            events = iter(SSEReader(response))
            first = next(events)
            assert first.event == "token"
            # a new bundle, and tiny-lstm replaced by another one (tiny-rnn's files), then SIGHUP mid-stream
            shutil.copytree(models_dir / "tiny-rnn", folder / "tiny-rnn")
            for name in ("model.onnx", "vocab.txt", "manifest.json"):
                shutil.copy(models_dir / "tiny-rnn" / name, folder / "tiny-lstm" / name)
            service.proc.send_signal(signal.SIGHUP)  # gunicorn spawns a worker and TERMs the old one at once:
            rest = list(events)                      # the stream has ~(LONG - 1) x PACE_MS left to run on it
        words = [first.json()["word"]] + [e.json()["word"] for e in rest if e.event == "token"]
        assert rest[-1].event == "done", rest[-1]
        assert words == [d["word"] for d in drained["token_details"]], "the stream in flight ran to its end unchanged"
        wait_for(lambda: _served(service) == ["tiny-lstm", "tiny-rnn"], timeout=30, what="the new workers")
        assert "reloading: new workers serve tiny-lstm, tiny-rnn" in service.log()
        changed = requests.post(service.url + "/predict", json={"session_id": typed, "text": "eats"}, timeout=10)
        assert changed.status_code == 409 and changed.json()["error"]["code"] == "model_mismatch"

        shutil.rmtree(folder / "tiny-rnn")
        service.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: _served(service) == ["tiny-lstm"], timeout=30, what="tiny-rnn to go")

        (folder / "broken").mkdir()
        (folder / "broken" / "manifest.json").write_text("{")
        service.proc.send_signal(signal.SIGHUP)
        wait_for(lambda: "reload refused" in service.log(), timeout=10, what="the refusal")
        refused = next(line for line in service.log().splitlines() if "reload refused" in line)
        assert "NEXTWORD_MODELS_DIR" in refused and "broken" in refused
        assert _served(service) == ["tiny-lstm"] and service.proc.poll() is None
    finally:
        assert service.stop() == 0
    assert "Traceback" not in service.log()
