"""The gunicorn worker class nextword runs: gunicorn's gevent worker, with every request read whole, under a
deadline, before the app sees it.

Every connection is a greenlet (gevent's StreamServer; the worker monkey-patches sockets, `threading` and `queue`),
so a client that trickles bytes holds a greenlet, not a thread, and `/healthz` stays served however many connections
are open. On top of gevent's worker this class:

- waits for a request's first byte at most NEXTWORD_REQUEST_READ_TIMEOUT_S on a new connection and gunicorn's
  `keepalive` on a kept-alive one, then closes without an answer (no request began);
- reads the head within NEXTWORD_REQUEST_READ_TIMEOUT_S of its first byte and the body within as long again, else
  408; the app only ever gets a complete request whose body is in memory;
- refuses a body over NEXTWORD_MAX_BODY_BYTES at once: by its Content-Length, or as soon as the chunk sizes
  declared or received pass it (413);
- refuses transfer codings other than chunked (501) and content codings other than identity (415);
- answers what gunicorn's parser rejects (400, 414, 417, 431) in the service's JSON error format;
- bounds every socket send by NEXTWORD_SEND_TIMEOUT_S, so a client that stops reading a stream is cut off;
- on SIGTERM closes its listening sockets and idle kept-alive connections at once (the kernel then refuses new
  connections) and lets requests and streams in flight finish within `graceful_timeout`.

Every rejection carries `Connection: close`. Knows sockets, gunicorn's parser and the error table; not Flask, the
engine or Redis.
"""

from __future__ import annotations

import io
import logging
import time
import uuid
from functools import partial

import gevent
import orjson
from gevent.pool import Pool
from gevent.server import StreamServer
from gevent.socket import wait_read
from gunicorn import util
from gunicorn.http import errors as http_errors
from gunicorn.http import wsgi
from gunicorn.http.body import Body, ChunkedReader, LengthReader
from gunicorn.http.parser import RequestParser
from gunicorn.http.unreader import Unreader
from gunicorn.http.wsgi import Response
from gunicorn.workers.ggevent import GeventWorker

from service import logs, metrics
from service.config import Settings
from service.errors import InternalError, ServiceError
from service.http import errors
from service.http.protocol import (ExpectationFailed, HeadersTooLarge, MalformedRequest, PayloadTooLarge,
                                   RequestTimeout, TransferCodingNotImplemented, UnsupportedMediaType, URITooLong)

log = logging.getLogger("nextword")

REASONS = {400: "Bad Request", 408: "Request Timeout", 413: "Content Too Large", 414: "URI Too Long",
           415: "Unsupported Media Type", 417: "Expectation Failed", 431: "Request Header Fields Too Large",
           500: "Internal Server Error", 501: "Not Implemented"}


def rejection(exc: BaseException) -> ServiceError:
    """The service error for something gunicorn's HTTP parser raised."""
    if isinstance(exc, ServiceError):
        return exc
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
    body = orjson.dumps(errors.native_body(error))
    status = errors.status(error)
    extra = "".join(f"{name}: {value}\r\n" for name, value in errors.headers(error).items())
    head = (f"HTTP/1.1 {status} {REASONS.get(status, 'Error')}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nX-Request-ID: {uuid.uuid4().hex}\r\n{extra}Connection: close\r\n\r\n")
    return head.encode("latin-1") + body


class _InMemory(Unreader):
    """A body already read off the socket, for the app's `wsgi.input`."""

    def __init__(self, data: bytes):
        super().__init__()
        self._data = data

    def chunk(self, size_hint=None):
        data, self._data = self._data, b""
        return data


class _LimitedChunkedReader(ChunkedReader):
    """gunicorn's chunked reader that raises 413 as soon as the chunk sizes declared so far pass `limit`."""

    def __init__(self, req, unreader, limit: int):
        self.limit, self.declared = limit, 0
        super().__init__(req, unreader)

    def parse_chunk_size(self, unreader, data=None):
        size, rest = super().parse_chunk_size(unreader, data)
        self.declared += size
        if self.declared > self.limit:
            raise PayloadTooLarge(f"request body exceeds {self.limit} bytes")
        return size, rest


