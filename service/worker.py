"""The gunicorn worker class nextword runs: gthread, except that a thread only ever gets a complete request.

gunicorn's `gthread` worker hands a connection to a pool thread as soon as it is readable, and that thread then
blocks reading the rest of the head and body; a few dozen clients that send a byte every few seconds hold every
thread, and `/healthz` stops answering. `BufferingWorker` reads each request in the worker's event loop instead
(non-blocking sockets, the same selector gunicorn already polls), parses what has arrived with gunicorn's own
HTTP/1.1 parser, and submits the connection to the thread pool only once the whole request is in memory:

- the head must arrive within `NEXTWORD_REQUEST_READ_TIMEOUT_S` of the connection (or, on a kept-alive
  connection, of the next request's first byte), and the body within as long again; else 408;
- a body larger than `NEXTWORD_MAX_BODY_BYTES` (declared by Content-Length, or counted while chunks arrive) is
  413 at once, without reading it;
- what gunicorn's parser rejects (bad bytes, 414, 431, unknown Transfer-Encoding or Expect) is answered here.

Every such answer is the service's JSON error format (`service.errors`), sent with `Connection: close`.
`Expect: 100-continue` is answered with `100 Continue` once the head is in. A thread drains nothing from the
socket, so a pipelined request behind a finished one comes back to the event loop, as does every kept-alive
connection. With TLS terminated by gunicorn itself (`certfile`) it falls back to plain gthread behaviour: the
handshake needs blocking reads; terminate TLS at the proxy instead.

It does not know Flask, the engine or Redis; it knows sockets, gunicorn's parser and the error table.
"""

from __future__ import annotations

import errno
import json
import logging
import selectors
import time
import uuid
from functools import partial

from gunicorn.http import errors as http_errors
from gunicorn.http.message import Request
from gunicorn.http.parser import RequestParser
from gunicorn.http.unreader import Unreader
from gunicorn.workers.gthread import TConn, ThreadWorker

from service import logs, metrics
from service.config import Settings
from service.errors import (ExpectationFailed, HeadersTooLarge, InternalError, MalformedRequest, PayloadTooLarge,
                            RequestTimeout, ServiceError, TransferCodingNotImplemented, URITooLong)

log = logging.getLogger("nextword")

RECV_BYTES = 64 * 1024  # one recv() per readable event; the loop comes back for more
REASONS = {400: "Bad Request", 408: "Request Timeout", 413: "Content Too Large", 414: "URI Too Long",
           417: "Expectation Failed", 431: "Request Header Fields Too Large", 500: "Internal Server Error",
           501: "Not Implemented"}


class _Incomplete(Exception):
    """The bytes received so far end before the request does."""


class _Buffered(Unreader):
    """gunicorn's parser reading from bytes already received; asking for more raises `_Incomplete`."""

    def __init__(self, data: bytes):
        super().__init__()
        self._data = data

    def chunk(self, size_hint=None):
        if self._data is None:
            raise _Incomplete()
        data, self._data = self._data, None
        return data


def rejection(exc: BaseException) -> ServiceError:
    """The service error for something gunicorn's HTTP parser raised."""
    if isinstance(exc, http_errors.LimitRequestLine):
        return URITooLong(f"request line too long: {exc}")
    if isinstance(exc, http_errors.LimitRequestHeaders):
        return HeadersTooLarge(f"request headers too large: {exc}")
    if isinstance(exc, http_errors.UnsupportedTransferCoding):
        return TransferCodingNotImplemented(f"unsupported transfer coding {exc}; send chunked or Content-Length")
    if isinstance(exc, http_errors.ExpectationFailed):
        return ExpectationFailed(f"unsupported expectation {exc}")
    if isinstance(exc, http_errors.ParseException):
        return MalformedRequest(f"malformed HTTP request: {type(exc).__name__}: {exc}"[:300])
    return InternalError("internal error while reading the request")


def error_bytes(error: ServiceError) -> bytes:
    """A complete HTTP/1.1 response carrying `error` as the service's JSON error body; the connection closes.
    The request never reached the app, so its X-Request-ID is a fresh one."""
    body = json.dumps(error.to_dict()).encode()
    head = (f"HTTP/1.1 {error.status} {REASONS.get(error.status, 'Error')}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nX-Request-ID: {uuid.uuid4().hex}\r\nConnection: close\r\n\r\n")
    return head.encode("latin-1") + body


