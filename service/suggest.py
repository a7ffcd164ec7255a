"""Ranks next words for someone typing: the words that complete the word in progress, and only words a person would
pick. Knows a vocabulary and log-probability vectors; nothing of models, sessions, HTTP or how text is tokenized.

A `Lexicon` is built once per bundle: the vocabulary sorted by case-folded spelling and by exact spelling, each
with and without the tokens no one would pick, and each holding the word ids in that order. The words that start
with a prefix are then one contiguous range of an index, found by two binary searches (`Index.range`), so a request
costs a gather of that range from the distribution, never a scan of the vocabulary.

What no one would pick (`pickable` is false): the special tokens (`<unk>`, `<eos>`, anything written `<name>`),
WikiText's joiners inside numbers and hyphenated words (`@-@`, `@,@`, `@.@`), and tokens without a letter or a
digit (punctuation and symbols, which a keyboard types directly). Clitics (`'s`, `n't`) are words here.

`Lexicon.rank` renormalises over the candidates (the words matching the prefix, the pickable ones with
`words_only`) and reports the probability mass they had together before that, so a caller can tell "Ja… is
probably January" (high mass) from "nothing starting with Ja was likely" (low mass). Training's keystroke-savings
evaluation (training/keystrokes.py) ranks with the same index and the same rule, so its figure is what a keyboard
using this service gets.
"""

from __future__ import annotations

import bisect
import re
import unicodedata
from dataclasses import dataclass

import numpy as np

from service.sampling import top_k

_PLACEHOLDER = re.compile(r"<[^<>\s]+>|@\S@")  # <unk> <eos> <formula>; WikiText's @-@ @,@ @.@
_LAST_CODE_POINT = "\U0010ffff"
_TRUSTED_MASS = 1e-3  # below this, 1 - (the others' mass) has too few correct digits (float32 sums to 1 +- 1e-6)


def pickable(word: str) -> bool:
    """Whether a person would pick this token as a suggestion (see the module docstring)."""
    return _PLACEHOLDER.fullmatch(word) is None and any(ch.isalnum() for ch in word)


def fold(text: str) -> str:
    """The case-insensitive key: NFC, then Unicode case folding (ß matches ss, Σ matches σ and ς)."""
    return unicodedata.normalize("NFC", text).casefold()


def exact(text: str) -> str:
    """The case-sensitive key: NFC only (a decomposed é typed by a keyboard matches the vocabulary's é)."""
    return unicodedata.normalize("NFC", text)


def _successor(prefix: str) -> str | None:
    """The smallest string greater than every string that starts with `prefix` (None: no such string)."""
    stripped = prefix.rstrip(_LAST_CODE_POINT)
    return stripped[:-1] + chr(ord(stripped[-1]) + 1) if stripped else None


def _best(scores: np.ndarray, ids: np.ndarray, k: int) -> np.ndarray:
    """Positions of the k highest scores, highest first; ties (at the k-th value too) go to the lower id."""
    if k < scores.size:
        kth = np.partition(scores, scores.size - k)[scores.size - k]  # the k-th highest value
        above, tied = np.flatnonzero(scores > kth), np.flatnonzero(scores == kth)
        tied = tied[np.argsort(ids[tied], kind="stable")][: k - above.size]  # the range is in key order, not id
        chosen = np.concatenate([above, tied])
    else:
        chosen = np.arange(scores.size)
    return chosen[np.lexsort((ids[chosen], -scores[chosen]))]


class Index:
    """Word ids sorted by a key of their spelling (ties by id): the words whose key starts with a given key prefix
    are `ids[lo:hi]` for the (lo, hi) that `bounds` finds."""

    def __init__(self, words: tuple[str, ...], ids: list[int], key):
        order = sorted(ids, key=lambda i: (key(words[i]), i))
        self.keys = [key(words[i]) for i in order]
        self.ids = np.array(order, dtype=np.int64)  # (n,) word ids in key order

    def bounds(self, key_prefix: str) -> tuple[int, int]:
        lo = bisect.bisect_left(self.keys, key_prefix)
        successor = _successor(key_prefix)
        hi = len(self.keys) if successor is None else bisect.bisect_left(self.keys, successor, lo)
        return lo, hi

    def range(self, key_prefix: str) -> np.ndarray:
        lo, hi = self.bounds(key_prefix)
        return self.ids[lo:hi]  # a view: no copy


