"""Tests for service/sampling.py: greedy, top-k, top-p, temperature, bans, seeds, and the draw's statistics."""

from __future__ import annotations

import numpy as np
import pytest

from service.sampling import GREEDY_TEMPERATURE, SamplingParams, make_rng, sample, top_k

V = 33278  # the real vocabulary size


def log_probs_of(probs) -> np.ndarray:
    p = np.asarray(probs, dtype=np.float64)
    with np.errstate(divide="ignore"):
        return np.log(p / p.sum()).astype(np.float32)  # (V,) like the model's output


def zipf(v: int = V, s: float = 1.1) -> np.ndarray:
    return log_probs_of(np.arange(1, v + 1, dtype=np.float64) ** -s)


def shuffled(probs, seed=3):
    """Probabilities placed at random ids, so no test leans on the best word being id 0."""
    perm = np.random.default_rng(seed).permutation(len(probs))
    out = np.empty(len(probs))
    out[perm] = probs
    return out, perm  # perm[i] = the id holding probs[i]


def draws(lp, params, n, seed=0, banned=frozenset()):
    rng = make_rng(seed)
    return np.array([sample(lp, params, rng, banned)[0] for _ in range(n)])


def assert_frequencies(ids, expected):
    """Every empirical frequency within 5 standard errors, sqrt(p(1-p)/n), of its expected value.

    For one word the chance of a miss is 6e-7 (normal approximation); over <= 10 words and the
    fixed seeds used here, a failure means a wrong distribution, not bad luck.
    """
    n = ids.size
    freq = np.bincount(ids, minlength=expected.size) / n
    bound = 5 * np.sqrt(expected * (1 - expected) / n) + 1e-12
    assert np.all(np.abs(freq - expected) <= bound), (freq, expected)


# ------------------------------------------------------------------------------------------ top_k


def test_top_k_matches_a_full_sort():
    lp = zipf()[np.random.default_rng(1).permutation(V)]
    ids, probs = top_k(lp, 50)
    reference = np.lexsort((np.arange(V), -lp.astype(np.float64)))[:50]
    assert ids.tolist() == reference.tolist()
    assert np.all(np.diff(probs) <= 0)
    np.testing.assert_allclose(probs, np.exp(lp[ids].astype(np.float64)), rtol=1e-12)
    assert ids.dtype == np.int64 and probs.dtype == np.float64


def test_top_k_ranks_any_float_scores():
    scores = np.array([0.5, -2.0, 3.0, -0.0, 0.0, -np.inf, 1e-30, -1e-30, 2.5], np.float32)
    assert top_k(scores, 9)[0].tolist() == [2, 8, 0, 6, 3, 4, 7, 1, 5]  # -0.0 ties 0.0: lower id first


def test_top_k_breaks_ties_by_lower_id():
    lp = log_probs_of([1, 3, 2, 3, 3, 1, 3])  # ids 1, 3, 4, 6 tie for the best
    assert top_k(lp, 3)[0].tolist() == [1, 3, 4]
    assert top_k(lp, 5)[0].tolist() == [1, 3, 4, 6, 2]


def test_top_k_clips_k_to_the_vocabulary():
    lp = log_probs_of([0.1, 0.6, 0.3])
    ids, probs = top_k(lp, 10)
    assert ids.tolist() == [1, 2, 0]
    np.testing.assert_allclose(probs, [0.6, 0.3, 0.1], rtol=1e-6)


@pytest.mark.parametrize("seed", range(6))
def test_top_k_on_large_rows_with_ties_matches_the_full_ranking(seed):
    """Large rows take the group-maxima path: the same ids in the same order as ranking every word, ties (many of
    them), -inf and -0.0 included."""
    rng = np.random.default_rng(seed)
    size = int(rng.integers(2_000, 40_000))
    scores = (np.round(rng.standard_normal(size) * (1 + seed % 3)) / 2).astype(np.float32)  # few distinct values
    scores[rng.integers(size, size=40)] = -np.inf
    scores[rng.integers(size, size=5)] = -0.0
    for k in (1, 2, 10, 31):
        reference = np.lexsort((np.arange(size), -(scores + np.float32(0)).astype(np.float64)))[:k]
        assert top_k(scores, k)[0].tolist() == reference.tolist()


@pytest.mark.parametrize("where", [0, 7, 33_215, 33_216, 33_277])  # a group's first word, inside, the tail
@pytest.mark.parametrize("bad", [np.nan, np.inf])
def test_top_k_rejects_nan_or_inf_anywhere_in_a_large_row(where, bad):
    scores = np.random.default_rng(0).standard_normal(33_278).astype(np.float32)
    scores[where] = bad
    with pytest.raises(ValueError):
        top_k(scores, 10)


@pytest.mark.parametrize("bad", [np.zeros((2, 3), np.float32), np.array([], np.float32),
                                 np.array([0.0, np.nan], np.float32), np.array([1, 2])])
def test_top_k_rejects_nonsense(bad):
    with pytest.raises(ValueError):
        top_k(bad, 1)
    with pytest.raises(ValueError):
        top_k(log_probs_of([1, 1]), 0)


