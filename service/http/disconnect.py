"""Whether the client of a request is still there: a cancellation object (`.cancelled`) that the engine checks
between its steps, so that the work of an abandoned request is skipped. Knows the WSGI environ and sockets;
nothing of routes, the engine or models.

The request has been read whole before the app runs, so nothing of it is left on the socket: a peek
(`recv(1, MSG_PEEK | MSG_DONTWAIT)`) that finds the end of the stream (b"") or a reset (ECONNRESET) means the
client has gone; a peek that would block, or that finds the bytes of a pipelined next request, means it is still
there. Like Go's net/http (which cancels a request's context when its connection reads EOF), a client that shuts
down its sending side and still waits for the answer counts as gone; HTTP clients do not do that. Behind a proxy,
this sees the proxy's connection, which nginx closes when its client goes (`proxy_ignore_client_abort off`, its
default).

It works under any gunicorn worker class: the peek goes through a duplicate of the socket's descriptor made with
the C socket type (`_socket.socket`), whose `recv` never waits, where gevent's `socket.socket` would wait for
the socket to become readable. The duplicate is closed when the request ends (`watching` is a context manager),
and from then on `.cancelled` is True without a peek. Without a socket (Flask's test client) nothing is watched.
"""

from __future__ import annotations

import _socket
import contextlib
import os
import time
from collections.abc import Iterator

from flask import request

CHECK_EVERY_S = 0.005  # a check costs one system call; between checks, the last answer stands
_PEEK = _socket.MSG_PEEK | _socket.MSG_DONTWAIT


class Disconnect:
    """`.cancelled` turns True once the client has closed or reset its connection, or the request has ended."""

    def __init__(self, sock) -> None:
        self._peer = _socket.socket(sock.family, sock.type, sock.proto, os.dup(sock.fileno()))
        self._gone = False
        self._checked = 0.0

    @property
    def cancelled(self) -> bool:
        if self._gone:
            return True
        now = time.monotonic()
        if now - self._checked < CHECK_EVERY_S:
            return False
        self._checked = now
        try:
            self._gone = self._peer.recv(1, _PEEK) == b""
        except (BlockingIOError, InterruptedError):
            pass
        except OSError:  # ECONNRESET, or the duplicate closed by close() in another thread
            self._gone = True
        return self._gone

    def close(self) -> None:
        self._gone = True
        self._peer.close()


class _Never:
    """No socket to watch: never cancelled."""

    cancelled = False

    def close(self) -> None:
        pass


NEVER = _Never()


@contextlib.contextmanager
def watching() -> Iterator[Disconnect | _Never]:
    """The current request's client, watched while the block runs."""
    sock = request.environ.get("gunicorn.socket")
    try:
        watch = Disconnect(sock) if sock is not None else NEVER
    except (OSError, AttributeError, ValueError):  # not a socket we can duplicate: do without
        watch = NEVER
    try:
        yield watch
    finally:
        watch.close()
