"""Runs one bundle's ONNX graph with onnxruntime, batching concurrent steps. Knows nothing of HTTP,
Redis or words.

A step is (tokens (seq,), state (tensors, layers, hidden)) -> (log_probs (vocab,), new state).
Callers on many threads submit steps; one scheduler thread per model takes everything queued,
groups rows of equal length (single-token steps of different sessions always batch), and runs each
group as one onnxruntime call with the rows stacked along the batch axis. Nothing waits for peers
unless `batch_wait_ms` > 0: a step that arrives while a batch runs joins the next one, so batching
grows with load and costs nothing when idle.
"""

from __future__ import annotations

import ctypes
import logging
import queue
import threading
import time
from concurrent.futures import Future
from dataclasses import dataclass, field

import numpy as np
import onnxruntime as ort

from service import metrics
from service.bundle import Bundle, BundleError
from service.errors import ModelUnavailable, Overloaded

log = logging.getLogger(__name__)

CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"


class RuntimeStartError(Exception):
    """The requested execution provider cannot start; names the setting to change."""


def _cuda_driver_present() -> bool:
    """onnxruntime-gpu lists CUDA as available even without a GPU; the driver library tells."""
    try:
        ctypes.CDLL("libcuda.so.1")
        return True
    except OSError:
        return False


def providers_for(device: str) -> list[str]:
    if device == "cpu":
        return [CPU]
    if device == "cuda":
        if CUDA not in ort.get_available_providers():
            raise RuntimeStartError("NEXTWORD_DEVICE=cuda but this onnxruntime build has no CUDA provider "
                                    "(install onnxruntime-gpu)")
        return [CUDA, CPU]
    return [CUDA, CPU] if CUDA in ort.get_available_providers() and _cuda_driver_present() else [CPU]


def open_session(bundle: Bundle, device: str, threads: int) -> ort.InferenceSession:
    ort.disable_telemetry_events()  # a serving process phones nowhere
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    opts.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    opts.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(bundle.onnx_path), opts, providers=providers_for(device))
    except RuntimeStartError:
        raise
    except Exception as e:  # onnxruntime raises its own Fail/InvalidGraph types
        raise BundleError(f"{bundle.onnx_path}: onnxruntime cannot load it ({e})") from None
    used = session.get_providers()[0]  # what actually runs, not what is installed
    if device == "cuda" and used != CUDA:
        raise RuntimeStartError(f"NEXTWORD_DEVICE=cuda but CUDA could not start for {bundle.name} "
                                f"(onnxruntime fell back to {used}); use NEXTWORD_DEVICE=auto or cpu")
    _check_graph(bundle, session)
    return session


def _check_graph(bundle: Bundle, session: ort.InferenceSession) -> None:
    tensors, layers, hidden = bundle.state_shape
    want = {"tokens": [None, None], "log_probs": [None, bundle.vocab_size]}
    for i, o in bundle.state_pairs:
        want[i] = want[o] = [layers, None, hidden]
    got = {a.name: a.shape for a in [*session.get_inputs(), *session.get_outputs()]}
    if set(got) != set(want):
        raise BundleError(f"{bundle.onnx_path}: graph inputs/outputs {sorted(got)} differ from manifest.json's "
                          f"{sorted(want)}")
    for name, dims in want.items():
        shape = got[name]
        if len(shape) != len(dims) or any(w is not None and g != w for g, w in zip(shape, dims)) or any(
                w is None and isinstance(g, int) for g, w in zip(shape, dims)):
            raise BundleError(f"{bundle.onnx_path}: {name!r} has shape {shape}; manifest.json implies "
                              f"{['dynamic' if w is None else w for w in dims]}")


@dataclass(eq=False)
class _Step:
    tokens: np.ndarray  # (seq,) int64
    state: np.ndarray  # (tensors, layers, hidden) float32
    future: Future = field(default_factory=Future)
    queued_at: float = field(default_factory=time.perf_counter)


