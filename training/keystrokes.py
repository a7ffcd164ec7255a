"""Keystroke savings (KS) of an exported bundle on a text, through onnxruntime (no torch): how many keystrokes a
typist saves when a keyboard shows the model's top N suggestions for the word being typed.

The simulated typist (the measure of Trnka & McCoy 2008 and of Garay-Vitoria & Abascal's 2006 survey; docs/typing.md
says it in full): before each character of each word, the keyboard shows the N most likely words that start with the
characters typed so far (case-insensitively, words only: exactly what POST /predict answers with `prefix` and
`words_only`, ranked by service/suggest.py's index); if the word is among them the typist takes it for one keystroke,
and the space after it comes with it. Without suggestions a word of L characters costs L + 1 keystrokes (its
characters and a space); with them, j + 1 when it was taken after j characters, else L + 1.
KS = 1 - (keystrokes with suggestions) / (keystrokes without).

Only words count (tokens a person would pick, service.suggest.pickable): punctuation, line breaks, WikiText's
joiners and `<unk>` (whose spelling the corpus hides) are typed as they are and left out of both counts, but they
are read as context like every other token. The text is cut into `batch_size` parallel streams, each read from a
line start with its state carried (as `training.evaluate.perplexity` does), one onnxruntime call per token of
every stream; a word competes only with the words that the model ranks above it, found once per word.
"""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from service.suggest import Lexicon, fold
from training.bundle import open_bundle
from training.data import batchify, read_lines
from training.errors import TrainingError
from training.evaluate import zero_state


class _Typist:
    """Keystrokes for one word given the distribution it was predicted from."""

    def __init__(self, words: list[str], top: int):
        self.words, self.top = words, top
        lexicon = Lexicon(tuple(words))
        self.countable = lexicon.pickable  # (vocab,) bool: the tokens that count as words
        self.index = lexicon.index(case_sensitive=False, words_only=True)
        self.position = np.full(len(words), -1, dtype=np.int64)  # (vocab,) place in the index; -1: never shown
        self.position[self.index.ids] = np.arange(self.index.ids.size)
        self._bounds: dict[int, list[tuple[int, int]]] = {}

    def bounds(self, word_id: int) -> list[tuple[int, int]]:
        """The index range of the words a keyboard shows before character j of this word is typed, for each j."""
        if word_id not in self._bounds:
            word = self.words[word_id]
            self._bounds[word_id] = [self.index.bounds(fold(word[:j])) for j in range(len(word))]
        return self._bounds[word_id]

    def keystrokes(self, row: np.ndarray, word_id: int) -> int:
        """Keystrokes to enter the word (and a space) with the top suggestions of `row`, (vocab,) log-probs."""
        value = row[word_id]
        above = np.flatnonzero(row > value)
        tied = np.flatnonzero(row[:word_id] == value)  # ties rank by the lower id, as the service's do
        rivals = self.position[np.concatenate([above, tied])]
        rivals = np.sort(rivals[rivals >= 0])  # index places of the words shown before this one
        for typed, (lo, hi) in enumerate(self.bounds(word_id)):
            if np.searchsorted(rivals, hi) - np.searchsorted(rivals, lo) < self.top:
                return typed + 1  # taken after `typed` characters: one keystroke to accept
        return len(self.words[word_id]) + 1


def _first_words(lines: list[list[str]], countable: set[str], max_words: int) -> list[list[str]]:
    """The first lines that hold `max_words` countable words (whole lines); every line for 0."""
    if not max_words:
        return lines
    out, seen = [], 0
    for line in lines:
        if seen >= max_words:
            break
        out.append(line)
        seen += sum(w in countable for w in line)
    return out


def keystroke_savings(bundle: str | Path, text: str | Path, top: int = 3, batch_size: int = 64,
                      max_words: int = 0) -> dict:
    if top < 1:
        raise TrainingError(f"--keystrokes must be at least 1, got {top}")
    if max_words < 0:
        raise TrainingError(f"--max-words must not be negative, got {max_words}")
    started = time.perf_counter()
    manifest, vocab, session = open_bundle(bundle)
    typist = _Typist(vocab.words, top)
    countable = {w for w, c in zip(vocab.words, typist.countable) if c}
    lines = _first_words(read_lines(Path(text)), countable, max_words)
    ids = vocab.encode(lines)
    streams = batchify(ids, batch_size if batch_size < 1 else min(batch_size, max(1, ids.size // 2)))  # (batch, n)
    data = np.concatenate([np.full((streams.shape[0], 1), vocab.eos), streams], axis=1)  # each read from a line start
    outputs = ["log_probs"] + [s["output"] for s in manifest["state"]]
    state = zero_state(manifest, data.shape[0])
    words = plain = with_suggestions = taken_at_once = 0
    for t in range(data.shape[1] - 1):
        log_probs, *new = session.run(outputs, {"tokens": data[:, t: t + 1], **state})  # (batch, vocab)
        state = {s["input"]: h for s, h in zip(manifest["state"], new)}
        for row, word_id in enumerate(data[:, t + 1].tolist()):
            if not typist.countable[word_id]:
                continue
            cost = typist.keystrokes(log_probs[row], word_id)
            words += 1
            plain += len(vocab.words[word_id]) + 1
            with_suggestions += cost
            taken_at_once += cost == 1
    return {"bundle": str(bundle), "text": str(text), "top": top, "max_words": max_words,
            "lines": len(lines), "tokens": int(streams.size), "words": words, "keystrokes": plain,
            "keystrokes_with_suggestions": with_suggestions,
            "keystroke_savings": round(1 - with_suggestions / plain, 4) if plain else None,
            "taken_before_typing": round(taken_at_once / words, 4) if words else None,
            "batch_size": int(data.shape[0]), "wall_seconds": round(time.perf_counter() - started, 1)}