# ------------------------------------------------------------------------------------------ greedy


@pytest.mark.parametrize("temperature", [0.0, 1e-6, GREEDY_TEMPERATURE])
def test_greedy_is_argmax_and_draws_nothing(temperature):
    lp = zipf()[np.random.default_rng(2).permutation(V)]
    rng = make_rng(5)
    before = rng.bit_generator.state
    token, prob = sample(lp, SamplingParams(temperature=temperature), rng)
    assert token == int(np.argmax(lp))
    assert prob == pytest.approx(float(np.exp(np.float64(lp.max()))), rel=1e-12)
    assert rng.bit_generator.state == before


def test_top_k_one_is_greedy():
    lp = zipf()[np.random.default_rng(3).permutation(V)]
    assert set(draws(lp, SamplingParams(top_k=1), 200).tolist()) == {int(np.argmax(lp))}


def test_just_above_greedy_temperature_still_samples():
    lp = log_probs_of([1, 1, 1, 1])  # a flat distribution stays flat at any temperature
    assert len(set(draws(lp, SamplingParams(temperature=2 * GREEDY_TEMPERATURE), 200).tolist())) == 4


# ------------------------------------------------------------------------------------------ filters


def test_top_k_never_leaves_the_top_k():
    lp = zipf()[np.random.default_rng(4).permutation(V)]
    best = set(top_k(lp, 5)[0].tolist())
    seen = draws(lp, SamplingParams(top_k=5, temperature=3.0), 400)  # hot: outsiders hold 97% of the mass
    assert set(seen.tolist()) == best


def test_top_p_keeps_exactly_the_nucleus_and_renormalises():
    probs, perm = shuffled([0.5, 0.25, 0.15, 0.06, 0.04])
    lp = log_probs_of(probs)
    # mass 0.5, 0.75, 0.90, 0.96, 1.0: 0.7 needs the best two words, 0.8 the best three
    ids = draws(lp, SamplingParams(top_p=0.7), 10000)
    assert set(ids.tolist()) == set(perm[:2].tolist())
    expected = np.zeros(5)
    expected[perm[:2]] = [0.5 / 0.75, 0.25 / 0.75]
    assert_frequencies(ids, expected)
    assert set(draws(lp, SamplingParams(top_p=0.8), 1000).tolist()) == set(perm[:3].tolist())
    assert set(draws(lp, SamplingParams(top_p=0.4), 300).tolist()) == {int(perm[0])}


def test_top_p_on_a_real_sized_vocabulary():
    lp = zipf()[np.random.default_rng(6).permutation(V)]
    order = np.lexsort((np.arange(V), -lp.astype(np.float64)))
    mass = np.cumsum(np.exp(lp[order].astype(np.float64)))
    size = int(np.searchsorted(mass, 0.9)) + 1
    nucleus = order[:size]
    # the search for the nucleus has to widen more than once, and its far end is not negligible
    assert size > 2048 and (mass[size - 1] - mass[2047]) / mass[size - 1] > 0.05
    seen = draws(lp, SamplingParams(top_p=0.9, temperature=1.0), 400)
    rank = np.empty(V, dtype=np.int64)
    rank[order] = np.arange(V)
    assert set(seen.tolist()) <= set(nucleus.tolist())
    assert rank[seen].max() >= 2048  # P(no draw beyond rank 2048) < 0.95**400 ~ 1e-9


def test_top_k_and_top_p_together():
    probs, perm = shuffled([0.4, 0.3, 0.2, 0.1])
    lp = log_probs_of(probs)
    # top-2 renormalised: 4/7, 3/7; top_p 0.5 then keeps only the first
    assert set(draws(lp, SamplingParams(top_k=2, top_p=0.5), 300).tolist()) == {int(perm[0])}
    assert set(draws(lp, SamplingParams(top_k=3, top_p=0.95), 1000).tolist()) == set(perm[:3].tolist())


# ------------------------------------------------------------------------------------------ distribution


def test_frequencies_match_the_distribution():
    probs, _ = shuffled([0.3, 0.2, 0.15, 0.1, 0.08, 0.07, 0.05, 0.03, 0.015, 0.005])
    ids = draws(log_probs_of(probs), SamplingParams(), 20000)
    assert_frequencies(ids, probs)


@pytest.mark.parametrize("temperature", [0.5, 2.0])
def test_temperature_reshapes_as_p_to_the_one_over_t(temperature):
    probs = np.array([0.6, 0.25, 0.1, 0.05])
    ids = draws(log_probs_of(probs), SamplingParams(temperature=temperature), 10000, seed=11)
    expected = probs ** (1 / temperature) / np.sum(probs ** (1 / temperature))
    assert_frequencies(ids, expected)


def test_temperature_sharpens_and_flattens():
    probs = np.array([0.6, 0.25, 0.1, 0.05])
    top_share = {t: np.mean(draws(log_probs_of(probs), SamplingParams(temperature=t), 1000) == 0)
                 for t in (0.3, 1.0, 3.0)}
    assert top_share[0.3] > 0.85 > top_share[1.0] > 0.45 > top_share[3.0]


