"""How a worker process gives memory back after a burst: glibc malloc's settings, and trimming its heaps once a
burst is over. Knows nothing of HTTP, models or Redis; does nothing where the C library is not glibc.

What held the memory after the outside probe's burst (docs/limits.md has the figures):
- glibc's dynamic mmap threshold. A block above the threshold (128 KiB at start) is mmap'ed and unmapped when
  freed, but each such free raises the threshold to that block's size (up to 32 MiB): after the first batch,
  vocabulary-sized rows, whole model outputs and answers come from the heap, whose top alone can be given back.
  Setting M_MMAP_THRESHOLD fixes it (and turns the dynamic rule off), so large blocks always go back at once.
- one heap (arena) per thread that allocates, up to 8 per core: with dozens of request threads, a burst leaves
  memory spread over many arenas. M_ARENA_MAX bounds them.
- freed small blocks in the middle of a heap, which glibc gives back only on `malloc_trim`: `Trimmer` calls it
  once the worker has been quiet for a moment after a burst (it walks every heap: too slow for every request).
"""

from __future__ import annotations

import ctypes
import ctypes.util
import logging
import threading
import time

from service.offload import offloader

log = logging.getLogger(__name__)

M_TRIM_THRESHOLD, M_MMAP_THRESHOLD, M_ARENA_MAX = -1, -3, -8  # glibc's mallopt parameters (malloc.h)
MMAP_THRESHOLD = 128 * 1024  # glibc's own initial value, kept fixed: a vocabulary row (133 KB for 33k words) is mmap'ed
TRIM_THRESHOLD = 1024 * 1024  # free memory at a heap's top beyond this goes back to the system at once
ARENA_MAX = 4  # heaps shared by all threads; more only helps threads that allocate all the time (the scheduler)
TRIM_AFTER_S = 2.0  # quiet time after a burst before malloc_trim
TRIM_AT_LEAST_EVERY_S = 30.0  # under steady load (never quiet), trim this often anyway


def _glibc():
    name = ctypes.util.find_library("c")
    try:
        libc = ctypes.CDLL(name)
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it
        return libc
    except (OSError, AttributeError, TypeError):
        return None


def configure() -> bool:
    """Sets glibc's malloc parameters for this process (call it early in each worker); False where not glibc."""
    libc = _glibc()
    if libc is None:
        return False
    ok = all(libc.mallopt(param, value) == 1 for param, value in (
        (M_MMAP_THRESHOLD, MMAP_THRESHOLD), (M_TRIM_THRESHOLD, TRIM_THRESHOLD), (M_ARENA_MAX, ARENA_MAX)))
    if not ok:
        log.warning("glibc refused a malloc setting; memory may stay high after bursts")
    return ok


_trimmer: Trimmer | None = None
_trimmer_lock = threading.Lock()


def trimmer() -> Trimmer:
    """This process's Trimmer, started on first use (one per worker, however many apps a process builds)."""
    global _trimmer
    with _trimmer_lock:
        if _trimmer is None:
            _trimmer = Trimmer()
        return _trimmer


class Trimmer:
    """Gives freed heap memory back (`malloc_trim(0)`) once the process has been quiet `TRIM_AFTER_S` after work
    was noted (`note()`, cheap: it sets a flag), or `TRIM_AT_LEAST_EVERY_S` into steady work. One daemon thread (a
    greenlet under gevent, whose trim then runs on a native thread); an idle worker is not trimmed again."""

    def __init__(self, quiet_s: float = TRIM_AFTER_S):
        self._libc = _glibc()
        self._native = offloader()
        self._quiet_s = quiet_s
        self._noted = threading.Event()
        self._stop = threading.Event()
        self._thread = None
        if self._libc is not None:
            self._thread = threading.Thread(target=self._run, name="malloc-trim", daemon=True)
            self._thread.start()

    def note(self) -> None:
        self._noted.set()

    def close(self) -> None:
        self._stop.set()
        self._noted.set()

    def _run(self) -> None:
        while not self._stop.is_set():
            self._noted.wait()
            busy_since = time.monotonic()
            while self._noted.is_set() and not self._stop.is_set():  # wait for a quiet moment
                if time.monotonic() - busy_since > TRIM_AT_LEAST_EVERY_S:
                    break
                self._noted.clear()
                self._stop.wait(self._quiet_s)
            if not self._stop.is_set():
                self._native(self._libc.malloc_trim, 0)  # walks every heap: on a native thread, off the event loop
