"""service.heads: the graphs that read log-probabilities where the model left them (the CUDA path), run here on
onnxruntime's CPU provider against a real tiny bundle and checked against the host code in service/sampling.py."""

from __future__ import annotations

import numpy as np
import pytest

from service.bundle import load_bundle
from service.engine import Engine
from service.heads import DeviceRow, DeviceRows
from service.runtime import ModelRuntime
from service.sampling import SamplingParams, top_k
from service.scheduler import Scheduler
from tests.test_engine import first_stream_tokens


class Fixed:
    def __init__(self, u: float):
        self.u = u

    def random(self) -> float:
        return self.u


@pytest.fixture(scope="module")
def runtimes(models_dir):
    bundle = load_bundle(models_dir / "tiny-lstm")
    return ModelRuntime(bundle, device="cpu"), ModelRuntime(bundle, device="cpu", device_resident=True)


def _batch(runtime, n=5, seed=0):
    rng = np.random.default_rng(seed)
    tensors, layers, hidden = runtime.bundle.state_shape
    tokens = rng.integers(runtime.bundle.vocab_size, size=(n, 2))
    states = rng.normal(size=(tensors, layers, n, hidden)).astype(np.float32)
    return runtime.run(tokens, states)


def test_a_resident_call_gives_device_rows_and_the_same_states(runtimes):
    host, resident = runtimes
    lp, states = _batch(host)
    rows, resident_states = _batch(resident)
    assert isinstance(rows, DeviceRows) and isinstance(rows[2], DeviceRow)
    np.testing.assert_allclose(resident_states, states, atol=1e-6)
    np.testing.assert_allclose(np.asarray(rows[2]), lp[2], atol=1e-6)  # a whole row, copied when asked for
    np.testing.assert_allclose(rows.host(np.array([4, 0])), lp[[4, 0]], atol=1e-6)


@pytest.mark.parametrize("k", [1, 5, 51, 500])
def test_top_k_on_the_device_equals_the_host_top_k(runtimes, k):
    host, resident = runtimes
    lp, _ = _batch(host, seed=k)
    rows, _ = _batch(resident, seed=k)
    for b in range(lp.shape[0]):
        ids, probs = top_k(rows[b], k)  # the device row answers itself
        want_ids, want_probs = top_k(lp[b], k)
        assert ids.tolist() == want_ids.tolist()
        np.testing.assert_allclose(probs, want_probs, rtol=1e-5)


def _reference(lp: np.ndarray, u: float, temperature: float, banned: set[int]) -> int:
    scores = lp.astype(np.float64).copy()
    scores[list(banned)] = -np.inf
    w = np.exp((scores - scores.max()) / temperature)
    c = np.cumsum(w)
    return min(int(np.searchsorted(c, u * c[-1], side="right")), int(np.flatnonzero(w > 0)[-1]))


@pytest.mark.parametrize("temperature", [1.0, 0.5, 3.0])
def test_sampling_on_the_device_is_the_inverse_cdf_of_each_row(runtimes, temperature):
    host, resident = runtimes
    lp, _ = _batch(host, seed=3)
    rows, _ = _batch(resident, seed=3)
    unk = host.bundle.unk
    grid = np.linspace(0, 1, 401, endpoint=False)
    params = [SamplingParams(temperature=temperature)] * len(grid)
    for b in range(lp.shape[0]):
        tokens, probs = rows.sample(np.full(len(grid), b), params, [Fixed(u) for u in grid])
        want = [_reference(lp[b], u, temperature, {unk}) for u in grid]
        agree = np.mean(np.array(want) == tokens)
        assert agree >= 0.99, agree  # float32 weights: only a draw within rounding of a boundary may differ
        assert unk not in tokens.tolist()
        np.testing.assert_allclose(probs, np.exp(lp[b][tokens].astype(np.float64)), rtol=1e-5)
    ends, _ = rows.sample(np.array([0, 0]), params[:2], [Fixed(0.0), Fixed(np.nextafter(1.0, 0.0))])
    assert unk not in ends.tolist() and all(np.isfinite(lp[0][ends]))


def test_streams_on_a_resident_runtime_give_the_same_tokens_alone_and_batched(models_dir, session_store):
    runtime = ModelRuntime(load_bundle(models_dir / "tiny-lstm"), device="cpu", device_resident=True)
    engine = Engine({"tiny-lstm": Scheduler(runtime, batch_wait_ms=20)}, session_store, "tiny-lstm", max_streams=8)
    try:
        assert first_stream_tokens(engine, 1, "the cat", 10) == first_stream_tokens(engine, 6, "the cat", 10)
        prediction = engine.predict("the cat sat")
        assert isinstance(prediction.log_probs, DeviceRow)
    finally:
        engine.close()