class OneWriteResponse(Response):
    """gunicorn's response, its head sent with the first body bytes in one write (one system call and one TCP
    segment for a small JSON answer, where gunicorn makes two)."""

    _head = b""

    def send_headers(self):
        if self.headers_sent:
            return
        lines = self.default_headers() + [f"{name}: {value}\r\n" for name, value in self.headers]
        self._head = ("".join(lines) + "\r\n").encode("latin-1")
        self.headers_sent = True

    def _emit_body(self, data):
        head, self._head = self._head, b""
        if self.chunked:
            data = b"%X\r\n%s\r\n" % (len(data), data)
        self.sock.sendall(head + data)

    def close(self):
        self.send_headers()
        if self._head:  # a response without body bytes
            head, self._head = self._head, b""
            self.sock.sendall(head + (b"0\r\n\r\n" if self.chunked else b""))
        elif self.chunked:
            util.write_chunk(self.sock, b"")


class GreenletWorker(GeventWorker):
    """gunicorn's gevent worker with whole requests read under deadlines; see the module docstring."""

    def init_process(self):
        settings = Settings.from_env()
        self.read_timeout = settings.request_read_timeout_s
        self.send_timeout = settings.send_timeout_s
        self.max_body = settings.max_body_bytes
        self._servers: list[StreamServer] = []
        self._idle: set[gevent.Greenlet] = set()  # connections waiting for their next request's first byte
        super().init_process()

    # -- the listening side ---------------------------------------------------------------------------------------

    def run(self):
        for listener in self.sockets:
            listener.setblocking(1)
            server = StreamServer(listener, handle=partial(self.handle, listener), spawn=Pool(self.worker_connections))
            if self.cfg.workers > 1:
                server.max_accept = 1  # take one connection per wake-up, so the workers share them
            server.start()
            self._servers.append(server)
        while self.alive:
            self.notify()
            gevent.sleep(1.0)
        self._stop_accepting()
        deadline = time.monotonic() + self.cfg.graceful_timeout
        while any(s.pool.free_count() != s.pool.size for s in self._servers):
            if time.monotonic() >= deadline:
                log.warning("graceful timeout: closing the requests still in flight")
                for server in self._servers:
                    server.stop(timeout=1)
                return
            self.notify()
            gevent.sleep(0.1)

    def handle_exit(self, sig, frame):
        """SIGTERM (run in a greenlet: gevent's signal handling): stop taking connections now, not at the next
        second of the run loop, so none queues on a socket that no one will accept from."""
        super().handle_exit(sig, frame)
        gevent.spawn(self._stop_accepting)

    def _stop_accepting(self) -> None:
        for server in self._servers:
            server.close()
        gevent.killall(list(self._idle), block=False)

    # -- one connection -------------------------------------------------------------------------------------------

    def handle(self, listener, client, addr):
        client.settimeout(self.send_timeout)  # every blocking send and recv is bounded
        parser = RequestParser(self.cfg, client, addr)
        name = listener.getsockname()
        first_byte_within = self.read_timeout
        try:
            while self._request_begins(parser, client, first_byte_within):
                req = self._read_request(parser, client)
                self.handle_request(name, req, client, addr)  # raises StopIteration when the connection must close
                first_byte_within = self.cfg.keepalive
        except StopIteration:  # the response asked to close, or the client closed between requests
            pass
        except (http_errors.NoMoreData, gevent.GreenletExit):
            pass
        except OSError:  # reset, broken pipe or a send past its timeout: nobody left to answer
            pass
        except Exception as e:  # noqa: BLE001 - a request that cannot be served: answered as JSON
            self.handle_error(None, client, addr, e)
        finally:
            util.close(client)

    def handle_request(self, listener_name, req, sock, addr):
        """One request through the app, its answer written with `OneWriteResponse`; raises StopIteration when the
        connection must close. gunicorn's own version, less its access log (the app logs each request itself)."""
        environ, resp = {}, None
        try:
            self.cfg.pre_request(self, req)
            resp, environ = wsgi.create(req, sock, addr, listener_name, self.cfg, response_class=OneWriteResponse)
            environ["wsgi.multithread"] = True
            self.nr += 1
            if self.nr >= self.max_requests and self.alive:
                log.info("restarting the worker after its max_requests")
                self.alive = False
            if not self.alive or not self.cfg.keepalive:
                resp.force_close()
            body = self.wsgi(environ, resp.start_response)
            try:
                for piece in body:
                    resp.write(piece)
                resp.close()
            finally:
                if hasattr(body, "close"):
                    body.close()
            if resp.should_close():
                raise StopIteration()
        except StopIteration:
            raise
        except Exception as e:
            if resp is None or not resp.headers_sent:
                raise  # nothing written yet: answered as a JSON error by handle()
            if not isinstance(e, OSError):
                log.error("error while writing an answer", exc_info=e)
            raise StopIteration() from None  # part of an answer is out: nothing to add, the connection closes
        finally:
            self.cfg.post_request(self, req, environ, resp)

    def _request_begins(self, parser: RequestParser, client, within: float) -> bool:
        """Whether a request's first byte is here (pipelined bytes already read count) before `within` s pass."""
        if not self.alive:
            return False
        buffered = parser.unreader.buf
        if buffered.seek(0, io.SEEK_END):
            return True
        current = gevent.getcurrent()
        self._idle.add(current)
        try:
            wait_read(client.fileno(), timeout=within)
            return True
        except TimeoutError:
            return False
        finally:
            self._idle.discard(current)

    def _read_request(self, parser: RequestParser, client):
        """The next request, head and body read whole under their deadlines; raises a ServiceError to refuse it."""
        try:
            with gevent.Timeout(self.read_timeout, RequestTimeout(
                    f"the request head did not arrive within {self.read_timeout:g} s")):
                req = next(parser)
        except (StopIteration, ServiceError, http_errors.NoMoreData):
            raise
        except Exception as e:  # noqa: BLE001 - gunicorn's parse errors
            raise rejection(e) from None
        self._check_codings(req)
        if isinstance(req.body.reader, ChunkedReader):
            req.body = Body(_LimitedChunkedReader(req, parser.unreader, self.max_body))
        elif req.body.reader.length > self.max_body:
            raise PayloadTooLarge(f"request body exceeds {self.max_body} bytes")
        if req._expected_100_continue:
            client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
            req._expected_100_continue = False  # answered: gunicorn's wsgi layer must not send a second one
        body = bytearray()  # at most max_body: a Content-Length or the chunk sizes announced were checked above
        try:
            with gevent.Timeout(self.read_timeout, RequestTimeout(
                    f"the request body did not arrive within {self.read_timeout:g} s")):
                while piece := req.body.read(64 * 1024):
                    body += piece
        except (ServiceError, http_errors.NoMoreData):
            raise
        except Exception as e:  # noqa: BLE001 - bad chunk framing
            raise rejection(e) from None
        req.body = Body(LengthReader(_InMemory(bytes(body)), len(body)))
        return req

    @staticmethod
    def _check_codings(req) -> None:
        for name, value in req.headers:
            codings = [c.strip().lower() for c in value.split(",") if c.strip()]
            if name == "TRANSFER-ENCODING" and any(c != "chunked" for c in codings):
                raise TransferCodingNotImplemented(f"unsupported transfer coding {value!r}; send chunked or "
                                                   "Content-Length")
            if name == "CONTENT-ENCODING" and any(c != "identity" for c in codings):
                raise UnsupportedMediaType(f"content coding {value!r} is not supported; send the body uncompressed",
                                           headers={"Accept-Encoding": "identity"})

    def handle_error(self, req, client, addr, exc):
        """A request that cannot be served, answered in the JSON error format, never gunicorn's HTML page."""
        error = rejection(exc)
        if isinstance(error, InternalError):
            log.error("error handling request", exc_info=exc)
        else:
            logs.log_event(log, "request rejected", level=logging.WARNING, status=errors.status(error), code=error.code,
                           client=(addr or ("",))[0], reason=error.message[:200])
        metrics.ERRORS.labels(code=error.code).inc()
        try:
            client.sendall(error_bytes(error))
        except OSError:
            pass
