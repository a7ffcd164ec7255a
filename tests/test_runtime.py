"""service.runtime against a real tiny bundle: batching gives the same rows as single steps."""

from __future__ import annotations

import json
import shutil
import threading

import numpy as np
import pytest

from service.bundle import BundleError, load_bundle
from service.errors import ModelUnavailable
from service.runtime import ModelRuntime, RuntimeStartError, _cuda_driver_present


class RecordingRuntime(ModelRuntime):
    """The real runtime, remembering the batch size of every onnxruntime call it makes."""

    def __init__(self, *args, **kwargs):
        self.batches: list[int] = []
        super().__init__(*args, **kwargs)

    def run_batch(self, tokens, states):
        self.batches.append(tokens.shape[0])
        return super().run_batch(tokens, states)


@pytest.fixture
def runtime(models_dir):
    rt = RecordingRuntime(load_bundle(models_dir / "tiny-lstm"), device="cpu", batch_wait_ms=30.0)
    yield rt
    rt.close()


def _concurrently(work, n: int) -> None:
    threads = [threading.Thread(target=work, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()


def _alone(rt: ModelRuntime, tokens: np.ndarray, state: np.ndarray):
    log_probs, new = rt.run_batch(tokens[None, :], state[:, :, None, :])  # batch of one
    return log_probs[0], new[:, :, 0]


def test_concurrent_steps_batch_and_match_single_runs(runtime):
    rng = np.random.default_rng(0)
    vocab = runtime.bundle.vocab_size
    jobs = [(rng.integers(vocab, size=1), rng.normal(size=runtime.bundle.state_shape).astype(np.float32))
            for _ in range(12)]
    results: list = [None] * len(jobs)
    barrier = threading.Barrier(len(jobs))

    def work(i: int) -> None:
        barrier.wait()
        results[i] = runtime.step(*jobs[i])

    _concurrently(work, len(jobs))
    assert max(runtime.batches) > 1, f"steps never batched: {runtime.batches}"
    for (tokens, state), (log_probs, new) in zip(jobs, results):
        want_lp, want_state = _alone(runtime, tokens, state)
        np.testing.assert_allclose(log_probs, want_lp, atol=1e-5)
        np.testing.assert_allclose(new, want_state, atol=1e-5)


def test_rows_of_different_length_are_grouped_not_mixed(runtime):
    rng = np.random.default_rng(1)
    vocab = runtime.bundle.vocab_size
    jobs = [(rng.integers(vocab, size=n), runtime.zero_state()) for n in (1, 3, 1, 3, 5, 1)]
    results: list = [None] * len(jobs)

    def work(i: int) -> None:
        results[i] = runtime.step(*jobs[i])

    _concurrently(work, len(jobs))
    for (tokens, state), (log_probs, _) in zip(jobs, results):
        np.testing.assert_allclose(log_probs, _alone(runtime, tokens, state)[0], atol=1e-5)
    assert np.exp(results[0][0]).sum() == pytest.approx(1.0, abs=1e-4)


def test_a_failing_call_is_a_model_error_and_the_scheduler_survives(runtime):
    with pytest.raises(ModelUnavailable):
        runtime.step(np.array([runtime.bundle.vocab_size + 10]))  # out-of-range id: onnxruntime's Gather fails
    log_probs, _ = runtime.step(np.array([1]))
    assert log_probs.shape == (runtime.bundle.vocab_size,)


def test_tampered_onnx_is_refused_naming_the_file(tiny_bundle, tmp_path):
    folder = shutil.copytree(tiny_bundle, tmp_path / "b")
    with (folder / "model.onnx").open("ab") as f:
        f.write(b"\0")
    with pytest.raises(BundleError, match="model.onnx: sha256"):
        load_bundle(folder)


def test_manifest_shapes_that_disagree_with_the_graph_are_refused(tiny_bundle, tmp_path):
    folder = shutil.copytree(tiny_bundle, tmp_path / "b")
    manifest = json.loads((folder / "manifest.json").read_text())
    manifest["hidden_size"] += 1
    (folder / "manifest.json").write_text(json.dumps(manifest))
    with pytest.raises(BundleError, match="model.onnx.*shape"):
        ModelRuntime(load_bundle(folder), device="cpu")


@pytest.mark.skipif(_cuda_driver_present(), reason="this machine has a CUDA driver")
def test_cuda_requested_without_a_gpu_is_a_clear_startup_error(tiny_bundle):
    with pytest.raises(RuntimeStartError, match="NEXTWORD_DEVICE=cuda"):
        ModelRuntime(load_bundle(tiny_bundle), device="cuda")


def test_auto_device_reports_the_provider_actually_used(tiny_bundle):
    rt = ModelRuntime(load_bundle(tiny_bundle), device="auto")
    try:
        assert rt.provider == rt.session.get_providers()[0]
        if not _cuda_driver_present():
            assert rt.provider == "CPUExecutionProvider"
    finally:
        rt.close()
