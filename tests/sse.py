"""Reads Server-Sent Events from a live HTTP response the way a browser's EventSource (or `curl -N`) does.

Bytes are parsed as they arrive (no buffering to the end of the body): lines end with CRLF, LF or CR,
`event:`/`data:`/`id:` fields accumulate, `:` lines are comments, and a blank line dispatches the
event. Each event records `arrived`, the `time.perf_counter()` at which its closing blank line was
read, so a test can tell a stream (events spread over the generation) from a buffered body (every
event at once).

    with open_stream(url + f"/sessions/{sid}/generate", {"max_tokens": 8}) as response:
        for event in SSEReader(response):
            print(event.event, event.json(), event.arrived)
"""

from __future__ import annotations

import codecs
import json
import time
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import requests

SSE = "text/event-stream"


@dataclass
class Event:
    event: str  # "message" when the stream named no type, as in EventSource
    data: str  # the data lines joined by "\n"
    id: str | None
    arrived: float  # time.perf_counter() when the blank line that ends the event was read

    def json(self):
        return json.loads(self.data)


class SSEReader:
    """Iterates the events of a streaming `requests` response (opened with stream=True), or of any
    iterable of byte chunks (a Flask test response's `.response` with buffered=False)."""

    def __init__(self, source: requests.Response | Iterable[bytes]):
        self.source = source
        self.events: list[Event] = []  # every event dispatched so far, in order
        self._decoder = codecs.getincrementaldecoder("utf-8")()
        self._line = ""
        self._after_cr = False  # the last chunk ended with CR: a leading LF in the next one is the same line end
        self._type, self._data, self._id = "", [], None
        self._first_line = True

    def __iter__(self) -> Iterator[Event]:
        # chunk_size=None: yield whatever the socket delivers (each chunk of a chunked body) as it comes
        chunks = self.source.iter_content(chunk_size=None) if hasattr(self.source, "iter_content") else self.source
        for chunk in chunks:
            yield from self._feed(self._decoder.decode(chunk))
        yield from self._feed(self._decoder.decode(b"", final=True))
        # An event without its closing blank line at the end of the stream is dropped, as EventSource does.

    def _feed(self, text: str) -> Iterator[Event]:
        for ch in text:
            if self._after_cr:
                self._after_cr = False
                if ch == "\n":
                    continue
            if ch in "\r\n":
                self._after_cr = ch == "\r"
                event = self._line_done(self._line)
                self._line = ""
                if event is not None:
                    self.events.append(event)
                    yield event
            else:
                self._line += ch

    def _line_done(self, line: str) -> Event | None:
        if self._first_line:
            self._first_line = False
            line = line.removeprefix("\ufeff")
        if line == "":  # dispatch
            if not self._data:
                self._type = ""
                return None
            event = Event(self._type or "message", "\n".join(self._data), self._id, time.perf_counter())
            self._type, self._data = "", []
            return event
        if line.startswith(":"):  # comment (keep-alive)
            return None
        name, colon, value = line.partition(":")
        if colon and value.startswith(" "):
            value = value[1:]
        if name == "event":
            self._type = value
        elif name == "data":
            self._data.append(value)
        elif name == "id" and "\x00" not in value:
            self._id = value
        return None  # "retry" and unknown fields are ignored here


def open_stream(url: str, body: dict, headers: dict | None = None, timeout: float = 30) -> requests.Response:
    """POSTs body as JSON asking for text/event-stream; returns the unread streaming response."""
    return requests.post(url, json=body, headers={"Accept": SSE, **(headers or {})}, stream=True, timeout=timeout)


def read_events(url: str, body: dict, headers: dict | None = None, timeout: float = 30) -> list[Event]:
    """The whole stream's events (the response must be an event stream)."""
    with open_stream(url, body, headers, timeout) as response:
        assert response.status_code == 200, response.text
        assert response.headers["Content-Type"].startswith(SSE), response.headers
        return list(SSEReader(response))
