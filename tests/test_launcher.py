"""`python -m service`: the embedded Redis keeps sessions across a restart; bad settings fail clearly."""

from __future__ import annotations

import subprocess
import sys

import requests

from tests.servers import ROOT, ServiceProcess


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
