"""Runs one bundle's ONNX graph with onnxruntime. Knows nothing of queues, HTTP, Redis or words.

One call feeds a batch of rows: tokens (batch, seq) after states (tensors, layers, batch, hidden), and gives the
log-probabilities after the last token of each row plus the new states. The scheduler (service/scheduler.py)
decides what goes into a call; this module only opens the session, has the bundle contract (service/bundle.py) check
the graph's inputs and outputs, and runs it. A call that does not need the distribution (the prefix of a prompt) asks
for the states alone, and onnxruntime then skips the softmax head, the largest part of a small model.
"""

from __future__ import annotations

import ctypes
import logging
import time

import numpy as np
import onnxruntime as ort

from service import metrics
from service.bundle import Bundle, check_graph, refused_by_onnxruntime

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
        raise refused_by_onnxruntime(bundle.onnx_path, e) from None
    used = session.get_providers()[0]  # what actually runs, not what is installed
    if device == "cuda" and used != CUDA:
        raise RuntimeStartError(f"NEXTWORD_DEVICE=cuda but CUDA could not start for {bundle.name} "
                                f"(onnxruntime fell back to {used}); use NEXTWORD_DEVICE=auto or cpu")
    check_graph(bundle, session.get_inputs(), session.get_outputs())  # the bundle contract's expectations
    return session


class ModelRuntime:
    """One bundle's onnxruntime session.

    On CUDA (or with `device_resident=True`, which tests use on the CPU provider) a call's log-probabilities stay
    where the model wrote them, as `service.heads.DeviceRows`: callers read the top k words or sampled tokens
    from them, and a whole row crosses to the host only when one is asked for (application/octet-stream)."""

    def __init__(self, bundle: Bundle, device: str = "auto", threads: int = 1, device_resident: bool | None = None):
        self.bundle = bundle
        self.session = open_session(bundle, device, threads)
        self.provider = self.session.get_providers()[0]
        self.heads = None
        if device_resident if device_resident is not None else self.provider == CUDA:
            from service.heads import Heads

            self.heads = Heads(bundle.vocab_size, self.session.get_providers(),
                               "cuda" if self.provider == CUDA else "cpu", frozenset({bundle.unk}))
        self._inputs = ["tokens", *[i for i, _ in bundle.state_pairs]]
        self._outputs = ["log_probs", *[o for _, o in bundle.state_pairs]]
        self._step_latency = metrics.MODEL_STEP_LATENCY.labels(model=bundle.name)
        self._batch_size = metrics.BATCH_SIZE.labels(model=bundle.name)
        metrics.MODEL_INFO.labels(model=bundle.name, version=bundle.digest[:12],
                                  architecture=bundle.manifest["architecture"],
                                  provider=self.provider.removesuffix("ExecutionProvider")).set(1)

    def zero_state(self) -> np.ndarray:
        return np.zeros(self.bundle.state_shape, dtype=np.float32)  # (tensors, layers, hidden)

    def run(self, tokens: np.ndarray, states: np.ndarray, with_log_probs: bool = True):
        """One onnxruntime call: tokens (batch, seq) int64, states (tensors, layers, batch, hidden) float32.

        Returns (log_probs (batch, vocab) or None, new states (tensors, layers, batch, hidden))."""
        feed = {"tokens": tokens, **{name: states[i] for i, name in enumerate(self._inputs[1:])}}
        started = time.perf_counter()
        if self.heads is not None and with_log_probs:
            log_probs, new = self._run_resident(feed)
        else:
            outputs = self.session.run(self._outputs if with_log_probs else self._outputs[1:], feed)
            log_probs = outputs[0] if with_log_probs else None  # (batch, vocab)
            new = np.stack(outputs[1:] if with_log_probs else outputs)  # (tensors, layers, batch, hidden)
        self._step_latency.observe(time.perf_counter() - started)
        self._batch_size.observe(tokens.shape[0])
        return log_probs, new

    def _run_resident(self, feed: dict):
        """I/O binding: log_probs stays on the model's device (DeviceRows); the small states come to the host."""
        from service.heads import DeviceRows

        binding = self.session.io_binding()
        for name, value in feed.items():
            binding.bind_cpu_input(name, np.ascontiguousarray(value))
        binding.bind_output("log_probs", self.heads.device)
        for name in self._outputs[1:]:
            binding.bind_output(name, "cpu")
        self.session.run_with_iobinding(binding)
        log_probs, *states = binding.get_outputs()
        return DeviceRows(log_probs, self.heads), np.stack([s.numpy() for s in states])
