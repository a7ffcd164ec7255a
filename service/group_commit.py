"""Group commit: concurrent callers' items processed as one batch on one of the callers' threads. Knows nothing of
sessions, models, Redis or HTTP.

`GroupCommit(process).run(item)` queues the item. If no batch is being processed, the caller leads: it takes
everything queued (its own item first) and calls `process(items)` once for all of them, on its own thread. Callers
that arrive meanwhile wait; when the leader is done, it hands what it did to each of them and passes the lead to
the oldest one still queued, whose batch is everything that arrived during the previous one. Under load, batches
grow by themselves; a lone caller processes its own item at once, with no thread hop and no wait. With
`max_items`, a batch takes the oldest callers whose items fit in it (always at least one caller), and the others
wait for the next: what one batch holds at once (the engine: a distribution per item) stays bounded however many
callers queue.

The engine uses it so that the session steps of concurrent `/predict` requests of one worker cost one pipelined
Redis read, one model call and one pipelined Redis write between them (`Engine._apply`), as a database's group
commit shares one log flush.
"""

from __future__ import annotations

import threading
from collections.abc import Callable


class _Entry:
    __slots__ = ("item", "result", "error", "lead", "_ready")

    def __init__(self, items: list):
        self.item = items  # one caller's items, kept together
        self.result = None
        self.error: BaseException | None = None
        self.lead = False  # woken to process the next batch rather than with a result
        self._ready = threading.Lock()  # held until woken: a one-shot event without a Condition's overhead
        self._ready.acquire()

    def wake(self) -> None:
        self._ready.release()

    def wait(self) -> None:
        self._ready.acquire()


class GroupCommit:
    """Runs `process(items) -> results` (one result per item, in order; a result may be an exception object) over
    the items of concurrent `run` and `run_all` calls."""

    def __init__(self, process: Callable[[list], list], max_items: int | None = None):
        self._process = process
        self._max_items = max_items
        self._lock = threading.Lock()
        self._queue: list[_Entry] = []
        self._leading = False

    def run(self, item):
        """One item: its result (or its error, raised)."""
        result = self.run_all([item])[0]
        if isinstance(result, BaseException):
            raise result
        return result

    def run_all(self, items: list) -> list:
        """Several items of one caller, kept together and in order in one batch: their results, in order (an error
        of the batch as a whole is raised; an item's own error is its result, an exception object)."""
        entry = _Entry(items)
        with self._lock:
            self._queue.append(entry)
            follow, self._leading = self._leading, True
        if follow:
            entry.wait()
            if not entry.lead:
                return self._outcome(entry)
        with self._lock:  # leading: the batch is what is queued (up to max_items), this caller's items first
            batch, self._queue = self._split(self._queue)
        items = [item for e in batch for item in e.item]
        try:
            results = self._process(items)
            if len(results) != len(items):
                raise RuntimeError(f"process returned {len(results)} results for {len(items)} items")
            start = 0
            for e in batch:
                e.result, start = results[start:start + len(e.item)], start + len(e.item)
        except BaseException as e:  # noqa: BLE001 - every caller of the batch gets what it raised
            for waiting in batch:
                waiting.error = e
        with self._lock:
            if self._queue:
                self._queue[0].lead = True
                successor = self._queue[0]
            else:
                successor, self._leading = None, False
        if successor is not None:
            successor.wake()
        for e in batch:
            if e is not entry:
                e.wake()
        return self._outcome(entry)

    def _split(self, queue: list[_Entry]) -> tuple[list[_Entry], list[_Entry]]:
        """(the oldest entries whose items fit in max_items, at least one; the rest)."""
        if self._max_items is None:
            return queue, []
        size, n = len(queue[0].item), 1
        while n < len(queue) and size + len(queue[n].item) <= self._max_items:
            size, n = size + len(queue[n].item), n + 1
        return queue[:n], queue[n:]

    @staticmethod
    def _outcome(entry: _Entry):
        if entry.error is not None:
            raise entry.error
        return entry.result