class _Reading:
    """Where one connection stands while its request arrives."""

    __slots__ = ("inbox", "deadline", "head_len", "body_length", "chunked", "continued", "next_chunked_check")

    def __init__(self, data: bytes, timeout: float):
        self.inbox = bytearray(data)
        self.deadline = time.monotonic() + timeout  # for the head; reset for the body once the head is in
        self.head_len = 0  # 0 until the head has been parsed
        self.body_length = 0  # Content-Length (0 without a body), unused when chunked
        self.chunked = False
        self.continued = False  # 100 Continue sent
        self.next_chunked_check = 0


class BufferingWorker(ThreadWorker):
    """gthread with requests read in the event loop; see the module docstring."""

    def init_process(self):
        settings = Settings.from_env()
        self.read_timeout = settings.request_read_timeout_s
        self.max_body = settings.max_body_bytes
        self.reading: dict[TConn, _Reading] = {}
        super().init_process()

    # -- connections come in: read them here, not in a thread -----------------------------------------------------

    def accept(self, listener):
        if self.cfg.is_ssl:  # the TLS handshake needs a blocking socket: plain gthread
            return super().accept(listener)
        try:
            sock, addr = listener.accept()
        except OSError as e:
            if e.errno not in (errno.EAGAIN, errno.ECONNABORTED, errno.EWOULDBLOCK):
                raise
            return
        self.nr_conns += 1
        conn = TConn(self.cfg, sock, addr, listener.getsockname())  # non-blocking from here
        self._start_reading(conn, b"")

    def on_client_socket_readable(self, conn, client):
        """A kept-alive connection has the next request's first bytes."""
        self.poller.unregister(client)
        self.keepalived_conns.remove(conn)
        self._start_reading(conn, b"")

    def finish_request(self, conn, fs):
        """A request is answered. Bytes of a pipelined next request go back to the loop, never to a thread."""
        keepalive = not fs.cancelled() and fs.exception() is None and fs.result() is True
        leftover = conn.parser.unreader.take_buffered() if keepalive and conn.parser is not None else b""
        if leftover:
            self._start_reading(conn, leftover)
            return
        super().finish_request(conn, fs)

    def murder_pending(self):
        """Called by gunicorn's loop about once a second: requests past their deadline get 408; once the worker is
        stopping, idle connections are closed at once instead of holding the graceful shutdown up."""
        super().murder_pending()
        now = time.monotonic()
        for conn, state in list(self.reading.items()):
            if not self.alive and not state.inbox:  # stopping: a connection that began no request is just closed
                self._drop(conn)
            elif now >= state.deadline:
                part = "body" if state.head_len else "head"
                self._reject(conn, RequestTimeout(f"the request {part} did not arrive within {self.read_timeout:g} s"),
                             silent=not state.inbox)

    def handle_error(self, req, client, addr, exc):
        """An error a thread meets before the app answers: the JSON error format, never gunicorn's HTML page."""
        error = rejection(exc)
        if isinstance(error, InternalError):
            log.error("error handling request", exc_info=exc)
        else:
            logs.log_event(log, "request rejected", level=logging.WARNING, status=error.status, code=error.code,
                           client=(addr or ("",))[0], reason=str(exc)[:200])
        metrics.ERRORS.labels(code=error.code).inc()
        try:
            client.setblocking(False)
            client.send(error_bytes(error))
        except OSError:
            pass

    # -- the reading state ------------------------------------------------------------------------------------------

    def _start_reading(self, conn: TConn, data: bytes) -> None:
        conn.sock.setblocking(False)
        conn.parser = None
        self.reading[conn] = _Reading(data, self.read_timeout)
        self.poller.register(conn.sock, selectors.EVENT_READ, partial(self._on_readable, conn))
        if data:
            self._examine(conn)

    def _on_readable(self, conn: TConn, _sock) -> None:
        state = self.reading.get(conn)
        if state is None:
            return
        try:
            data = conn.sock.recv(RECV_BYTES)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self._drop(conn)
            return
        if not data:  # the client went away before finishing its request
            self._drop(conn)
            return
        state.inbox += data
        self._examine(conn)

    def _examine(self, conn: TConn) -> None:
        """Submit the connection to a thread if its request is complete; reject it if it can never be served."""
        state = self.reading[conn]
        try:
            if not state.head_len:
                self._parse_head(conn, state)
                if not state.head_len:
                    return
            if state.chunked:
                complete = self._chunked_complete(state)
            else:
                complete = len(state.inbox) >= state.head_len + state.body_length
        except ServiceError as error:
            self._reject(conn, error)
            return
        if complete:
            self._submit(conn, state)

    def _parse_head(self, conn: TConn, state: _Reading) -> None:
        source = _Buffered(bytes(state.inbox))
        try:
            req = Request(self.cfg, source, conn.client, 1)
        except _Incomplete:
            return
        except Exception as e:  # noqa: BLE001 - gunicorn's parse errors, answered as JSON
            raise rejection(e) from None
        state.head_len = len(state.inbox) - len(source.buf.getvalue())
        state.deadline = time.monotonic() + self.read_timeout
        reader = req.body.reader
        state.chunked = not hasattr(reader, "length")
        if not state.chunked:
            state.body_length = reader.length
            if state.body_length > self.max_body:
                raise PayloadTooLarge(f"request body exceeds {self.max_body} bytes")
        state.next_chunked_check = state.head_len
        if req._expected_100_continue and not state.continued:
            state.continued = True
            try:
                conn.sock.send(b"HTTP/1.1 100 Continue\r\n\r\n")
            except OSError:
                pass

    def _chunked_complete(self, state: _Reading) -> bool:
        """Parse the chunked body received so far (when it may have ended, or has grown a lot); 413 past the limit."""
        received = len(state.inbox)
        if not state.inbox.endswith(b"\r\n\r\n") and received < state.next_chunked_check:
            return False
        state.next_chunked_check = max(2 * received, state.head_len + self.max_body)
        source = _Buffered(bytes(state.inbox))
        try:
            req = Request(self.cfg, source, None, 1)
            size = 0
            for piece in req.body.reader.parser:  # the decoded chunks as they parse, trailers last
                size += len(piece)
                if size > self.max_body:
                    raise PayloadTooLarge(f"request body exceeds {self.max_body} bytes")
            return True
        except _Incomplete:
            return False
        except ServiceError:
            raise
        except Exception as e:  # noqa: BLE001 - bad chunk framing
            raise rejection(e) from None

    def _submit(self, conn: TConn, state: _Reading) -> None:
        """The whole request is in memory: a thread parses it from there and never waits on the socket."""
        self._forget(conn)
        conn.parser = RequestParser(self.cfg, conn.sock, conn.client)
        conn.parser.unreader.unread(bytes(state.inbox))
        conn.data_ready = True
        if state.continued:  # answered already; gunicorn's wsgi layer must not send a second one
            conn.parser = _NoContinueParser(conn.parser)
        self.enqueue_req(conn)

    def _reject(self, conn: TConn, error: ServiceError, silent: bool = False) -> None:
        """Answer `error` (unless the connection never sent a byte) and close."""
        state = self._forget(conn)
        if not silent:
            logs.log_event(log, "request rejected", status=error.status, code=error.code,
                           client=conn.client[0] if isinstance(conn.client, tuple) else "",
                           received_bytes=len(state.inbox) if state else 0)
            metrics.ERRORS.labels(code=error.code).inc()
            try:
                conn.sock.send(error_bytes(error))  # small enough for an empty socket buffer; best effort
            except OSError:
                pass
        self.nr_conns -= 1
        conn.close()

    def _drop(self, conn: TConn) -> None:
        self._forget(conn)
        self.nr_conns -= 1
        conn.close()

    def _forget(self, conn: TConn) -> _Reading | None:
        try:
            self.poller.unregister(conn.sock)
        except (KeyError, ValueError, OSError):
            pass
        return self.reading.pop(conn, None)


class _NoContinueParser:
    """Wraps a parser so its requests do not send `100 Continue` again (the event loop already did)."""

    def __init__(self, parser: RequestParser):
        self._parser = parser

    def __getattr__(self, name):
        return getattr(self._parser, name)

    def __iter__(self):
        return self

    def __next__(self):
        req = next(self._parser)
        req._expected_100_continue = False
        return req
