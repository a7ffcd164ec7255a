"""JSON log lines on stderr, one object per line. Knows nothing of HTTP or models.

`log_event(logger, message, **fields)` attaches structured fields; the formatter writes them next
to the timestamp, level, logger name and process id.
"""

from __future__ import annotations

import json
import logging
import os
import sys
import time


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(record.created)) + f".{int(record.msecs):03d}Z",
               "level": record.levelname.lower(), "logger": record.name, "pid": os.getpid(),
               "msg": record.getMessage()}
        out.update(getattr(record, "fields", {}))
        if record.exc_info:
            out["exc"] = self.formatException(record.exc_info)
        return json.dumps(out, default=str)


class LineHandler(logging.StreamHandler):
    """Writes each record as one line with one os.write, without the handler lock.

    The stock handler serialises every writer on a lock around each write, a cost paid once per request line
    (docs/benchmarks.md). A write shorter than PIPE_BUF (4096 bytes) reaches a pipe whole, and any write to a file opened
    with O_APPEND is atomic, so lines do not interleave; only a longer record (a traceback) written to a
    pipe at the same instant as another line could."""

    def __init__(self, stream) -> None:
        super().__init__(stream)
        try:
            self._fd: int | None = stream.fileno()
        except (AttributeError, OSError, ValueError):  # an in-memory stream (a test's capture): the locked path
            self._fd = None

    def handle(self, record: logging.LogRecord) -> bool:
        if self._fd is None:
            return bool(super().handle(record))
        if not self.filter(record):
            return False
        try:
            os.write(self._fd, (self.format(record) + "\n").encode("utf-8", "replace"))
        except Exception:  # noqa: BLE001 - logging must never take the request down
            self.handleError(record)
        return True


def configure(level: str = "info") -> None:
    handler = LineHandler(sys.stderr)
    handler.setFormatter(JsonFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def log_event(logger: logging.Logger, message: str, level: int = logging.INFO, **fields) -> None:
    logger.log(level, message, extra={"fields": fields})
