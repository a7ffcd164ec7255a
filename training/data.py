"""Reads a WikiText/PTB-style corpus folder into token ids (numpy). Knows nothing of torch, models or ONNX.

A corpus folder holds `train.txt`, `valid.txt` and `test.txt`: whitespace-separated tokens, and
one `<eos>` appended per line. The vocabulary is built from `train.txt` alone, ordered by
descending frequency (ties: first occurrence) so an adaptive softmax can put frequent words in
its head; words of valid/test that train never saw map to `<unk>`.
"""

from __future__ import annotations

import collections
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from service.bundle import EOS, UNK, file_sha256  # the bundle contract spells the special tokens
from training.errors import TrainingError

SPLITS = ("train", "valid", "test")


def read_lines(path: Path) -> list[list[str]]:
    """Token lists, one per line, each ending in `<eos>`; a clear error for a missing/empty file."""
    if not path.is_file():
        raise TrainingError(f"corpus file not found: {path}")
    lines = []
    with path.open(encoding="utf-8", errors="strict") as f:
        try:
            for line in f:
                lines.append(line.split() + [EOS])
        except UnicodeDecodeError as e:
            raise TrainingError(f"{path} is not valid UTF-8: {e}") from None
    if not any(len(words) > 1 for words in lines):
        raise TrainingError(f"corpus file has no tokens: {path}")
    return lines


def check_corpus(folder: str | Path) -> None:
    """Fails fast on a missing folder or split, or a split without tokens, reading only up to each first token."""
    folder = Path(folder)
    if not folder.is_dir():
        raise TrainingError(f"corpus folder not found: {folder}")
    for split in SPLITS:
        path = folder / f"{split}.txt"
        if not path.is_file():
            raise TrainingError(f"corpus file not found: {path}")
        with path.open(encoding="utf-8", errors="replace") as f:
            if not any(line.split() for line in f):
                raise TrainingError(f"corpus file has no tokens: {path}")


@dataclass
class Vocab:
    """id <-> word. `words[i]` is the word with id i (= its line in vocab.txt)."""

    words: list[str]

    def __post_init__(self) -> None:
        self.index = {w: i for i, w in enumerate(self.words)}

    @classmethod
    def build(cls, lines: list[list[str]]) -> "Vocab":
        counts = collections.Counter(w for words in lines for w in words)
        counts.setdefault(UNK, 0)  # a corpus without <unk> still needs one for unseen words
        first_seen: dict[str, int] = {}
        for words in lines:
            for w in words:
                first_seen.setdefault(w, len(first_seen))
        first_seen.setdefault(UNK, len(first_seen))
        words = sorted(counts, key=lambda w: (-counts[w], first_seen[w]))
        return cls(words)

    def __len__(self) -> int:
        return len(self.words)

    @property
    def unk(self) -> int:
        return self.index[UNK]

    @property
    def eos(self) -> int:
        return self.index[EOS]

    def encode(self, lines: list[list[str]]) -> np.ndarray:
        unk = self.unk
        return np.array([self.index.get(w, unk) for words in lines for w in words], dtype=np.int64)

    def write(self, path: Path) -> None:
        """vocab.txt: one word per line, id = line number (service/bundle.py reads it back)."""
        path.write_text("".join(w + "\n" for w in self.words), encoding="utf-8")


@dataclass
class Corpus:
    """The three splits as flat id tensors, plus the vocabulary built from train."""

    vocab: Vocab
    train: np.ndarray  # (n_train,) int64
    valid: np.ndarray  # (n_valid,) int64
    test: np.ndarray  # (n_test,) int64
    sha256: dict[str, str]

    @classmethod
    def load(cls, folder: str | Path, vocab: Vocab | None = None) -> "Corpus":
        folder = Path(folder)
        check_corpus(folder)
        lines = {split: read_lines(folder / f"{split}.txt") for split in SPLITS}
        vocab = vocab or Vocab.build(lines["train"])
        ids = {split: vocab.encode(lines[split]) for split in SPLITS}
        sha = {f"{split}.txt": file_sha256(folder / f"{split}.txt") for split in SPLITS}
        return cls(vocab, ids["train"], ids["valid"], ids["test"], sha)


def batchify(ids: np.ndarray, batch_size: int) -> np.ndarray:
    """Cut a flat stream into `batch_size` parallel streams: (n, ) -> (batch, n // batch).

    Row b continues where its previous chunk ended, so the state can be carried across chunks.
    """
    if batch_size < 1:
        raise TrainingError(f"batch size must be positive, got {batch_size}")
    n = ids.size // batch_size
    if n < 2:
        raise TrainingError(f"a split of {ids.size} tokens is too short for batch size {batch_size}")
    return ids[: n * batch_size].reshape(batch_size, n)  # (batch, n)
