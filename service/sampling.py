"""Picks next words from a log-probability vector. Knows nothing of words, models, sessions or HTTP.

`sample` applies, in this order: banned ids get probability 0; temperature (at or below
`GREEDY_TEMPERATURE`, including 0, it takes the argmax and draws nothing); top-k; top-p (nucleus);
then one uniform draw from `rng` (exactly one `rng.random()` per non-greedy call, so a seeded
generator replays the same words). Words are ranked at float32 precision (the model's output),
ties by the lower id; masses are summed in float64 on a copy. The probability returned is the
model's own, before any of these changes.
The HTTP layer validates user input; a `ValueError` here means a caller bug or a broken model.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

GREEDY_TEMPERATURE = 1e-5  # at or below: argmax (dividing by ~0 would overflow and mean the same)
_NUCLEUS_FIRST_K = 256  # top-p looks at the best 256 words first, then 8x more until the mass is reached


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # > 0; <= GREEDY_TEMPERATURE means greedy (argmax)
    top_k: int = 0  # keep the k most likely words; 0 = all
    top_p: float = 1.0  # keep the smallest set of most likely words whose mass reaches top_p; in (0, 1]
    seed: int | None = None  # for make_rng; sample itself draws from the rng it is given


def make_rng(seed: int | None) -> np.random.Generator:
    """A PCG64 generator: the same seed gives the same draws; None seeds from the OS."""
    return np.random.default_rng(seed)


def _vector(log_probs: np.ndarray) -> np.ndarray:
    lp = np.asarray(log_probs)
    if lp.ndim != 1 or lp.size == 0 or not np.issubdtype(lp.dtype, np.floating):
        raise ValueError(f"log_probs must be a non-empty 1-D float vector, got shape {lp.shape} {lp.dtype}")
    if np.isnan(lp).any() or (lp == np.inf).any():
        raise ValueError("log_probs holds NaN or +inf")
    return lp


def _rank_keys(scores: np.ndarray) -> np.ndarray:
    """(V,) uint64 keys, all distinct, whose ascending order is: highest score first, ties by lower id.

    High half: the float32 score's bits turned so that larger floats give smaller integers; low half:
    the id. Sorting or partitioning these needs no tie-breaking pass (ranking is at float32 precision,
    the model's own)."""
    bits = (scores.astype(np.float32) + np.float32(0)).view(np.int32)  # + 0 turns -0.0 into 0.0
    descending = np.where(bits < 0, bits, bits ^ np.int32(0x7FFFFFFF)).view(np.uint32)
    return (descending.astype(np.uint64) << np.uint64(32)) | np.arange(scores.size, dtype=np.uint64)


def _best(keys: np.ndarray, k: int) -> np.ndarray:
    """Ids of the k best, best first: O(V) to select, O(k log k) to order."""
    if k < keys.size:
        keys = np.partition(keys, k - 1)[:k]
    return (np.sort(keys) & np.uint64(0xFFFFFFFF)).astype(np.int64)


def top_k(log_probs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids int64, probabilities float64) of the k most likely words, most likely first; k clipped to V."""
    lp = _vector(log_probs)
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    ids = _best(_rank_keys(lp), min(int(k), lp.size))
    return ids, np.exp(lp[ids].astype(np.float64))


def _check(params: SamplingParams) -> None:
    t, k, p = params.temperature, params.top_k, params.top_p
    if not (np.isfinite(t) and t >= 0):
        raise ValueError(f"temperature must be >= 0 (<= {GREEDY_TEMPERATURE} is greedy), got {t}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        raise ValueError(f"top_k must be an integer >= 0, got {k!r}")
    if not (0 < p <= 1):
        raise ValueError(f"top_p must be in (0, 1], got {p}")


def _nucleus(weights: np.ndarray, top_p: float, best) -> np.ndarray:
    """Positions (best first) of the smallest set holding top_p of the weights; best(k) lists the k best."""
    total, k = weights.sum(), _NUCLEUS_FIRST_K
    while True:
        positions = best(min(k, weights.size))
        mass = np.cumsum(weights[positions]) / total
        if mass[-1] >= top_p or positions.size == weights.size:
            break
        k *= 8
    return positions[: int(np.searchsorted(mass, top_p)) + 1]  # searchsorted: the first to reach top_p


def sample(log_probs: np.ndarray, params: SamplingParams, rng: np.random.Generator,
           banned: frozenset[int] = frozenset()) -> tuple[int, float]:
    """(token id, the model's unmodified probability of it) drawn under params; banned ids never."""
    lp = _vector(log_probs)
    _check(params)
    scores = lp.astype(np.float64)  # (V,) a copy
    if banned:
        ban = np.fromiter(banned, dtype=np.int64, count=len(banned))
        if ban.min() < 0 or ban.max() >= lp.size:
            raise ValueError(f"banned ids must lie in [0, {lp.size}), got {sorted(banned)[:5]}...")
        scores[ban] = -np.inf
    if scores.max() == -np.inf:
        raise ValueError("every id is banned or has probability 0")
    if params.temperature <= GREEDY_TEMPERATURE:
        token = int(np.argmax(scores))  # first maximum: lower id wins a tie
        return token, float(np.exp(np.float64(lp[token])))

    keys = _rank_keys(scores) if params.top_k or params.top_p < 1 else None
    scores /= params.temperature
    ids = _best(keys, params.top_k) if 0 < params.top_k < lp.size else None  # None: every id, in id order
    kept = scores if ids is None else scores[ids]  # (n,) n = top_k or V
    weights = np.exp(kept - kept.max())  # unnormalised; banned and -inf words weigh 0
    if params.top_p < 1:  # positions into kept: ids themselves, or places in the best-first top-k list
        positions = _nucleus(weights, params.top_p, np.arange if ids is not None else lambda k: _best(keys, k))
        ids, weights = (positions if ids is None else ids[positions]), weights[positions]
    cumulative = np.cumsum(weights)
    j = int(np.searchsorted(cumulative, rng.random() * cumulative[-1], side="right"))
    j = min(j, int(np.searchsorted(cumulative, cumulative[-1])))  # never past the last word of weight > 0
    token = j if ids is None else int(ids[j])
    return token, float(np.exp(np.float64(lp[token])))