@dataclass(frozen=True)
class Query:
    """What to rank: the word in progress (None or "": any word), how to match it, and whether to keep only words."""

    prefix: str | None = None
    case_sensitive: bool = False
    words_only: bool = False

    @property
    def filters(self) -> bool:
        return bool(self.prefix) or self.words_only


@dataclass(frozen=True)
class Ranked:
    ids: np.ndarray  # (k,) int64: word ids, most likely first
    probabilities: np.ndarray  # (k,) float64: renormalised over the candidates
    candidates: int  # how many words were ranked (0: the prefix matches nothing)
    mass: float  # the probability the candidates had together before renormalising


class Lexicon:
    """One vocabulary's indexes. Build it once per bundle (about 0.1 s for 33k words)."""

    def __init__(self, words: tuple[str, ...]):
        every = list(range(len(words)))
        self.pickable = np.array([pickable(w) for w in words], dtype=bool)  # (vocab,)
        picked = np.flatnonzero(self.pickable)
        self.pickable_ids = picked.astype(np.int64)  # (pickable,) ascending ids
        self.unpickable_ids = np.flatnonzero(~self.pickable).astype(np.int64)  # (others,): 77 of WikiText-2's 33 278
        self._indexes = {(case_sensitive, words_only): Index(words, picked.tolist() if words_only else every,
                                                             exact if case_sensitive else fold)
                         for case_sensitive in (False, True) for words_only in (False, True)}

    def index(self, case_sensitive: bool = False, words_only: bool = False) -> Index:
        return self._indexes[(case_sensitive, words_only)]

    def candidates(self, query: Query) -> np.ndarray:
        """The ids a query ranks: a range of an index, or every pickable id (a prefix of "" matches every word)."""
        if not query.prefix:
            return self.pickable_ids if query.words_only else np.arange(self.pickable.size, dtype=np.int64)
        key = exact if query.case_sensitive else fold
        return self.index(query.case_sensitive, query.words_only).range(key(query.prefix))

    def rank(self, log_probs, k: int, query: Query) -> Ranked:
        """The k most likely candidates of `query` under a (vocab,) log-probability vector (a host array, or a device
        row: see `service.sampling.top_k`), renormalised over the candidates. Ties go to the lower id."""
        if not query.prefix:  # every word, or every pickable one: the few others are set aside, not the many kept
            return self._rank_pickable(log_probs, k) if query.words_only else Ranked(
                *top_k(log_probs, k), self.pickable.size, 1.0)
        candidates = self.candidates(query)
        if candidates.size == 0:
            return Ranked(np.empty(0, np.int64), np.empty(0), 0, 0.0)
        scores = np.asarray(log_probs)[candidates].astype(np.float64)  # (candidates,)
        weights = np.exp(scores)
        mass = float(weights.sum())
        best = _best(scores, candidates, k)  # positions in candidates, most likely first
        return Ranked(candidates[best], weights[best] / mass if mass > 0 else weights[best], int(candidates.size),
                      mass)

    def _rank_pickable(self, log_probs, k: int) -> Ranked:
        """`rank` over every pickable word: the best k + (the others' count) words hold the best k pickable ones, and
        their mass is 1 less the others' (summed directly when that difference is too small to trust at float32's
        precision)."""
        others = self.unpickable_ids
        ids, probabilities = top_k(log_probs, min(k + others.size, self.pickable.size))
        keep = self.pickable[ids]
        ids, probabilities = ids[keep][:k], probabilities[keep][:k]
        row = np.asarray(log_probs)
        mass = 1.0 - float(np.exp(row[others].astype(np.float64)).sum())
        if mass < _TRUSTED_MASS:
            mass = float(np.exp(row[self.pickable_ids].astype(np.float64)).sum())
        return Ranked(ids, probabilities / mass if mass > 0 else probabilities, self.pickable_ids.size, mass)
