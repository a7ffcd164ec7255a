"""Picks next words from log-probability vectors. Knows nothing of words, models, sessions or HTTP.

`sample_rows` draws one word for each row of a (rows, vocabulary) matrix, each row under its own
`SamplingParams` and generator, so the decode loop of many generations samples in one call; `sample`
is the one-row case. Per row, in this order: banned ids get probability 0; temperature (at or below
`GREEDY_TEMPERATURE`, including 0, it takes the argmax and draws nothing); top-k; top-p (nucleus);
then one uniform draw from the row's generator (exactly one `random()` per non-greedy row, so a
seeded generator replays the same words whatever other rows share the call). Words are ranked at
float32 precision (the model's output), ties by the lower id. The probability returned is the
model's own, before any of these changes.

Rows with neither top-k nor top-p (the common case) are vectorised: weights in float32, then the
inverse CDF in two levels (sums of blocks of `_BLOCK` words, then the words of one block, both in
float64), so no pass over the vocabulary is a sequential cumulative sum. A row's arithmetic never
depends on the other rows. Rows with top-k or top-p are ranked one by one.
The HTTP layer validates user input; a `ValueError` here means a caller bug or a broken model.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol, Sequence

import numpy as np

GREEDY_TEMPERATURE = 1e-5  # at or below: argmax (dividing by ~0 would overflow and mean the same)
_NUCLEUS_FIRST_K = 256  # top-p looks at the best 256 words first, then 8x more until the mass is reached
_BLOCK = 256  # words per block of the two-level inverse CDF: ~130 blocks for a 33k vocabulary


class Uniform(Protocol):
    def random(self) -> float: ...


@dataclass(frozen=True)
class SamplingParams:
    temperature: float = 1.0  # > 0; <= GREEDY_TEMPERATURE means greedy (argmax)
    top_k: int = 0  # keep the k most likely words; 0 = all
    top_p: float = 1.0  # keep the smallest set of most likely words whose mass reaches top_p; in (0, 1]
    seed: int | None = None  # for make_rng; sampling itself draws from the generator it is given

    @property
    def greedy(self) -> bool:
        return self.temperature <= GREEDY_TEMPERATURE

    @property
    def filtered(self) -> bool:
        return bool(self.top_k) or self.top_p < 1


def make_rng(seed: int | None) -> np.random.Generator:
    """A PCG64 generator: the same seed gives the same draws; None seeds from the OS."""
    return np.random.default_rng(seed)


def _check_rows(log_probs: np.ndarray) -> np.ndarray:
    lp = np.asarray(log_probs)
    if lp.ndim != 2 or lp.size == 0 or not np.issubdtype(lp.dtype, np.floating):
        raise ValueError(f"log_probs must be a non-empty float matrix (rows, vocabulary), got {lp.shape} {lp.dtype}")
    if np.isnan(lp).any() or (lp == np.inf).any():
        raise ValueError("log_probs holds NaN or +inf")
    return lp


def _check(params: SamplingParams) -> None:
    t, k, p = params.temperature, params.top_k, params.top_p
    if not (np.isfinite(t) and t >= 0):
        raise ValueError(f"temperature must be >= 0 (<= {GREEDY_TEMPERATURE} is greedy), got {t}")
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k < 0:
        raise ValueError(f"top_k must be an integer >= 0, got {k!r}")
    if not (0 < p <= 1):
        raise ValueError(f"top_p must be in (0, 1], got {p}")


# -- ranking --------------------------------------------------------------------------------------------------------

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


def _top_ids(scores: np.ndarray, k: int) -> np.ndarray:
    """Ids of the k highest float32 scores (k <= V), best first, ties by the lower id: the order of `_rank_keys`,
    found with one partition of the values and a sort of the k winners, without a key per word."""
    scores = scores + np.float32(0)  # a copy where -0.0 ranks as 0.0, as in _rank_keys
    if k < scores.size:
        threshold = np.partition(scores, scores.size - k)[scores.size - k]  # the k-th highest value
        above = np.flatnonzero(scores > threshold)
        ids = np.concatenate([above, np.flatnonzero(scores == threshold)[: k - above.size]])
    else:
        ids = np.arange(scores.size)
    return ids[np.lexsort((ids, -scores[ids]))].astype(np.int64)  # by value, then id


def top_k(log_probs: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """(ids int64, probabilities float64) of the k most likely words, most likely first; k clipped to V.

    A row that lives on a device (service.heads.DeviceRow) answers with its own `top_k`: only k words cross over.

    Selects on the float32 values themselves (one partition, then the ties at the k-th value by id),
    which is the same order as `_rank_keys` without building a key per word."""
    if k < 1:
        raise ValueError(f"k must be at least 1, got {k}")
    if hasattr(log_probs, "top_k"):
        return log_probs.top_k(int(k))
    lp = np.asarray(log_probs)
    if lp.ndim != 1:
        raise ValueError(f"log_probs must be a 1-D vector, got shape {lp.shape}")
    k = min(int(k), lp.size)
    if k * _GROUPS * 4 <= lp.size and np.issubdtype(lp.dtype, np.floating):
        ids = _top_ids_blocked(lp.astype(np.float32, copy=False), k)
    else:
        lp = _check_rows(lp[None, :])[0]
        ids = _top_ids(lp.astype(np.float32, copy=False), k)
    return ids, np.exp(lp[ids].astype(np.float64))


_GROUPS = 64  # top_k first takes the maximum of each of V // 64 strided groups of 64 words (one vectorised pass)


def _top_ids_blocked(scores: np.ndarray, k: int) -> np.ndarray:
    """`_top_ids` for k much smaller than V, in about half its time: the k-th highest group maximum is at most the
    k-th highest value, so every word at or above that value lies in a group whose maximum reaches it; only those
    groups' words (and the few after the last whole row of groups), taken in id order, are ranked by `_top_ids`, so
    ties still go to the lower id. The row check of `_check_rows` (NaN or +inf is an error) comes from the maxima."""
    columns = scores.size // _GROUPS
    whole = columns * _GROUPS
    maxima = scores[:whole].reshape(_GROUPS, columns).max(axis=0)  # group c: words c, c + columns, c + 2 columns...
    tail = scores[whole:]
    highest = np.maximum(maxima.max(), tail.max()) if tail.size else maxima.max()  # NaN propagates
    if np.isnan(highest) or highest == np.inf:
        raise ValueError("log_probs holds NaN or +inf")
    kth = np.partition(maxima, columns - k)[columns - k]
    groups = np.flatnonzero(maxima >= kth)
    candidates = np.concatenate([(np.arange(0, whole, columns)[:, None] + groups).ravel(),  # ascending ids
                                 np.arange(whole, scores.size)])
    return candidates[_top_ids(scores[candidates], k)]


# -- drawing --------------------------------------------------------------------------------------------------------

def _pick(cumulative: np.ndarray, target: float) -> int:
    """The first position whose cumulative weight exceeds target, never past the last position of weight > 0."""
    j = int(np.searchsorted(cumulative, target, side="right"))
    return min(j, int(np.searchsorted(cumulative, cumulative[-1])))


def _draw_plain(weights: np.ndarray, vocab: int, uniforms: np.ndarray) -> np.ndarray:
    """Inverse CDF per row of weights (rows, blocks * _BLOCK) float32 >= 0 (columns past vocab are 0), uniforms
    (rows,) in [0, 1): the first word whose cumulative weight exceeds u * total, never a word of weight 0."""
    rows = weights.shape[0]
    by_block = weights.reshape(rows, -1, _BLOCK)  # (rows, blocks, _BLOCK), a view
    blocks = np.add.reduce(by_block, axis=2, dtype=np.float64)  # (rows, blocks)
    cumulative = np.cumsum(blocks, axis=1)
    targets = uniforms * cumulative[:, -1]
    last_block = blocks.shape[1] - 1 - np.argmax(blocks[:, ::-1] > 0, axis=1)  # the last block of weight > 0
    b = np.minimum((cumulative <= targets[:, None]).sum(axis=1), last_block)
    inner = np.cumsum(by_block[np.arange(rows), b], axis=1, dtype=np.float64)  # (rows, _BLOCK)
    before = np.where(b > 0, cumulative[np.arange(rows), b - 1], 0.0)
    rest = np.maximum(targets - before, 0.0)  # can round to just past the block's own sum
    within = by_block[np.arange(rows), b] > 0  # (rows, _BLOCK)
    last_word = _BLOCK - 1 - np.argmax(within[:, ::-1], axis=1)
    j = np.minimum((inner <= rest[:, None]).sum(axis=1), last_word)
    first_word = np.argmax(within, axis=1)  # a target at the very start of a block whose first words weigh 0
    j = np.maximum(j, first_word)
    return b * _BLOCK + j


def _draw_filtered(scores: np.ndarray, params: SamplingParams, u: float) -> int:
    """One row with top-k and/or top-p: scores (V,) float32 with banned ids at -inf."""
    scaled = scores.astype(np.float64) / params.temperature  # (V,)
    ids = _top_ids(scores, params.top_k) if 0 < params.top_k < scores.size else None  # None: every id, id order
    kept = scaled if ids is None else scaled[ids]
    weights = np.exp(kept - kept.max())  # unnormalised; banned words weigh 0
    if params.top_p < 1:  # positions into kept: ids themselves, or places in the best-first top-k list
        positions = _nucleus(weights, params.top_p, np.arange if ids is not None else _nucleus_ranker(scores))
        ids, weights = (positions if ids is None else ids[positions]), weights[positions]
    cumulative = np.cumsum(weights)
    j = _pick(cumulative, u * cumulative[-1])
    return j if ids is None else int(ids[j])


def _nucleus_ranker(scores: np.ndarray):
    keys = _rank_keys(scores)  # built once: the nucleus may widen several times
    return lambda k: _best(keys, k)


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


def sample_rows(log_probs: np.ndarray, params: Sequence[SamplingParams], rngs: Sequence[Uniform],
                banned: frozenset[int] = frozenset()) -> tuple[np.ndarray, np.ndarray]:
    """(token ids (rows,), the model's unmodified probabilities (rows,)): row r drawn under params[r] with rngs[r].

    log_probs (rows, V) float is not modified."""
    lp = np.asarray(log_probs)
    if lp.ndim != 2 or lp.size == 0 or not np.issubdtype(lp.dtype, np.floating):
        raise ValueError(f"log_probs must be a non-empty float matrix (rows, vocabulary), got {lp.shape} {lp.dtype}")
    rows, vocab = lp.shape
    if len(params) != rows or len(rngs) != rows:
        raise ValueError(f"{rows} rows need {rows} params and generators, got {len(params)} and {len(rngs)}")
    for p in params:
        _check(p)
    ban = np.fromiter(banned, dtype=np.int64, count=len(banned))
    if ban.size and (ban.min() < 0 or ban.max() >= vocab):
        raise ValueError(f"banned ids must lie in [0, {vocab}), got {sorted(banned)[:5]}...")
    top = lp.max(axis=1)  # (rows,): NaN anywhere in a row makes its max NaN
    if np.isnan(top).any() or (top == np.inf).any():
        raise ValueError("log_probs holds NaN or +inf")
    tokens = np.empty(rows, dtype=np.int64)
    plain = [r for r, p in enumerate(params) if not p.greedy and not p.filtered]
    exact = [r for r, p in enumerate(params) if p.greedy or p.filtered]
    if plain:
        idx = np.array(plain)
        uniforms = np.array([rngs[r].random() for r in plain])  # one draw per row, in row order
        weights = np.zeros((idx.size, vocab + (-vocab % _BLOCK)), dtype=np.float32)  # (rows, blocks * _BLOCK)
        w = weights[:, :vocab]
        np.subtract(lp if idx.size == rows else lp[idx], top[idx, None], out=w)  # <= 0: exp cannot overflow
        inverse = np.array([1.0 / params[r].temperature for r in plain], dtype=np.float32)
        if (inverse != 1).any():
            w *= inverse[:, None]
        np.exp(w, out=w)
        w[:, ban] = 0.0
        alive = np.add.reduce(w, axis=1) > 0  # False: every allowed word underflowed next to a banned best word
        if alive.all():
            tokens[idx] = _draw_plain(weights, vocab, uniforms)
        else:
            if alive.any():
                tokens[idx[alive]] = _draw_plain(weights[alive], vocab, uniforms[alive])
            for r, u in zip(idx[~alive], uniforms[~alive]):  # rare: shift by the best allowed word instead
                tokens[r] = _draw_filtered(_banned_copy(lp[r], ban), params[r], float(u))
    for r in exact:
        scores = _banned_copy(lp[r], ban)
        if params[r].greedy:
            tokens[r] = int(np.argmax(scores))  # first maximum: lower id wins a tie
        else:
            tokens[r] = _draw_filtered(scores, params[r], rngs[r].random())
    return tokens, np.exp(lp[np.arange(rows), tokens].astype(np.float64))


def _banned_copy(row: np.ndarray, ban: np.ndarray) -> np.ndarray:
    scores = row.astype(np.float32)  # (V,) a copy
    scores[ban] = -np.inf
    if scores.max() == -np.inf:
        raise ValueError("every id is banned or has probability 0")
    return scores


def sample(log_probs: np.ndarray, params: SamplingParams, rng: Uniform,
           banned: frozenset[int] = frozenset()) -> tuple[int, float]:
    """(token id, the model's unmodified probability of it) drawn under params; banned ids never."""
    lp = np.asarray(log_probs)
    if lp.ndim != 1:
        raise ValueError(f"log_probs must be a 1-D vector, got shape {lp.shape}")
    tokens, probs = sample_rows(lp[None, :], [params], [rng], banned)
    return int(tokens[0]), float(probs[0])