class ModelRuntime:
    """One bundle's onnxruntime session plus the scheduler thread that batches its steps."""

    def __init__(self, bundle: Bundle, device: str = "auto", threads: int = 1, batch_max: int = 64,
                 batch_wait_ms: float = 0.0, max_queue: int = 4096):
        self.bundle = bundle
        self.session = open_session(bundle, device, threads)
        self.provider = self.session.get_providers()[0]
        self.batch_max = batch_max
        self.batch_wait = batch_wait_ms / 1000.0
        self.max_queue = max_queue
        self._inputs = ["tokens", *[i for i, _ in bundle.state_pairs]]
        self._outputs = ["log_probs", *[o for _, o in bundle.state_pairs]]
        self._queue: queue.Queue[_Step | None] = queue.Queue()
        self._thread = threading.Thread(target=self._loop, name=f"batcher-{bundle.name}", daemon=True)
        self._thread.start()
        metrics.MODEL_INFO.labels(model=bundle.name, version=bundle.digest[:12],
                                  architecture=bundle.manifest["architecture"],
                                  provider=self.provider.removesuffix("ExecutionProvider")).set(1)

    def zero_state(self) -> np.ndarray:
        return np.zeros(self.bundle.state_shape, dtype=np.float32)  # (tensors, layers, hidden)

    def step(self, tokens: np.ndarray, state: np.ndarray | None = None, timeout: float = 60.0):
        """Feeds tokens (seq,) after state; returns (log_probs (vocab,), new state (tensors, layers, hidden))."""
        if self._queue.qsize() >= self.max_queue:
            raise Overloaded(f"model {self.bundle.name} has {self.max_queue} steps queued; retry shortly",
                             headers={"Retry-After": "1"})
        item = _Step(np.ascontiguousarray(tokens, dtype=np.int64), self.zero_state() if state is None else state)
        self._queue.put(item)
        return item.future.result(timeout=timeout)

    def run_batch(self, tokens: np.ndarray, states: np.ndarray):
        """One onnxruntime call: tokens (batch, seq), states (tensors, layers, batch, hidden)."""
        feed = {"tokens": tokens, **{name: states[i] for i, name in enumerate(self._inputs[1:])}}
        started = time.perf_counter()
        log_probs, *new = self.session.run(self._outputs, feed)  # (batch, vocab), (layers, batch, hidden)...
        metrics.MODEL_STEP_LATENCY.labels(model=self.bundle.name).observe(time.perf_counter() - started)
        metrics.BATCH_SIZE.labels(model=self.bundle.name).observe(tokens.shape[0])
        return log_probs, np.stack(new)  # (batch, vocab), (tensors, layers, batch, hidden)

    def close(self) -> None:
        self._queue.put(None)
        self._thread.join(timeout=5)

    def _take(self) -> list[_Step] | None:
        first = self._queue.get()
        if first is None:
            return None
        items = [first]
        deadline = time.perf_counter() + self.batch_wait
        while len(items) < self.batch_max:
            try:
                remaining = deadline - time.perf_counter()
                nxt = self._queue.get(timeout=remaining) if remaining > 0 else self._queue.get_nowait()
            except queue.Empty:
                break
            if nxt is None:
                self._queue.put(None)
                break
            items.append(nxt)
        return items

    def _loop(self) -> None:
        pending: list[_Step] = []
        while True:
            if not pending:
                taken = self._take()
                if taken is None:
                    return
                pending = taken
            else:  # leftovers of the last turn, joined by whatever arrived meanwhile
                try:
                    while len(pending) < 4 * self.batch_max:
                        nxt = self._queue.get_nowait()
                        if nxt is None:
                            self._queue.put(None)
                            break
                        pending.append(nxt)
                except queue.Empty:
                    pass
            # Rows of equal length run together; the rest wait for the next turn (in arrival order).
            seq = len(pending[0].tokens)
            group = [p for p in pending if len(p.tokens) == seq][: self.batch_max]
            chosen = {id(p) for p in group}
            pending = [p for p in pending if id(p) not in chosen]
            self._run_group(group)

    def _run_group(self, group: list[_Step]) -> None:
        now = time.perf_counter()
        for item in group:
            metrics.BATCH_WAIT.labels(model=self.bundle.name).observe(now - item.queued_at)
        try:
            tokens = np.stack([g.tokens for g in group])  # (batch, seq)
            states = np.stack([g.state for g in group], axis=2)  # (tensors, layers, batch, hidden)
            log_probs, new = self.run_batch(tokens, states)
        except Exception as e:  # never let one bad batch kill the scheduler thread
            log.exception("onnxruntime call failed for %s", self.bundle.name)
            for item in group:
                item.future.set_exception(ModelUnavailable(f"model {self.bundle.name} failed to run: "
                                                           f"{type(e).__name__}"))
            return
        for b, item in enumerate(group):
            item.future.set_result((log_probs[b], np.ascontiguousarray(new[:, :, b])))
