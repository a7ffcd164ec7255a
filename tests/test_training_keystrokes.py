"""training/keystrokes.py: the simulated typist takes a word exactly when POST /predict's ranking (service/suggest.py
with `prefix` and `words_only`) shows it, and `python -m training evaluate --keystrokes N` reports its savings on a
real exported bundle."""

from __future__ import annotations

import json

import numpy as np
import pytest

from service.suggest import Lexicon, Query
from training.__main__ import main
from training.keystrokes import _Typist, keystroke_savings

WORDS = ["<unk>", "<eos>", "the", "The", "then", "there", ",", ".", "@-@", "January", "Japan", "jam", "ja", "a",
         "an", "and", "'s", "1990", "théâtre", "x"]


def _by_the_service(row: np.ndarray, word_id: int, top: int) -> int:
    """Keystrokes for a word, asking the service's ranking before each character."""
    lexicon, word = Lexicon(tuple(WORDS)), WORDS[word_id]
    for typed in range(len(word)):
        if word_id in lexicon.rank(row, top, Query(word[:typed], words_only=True)).ids.tolist():
            return typed + 1
    return len(word) + 1


@pytest.mark.parametrize("top", [1, 2, 3, 5])
@pytest.mark.parametrize("seed", range(6))
def test_the_typist_takes_a_word_when_the_service_would_show_it(seed, top):
    rng = np.random.default_rng(seed)
    logits = rng.normal(0, 2, len(WORDS))
    if seed % 2:  # ties: the service ranks them by the lower id, so must the typist
        logits[[2, 3, 4]] = logits[5]
    row = (logits - np.log(np.exp(logits).sum())).astype(np.float32)
    typist = _Typist(WORDS, top)
    for word_id, word in enumerate(WORDS):
        if typist.countable[word_id]:
            assert typist.keystrokes(row, word_id) == _by_the_service(row, word_id, top), word


def test_savings_on_a_real_bundle(tiny_bundle, tiny_corpus):
    text = tiny_corpus / "test.txt"
    one = keystroke_savings(tiny_bundle, text, top=1, batch_size=4)
    three = keystroke_savings(tiny_bundle, text, top=3, batch_size=4)
    every = keystroke_savings(tiny_bundle, text, top=10_000, batch_size=4)
    lines = text.read_text().splitlines()
    # the words: every token but `.` and the held-out word (read as <unk>), less the streams' cut tail
    words = sum(len([w for w in line.split() if w not in (".", "zebra")]) for line in lines)
    assert words - 3 <= three["words"] <= words
    assert three["keystrokes"] > three["words"]
    # a typist shown every word takes each before typing: one keystroke per word
    assert every["keystrokes_with_suggestions"] == every["words"]
    assert every["taken_before_typing"] == 1
    assert 0 < one["keystroke_savings"] <= three["keystroke_savings"] <= every["keystroke_savings"] < 1
    assert three["keystroke_savings"] == pytest.approx(1 - three["keystrokes_with_suggestions"] /
                                                       three["keystrokes"], abs=1e-4)


def test_max_words_reads_whole_lines(tiny_bundle, tiny_corpus):
    part = keystroke_savings(tiny_bundle, tiny_corpus / "test.txt", top=3, batch_size=2, max_words=20)
    assert 20 <= part["words"] < 20 + 6  # the line that reaches 20 words is read whole
    assert part["lines"] < len((tiny_corpus / "test.txt").read_text().splitlines())


def test_command_line(tiny_bundle, tiny_corpus, capsys):
    args = ["evaluate", "--bundle", str(tiny_bundle), "--text", str(tiny_corpus / "test.txt"), "--keystrokes", "3",
            "--batch-size", "4"]
    assert main(args) == 0
    result = json.loads(capsys.readouterr().out)
    assert result == {**keystroke_savings(tiny_bundle, tiny_corpus / "test.txt", 3, 4),
                      "wall_seconds": result["wall_seconds"]}
    assert main(args[:-4] + ["--keystrokes", "0"]) == 2
    assert "--keystrokes must be at least 1" in capsys.readouterr().err


def test_no_streams_is_one_error_line(tiny_bundle, tiny_corpus, capsys):
    args = ["evaluate", "--bundle", str(tiny_bundle), "--text", str(tiny_corpus / "test.txt"), "--keystrokes", "3"]
    assert main([*args, "--batch-size", "0"]) == 2
    assert "batch size must be positive" in capsys.readouterr().err
    assert main([*args, "--max-words", "-1"]) == 2
    assert "--max-words must not be negative" in capsys.readouterr().err
