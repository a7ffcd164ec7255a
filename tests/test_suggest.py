"""service/suggest.py: the prefix index and the word filter against a brute-force scan of the vocabulary."""

from __future__ import annotations

import numpy as np
import pytest

from service.suggest import Index, Lexicon, Query, fold, pickable

WORDS = ("<unk>", "<eos>", "the", ",", ".", "@-@", "@,@", "The", "January", "Japan", "jam", "Jar", "ja", "'s",
         "n't", "1990", "Straße", "strasse", "é", "e\u0301t\u00e9", "<formula>", "...", "--", "Ja\U0010ffff",
         "Ja\U0010ffffx", "Jb", "j")


def _distribution(seed: int) -> np.ndarray:
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2, len(WORDS))
    return (logits - np.log(np.exp(logits).sum())).astype(np.float32)  # (vocab,) log-probabilities


def _brute(log_probs: np.ndarray, query: Query) -> tuple[list[int], float]:
    """Every candidate id by descending probability (ties by id), and their mass, by scanning the vocabulary."""
    def matches(word: str) -> bool:
        if query.words_only and not pickable(word):
            return False
        if not query.prefix:
            return True
        if query.case_sensitive:
            import unicodedata
            return unicodedata.normalize("NFC", word).startswith(unicodedata.normalize("NFC", query.prefix))
        return fold(word).startswith(fold(query.prefix))

    ids = [i for i, w in enumerate(WORDS) if matches(w)]
    ids.sort(key=lambda i: (-float(log_probs[i]), i))
    return ids, float(np.exp(log_probs[ids].astype(np.float64)).sum())


@pytest.mark.parametrize("word, expected", [
    ("the", True), ("'s", True), ("n't", True), ("1990", True), ("é", True),
    ("<unk>", False), ("<eos>", False), ("<formula>", False), ("@-@", False), ("@,@", False), ("@.@", False),
    (",", False), ("...", False), ("--", False), ("—", False), ("£", False), ("=", False),
])
def test_pickable(word, expected):
    assert pickable(word) is expected


QUERIES = [Query(p, cs, wo) for p in (None, "", "j", "J", "ja", "JA", "Ja", "jan", "JANUARY", "januaryx", "x", "t",
                                        "straß", "STRASSE", "e\u0301", "é", "Ja\U0010ffff", "\U0010ffff", ",", "<")
           for cs in (False, True) for wo in (False, True)]


@pytest.mark.parametrize("seed", [0, 1])
@pytest.mark.parametrize("query", QUERIES, ids=repr)
def test_rank_equals_a_scan_of_the_vocabulary(query, seed):
    lexicon = Lexicon(WORDS)
    log_probs = _distribution(seed)
    expected, mass = _brute(log_probs, query)
    for k in (1, 3, len(WORDS)):
        ranked = lexicon.rank(log_probs, k, query)
        assert ranked.ids.tolist() == expected[:k]
        assert ranked.candidates == len(expected)
        assert ranked.mass == pytest.approx(mass, rel=1e-5)
        if expected:
            raw = np.exp(log_probs[expected[:k]].astype(np.float64))
            assert ranked.probabilities == pytest.approx(raw / mass, rel=1e-5)
        else:
            assert ranked.probabilities.size == 0


def test_case_insensitive_returns_the_vocabularys_spelling():
    lexicon = Lexicon(WORDS)
    ranked = lexicon.rank(_distribution(3), 10, Query("jA"))
    assert {WORDS[i] for i in ranked.ids} == {"January", "Japan", "jam", "Jar", "ja", "Ja\U0010ffff",
                                               "Ja\U0010ffffx"}
    assert abs(ranked.probabilities.sum() - 1) < 1e-9


def test_ties_go_to_the_lower_id():
    lexicon = Lexicon(WORDS)
    flat = np.full(len(WORDS), -np.log(len(WORDS)), dtype=np.float32)
    assert lexicon.rank(flat, 3, Query("j")).ids.tolist() == sorted(i for i, w in enumerate(WORDS)
                                                                    if w.lower().startswith("j"))[:3]
    assert lexicon.rank(flat, 3, Query(words_only=True)).ids.tolist() == [2, 7, 8]


def test_words_only_mass_when_nearly_everything_is_punctuation():
    """The mass of the words is summed directly when 1 - (the others' mass) would lose its digits."""
    lexicon = Lexicon(WORDS)
    log_probs = np.full(len(WORDS), -40.0, dtype=np.float32)
    log_probs[WORDS.index(",")] = 0.0  # everything on the comma
    log_probs[WORDS.index("the")] = -20.0
    ranked = lexicon.rank(log_probs, 2, Query(words_only=True))
    assert WORDS[ranked.ids[0]] == "the"
    assert ranked.mass == pytest.approx(np.exp(-20.0) + (len(WORDS) - 12) * np.exp(-40.0), rel=1e-3)
    assert ranked.probabilities[0] == pytest.approx(1.0, abs=1e-6)


def test_index_bounds_are_the_matching_range():
    words = ("b", "a", "ab", "abc", "b\U0010ffff", "b\U0010ffffa", "c")
    index = Index(words, list(range(len(words))), str)
    assert index.keys == sorted(words)
    for prefix in ("", "a", "ab", "abcd", "b", "b\U0010ffff", "\U0010ffff", "c", "d"):
        lo, hi = index.bounds(prefix)
        assert [k for k in index.keys if k.startswith(prefix)] == index.keys[lo:hi]
