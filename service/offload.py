"""Runs CPU-bound native calls (onnxruntime, vectorised sampling) off the event loop. Knows nothing of models.

Under gunicorn's gevent worker the process is monkey-patched: `threading` makes greenlets, and a call that holds the
CPU stalls every connection of the worker for as long as it runs. There `offloader()` returns a function that runs
`fn(*args)` on a thread of gevent's hub threadpool (a native thread: onnxruntime and numpy release the GIL) while the
calling greenlet yields to the others, and hands back what `fn` returned or raised. Without monkey-patching (tests,
tools, a plain thread) it returns a function that calls `fn` in place, since the caller is a native thread already.
"""

from __future__ import annotations

from collections.abc import Callable


def _in_place(fn: Callable, *args):
    return fn(*args)


def offloader() -> Callable:
    """`run(fn, *args)` for this process: on a native thread when gevent has patched `threading`, else in place.
    Call it where the caller's objects are built (after the fork, after the worker patched)."""
    try:
        from gevent import get_hub, monkey
    except ImportError:
        return _in_place
    if not monkey.is_module_patched("threading"):
        return _in_place
    pool = get_hub().threadpool

    def on_native_thread(fn: Callable, *args):
        return pool.apply(fn, args)

    return on_native_thread