def test_returns_the_unmodified_probability():
    probs, _ = shuffled([0.5, 0.3, 0.15, 0.05])
    lp = log_probs_of(probs)
    rng = make_rng(2)
    for params in (SamplingParams(), SamplingParams(temperature=0.5, top_k=2), SamplingParams(top_p=0.6),
                   SamplingParams(temperature=0)):
        for _ in range(50):
            token, prob = sample(lp, params, rng, banned=frozenset({int(np.argmin(probs))}))
            assert prob == pytest.approx(probs[token], rel=1e-6)
            assert isinstance(token, int) and isinstance(prob, float)


# ------------------------------------------------------------------------------------------ bans


def test_banned_ids_are_never_drawn():
    probs, perm = shuffled([0.9, 0.05, 0.03, 0.02])
    lp = log_probs_of(probs)
    banned = frozenset({int(perm[0]), int(perm[2])})
    ids = draws(lp, SamplingParams(), 5000, banned=banned)
    assert not set(ids.tolist()) & banned
    expected = np.zeros(4)
    expected[perm[[1, 3]]] = [0.05 / 0.07, 0.02 / 0.07]  # the rest renormalised
    assert_frequencies(ids, expected)
    assert sample(lp, SamplingParams(temperature=0), make_rng(0), banned)[0] == int(perm[1])
    assert set(draws(lp, SamplingParams(top_k=1), 100, banned=banned).tolist()) == {int(perm[1])}


def test_all_banned_raises():
    lp = log_probs_of([0.5, 0.5, 0.0])
    with pytest.raises(ValueError, match="banned"):
        sample(lp, SamplingParams(), make_rng(0), frozenset({0, 1}))


def test_zero_probability_words_are_never_drawn():
    lp = log_probs_of([0.0, 0.5, 0.0, 0.5, 0.0])  # -inf log-probabilities
    for params in (SamplingParams(), SamplingParams(top_k=4), SamplingParams(top_p=0.99),
                   SamplingParams(temperature=9)):
        assert set(draws(lp, params, 500).tolist()) == {1, 3}


class FixedRng:
    """Stands in for a Generator whose next uniform draw is u."""

    def __init__(self, u: float):
        self.u = u

    def random(self) -> float:
        return self.u


@pytest.mark.parametrize("params", [SamplingParams(), SamplingParams(top_k=3), SamplingParams(top_p=0.999)])
def test_extreme_uniform_draws_never_land_on_a_zero_probability_word(params):
    lp = log_probs_of([0.2, 0.3, 0.5, 0.0])  # id 3 has probability 0
    banned = frozenset({0})
    lowest = sample(lp, params, FixedRng(0.0), banned)[0]
    highest = sample(lp, params, FixedRng(np.nextafter(1.0, 0.0)), banned)[0]
    assert {lowest, highest} == {1, 2}  # the two ends of the words of weight > 0, in whatever order


# ------------------------------------------------------------------------------------------ seeds


def test_same_seed_same_sequence_different_seed_different():
    lp = log_probs_of(np.ones(1000))  # flat: two seeds agree on 50 draws with chance 1000**-50
    params = SamplingParams(temperature=0.8, top_k=500, top_p=0.9)
    assert draws(lp, params, 50, seed=42).tolist() == draws(lp, params, 50, seed=42).tolist()
    assert draws(lp, params, 50, seed=42).tolist() != draws(lp, params, 50, seed=43).tolist()


def test_make_rng_without_seed_is_random():
    lp = log_probs_of(np.ones(1000))
    first, second = ([sample(lp, SamplingParams(), make_rng(None))[0] for _ in range(20)] for _ in range(2))
    assert first != second


# ------------------------------------------------------------------------------------------ nonsense


@pytest.mark.parametrize("params", [
    SamplingParams(temperature=-1.0), SamplingParams(temperature=float("nan")),
    SamplingParams(temperature=float("inf")), SamplingParams(top_k=-1), SamplingParams(top_k=2.5),
    SamplingParams(top_p=0.0), SamplingParams(top_p=1.5), SamplingParams(top_p=float("nan")),
])
def test_nonsense_params_raise(params):
    with pytest.raises(ValueError):
        sample(log_probs_of([0.5, 0.5]), params, make_rng(0))


@pytest.mark.parametrize("log_probs, banned", [
    (np.zeros((1, 2), np.float32), frozenset()),
    (np.array([np.nan, 0.0], np.float32), frozenset()),
    (np.array([np.inf, 0.0], np.float32), frozenset()),
    (np.array([], np.float32), frozenset()),
    (np.log([0.5, 0.5]).astype(np.float32), frozenset({2})),
    (np.log([0.5, 0.5]).astype(np.float32), frozenset({-1})),
])
def test_nonsense_inputs_raise(log_probs, banned):
    with pytest.raises(ValueError):
        sample(log_probs, SamplingParams(), make_rng(0), banned)
