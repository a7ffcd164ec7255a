"""service.runtime against a real tiny bundle: a batched row equals the row alone (bad bundles: tests/test_bundle.py)."""

from __future__ import annotations

import numpy as np
import pytest

from service.bundle import load_bundle
from service.runtime import ModelRuntime, RuntimeStartError, _cuda_driver_present


@pytest.fixture
def runtime(models_dir):
    return ModelRuntime(load_bundle(models_dir / "tiny-lstm"), device="cpu")


def test_a_batched_row_equals_the_same_row_alone(runtime):
    rng = np.random.default_rng(0)
    tensors, layers, hidden = runtime.bundle.state_shape
    tokens = rng.integers(runtime.bundle.vocab_size, size=(6, 3))  # (batch, seq)
    states = rng.normal(size=(tensors, layers, 6, hidden)).astype(np.float32)
    log_probs, new = runtime.run(tokens, states)
    assert log_probs.shape == (6, runtime.bundle.vocab_size) and new.shape == states.shape
    for b in range(6):
        alone_lp, alone_state = runtime.run(tokens[b:b + 1], states[:, :, b:b + 1])
        np.testing.assert_allclose(log_probs[b], alone_lp[0], atol=1e-5)
        np.testing.assert_allclose(new[:, :, b], alone_state[:, :, 0], atol=1e-5)
    assert np.exp(log_probs.astype(np.float64)).sum(axis=1) == pytest.approx(np.ones(6), abs=1e-4)


def test_a_state_only_call_gives_the_same_state_without_log_probs(runtime):
    tokens = np.array([[3, 4, 5]])
    states = np.zeros((*runtime.bundle.state_shape[:2], 1, runtime.bundle.state_shape[2]), np.float32)
    log_probs, new = runtime.run(tokens, states, with_log_probs=False)
    assert log_probs is None
    np.testing.assert_allclose(new, runtime.run(tokens, states)[1], atol=1e-6)


@pytest.mark.skipif(_cuda_driver_present(), reason="this machine has a CUDA driver")
def test_cuda_requested_without_a_gpu_is_a_clear_startup_error(tiny_bundle):
    with pytest.raises(RuntimeStartError, match="NEXTWORD_DEVICE=cuda"):
        ModelRuntime(load_bundle(tiny_bundle), device="cuda")


def test_auto_device_reports_the_provider_actually_used(tiny_bundle):
    rt = ModelRuntime(load_bundle(tiny_bundle), device="auto")
    assert rt.provider == rt.session.get_providers()[0]
    if not _cuda_driver_present():
        assert rt.provider == "CPUExecutionProvider"
