"""training.data: reading a WikiText-style corpus, the vocabulary built from train, batchify."""

from __future__ import annotations

import collections
import hashlib

import numpy as np
import pytest

from service.bundle import file_sha256
from training.data import EOS, UNK, Corpus, Vocab, batchify, check_corpus, read_lines
from training.derive import derive
from training.errors import TrainingError

OOV = "zebra"  # tests/conftest.py puts it in valid/test only


def _tokens(path) -> list[str]:
    """The corpus convention, written out independently: whitespace tokens plus one <eos> per line."""
    out = []
    for line in path.read_text(encoding="utf-8").splitlines():
        out += line.split() + [EOS]
    return out


def test_tiny_corpus_has_wikitext_layout(tiny_corpus):
    for split in ("train", "valid", "test"):
        lines = (tiny_corpus / f"{split}.txt").read_text(encoding="utf-8").splitlines(keepends=True)
        assert len(lines) >= 50
        assert all(line.startswith(" ") and line.endswith(" \n") for line in lines)
    assert OOV not in _tokens(tiny_corpus / "train.txt")
    assert OOV in _tokens(tiny_corpus / "valid.txt") and OOV in _tokens(tiny_corpus / "test.txt")


def test_vocabulary_comes_from_train_only_ordered_by_frequency(tiny_corpus):
    corpus = Corpus.load(tiny_corpus)
    train_counts = collections.Counter(_tokens(tiny_corpus / "train.txt"))
    words = corpus.vocab.words
    assert set(words) == set(train_counts) | {UNK}
    assert OOV not in corpus.vocab.index
    assert len(words) == len(set(words))
    counts = [train_counts.get(w, 0) for w in words]
    assert counts == sorted(counts, reverse=True), "vocabulary must be ordered by descending train frequency"
    assert corpus.vocab.eos == words.index(EOS) and corpus.vocab.unk == words.index(UNK)
    assert words[-1] == UNK  # train never says <unk>: it is added with count 0, so it comes last


def test_splits_encode_to_ids_and_unseen_words_map_to_unk(tiny_corpus):
    corpus = Corpus.load(tiny_corpus)
    vocab = corpus.vocab
    for split in ("train", "valid", "test"):
        tokens = _tokens(tiny_corpus / f"{split}.txt")
        ids = getattr(corpus, split)
        assert ids.dtype == np.int64 and ids.shape == (len(tokens),)
        expected = [vocab.index.get(t, vocab.unk) for t in tokens]
        assert ids.tolist() == expected
        assert int((ids == vocab.eos).sum()) == len((tiny_corpus / f"{split}.txt").read_text().splitlines())
    assert not (corpus.train == vocab.unk).any()
    n_oov = _tokens(tiny_corpus / "valid.txt").count(OOV)
    assert n_oov > 0 and int((corpus.valid == vocab.unk).sum()) == n_oov


def test_corpus_records_each_split_sha256(tiny_corpus):
    corpus = Corpus.load(tiny_corpus)
    for split in ("train", "valid", "test"):
        real = hashlib.sha256((tiny_corpus / f"{split}.txt").read_bytes()).hexdigest()
        assert corpus.sha256[f"{split}.txt"] == real == file_sha256(tiny_corpus / f"{split}.txt")


def test_corpus_load_with_a_given_vocab_keeps_its_ids(tiny_corpus):
    vocab = Vocab(["the", "zz", EOS, UNK])  # a checkpoint's vocabulary, unrelated to this corpus
    corpus = Corpus.load(tiny_corpus, vocab)
    assert corpus.vocab is vocab
    assert set(np.unique(corpus.train).tolist()) == {0, vocab.eos, vocab.unk}  # "the", <eos>, the rest


def test_build_breaks_frequency_ties_by_first_occurrence_and_keeps_a_corpus_unk():
    lines = [["b", "a", "c", EOS], ["a", "c", UNK, "b", "d", EOS]]
    vocab = Vocab.build(lines)
    # counts: b 2, a 2, c 2, <eos> 2 (first seen in that order), then <unk> 1 and d 1 (<unk> seen first)
    assert vocab.words == ["b", "a", "c", EOS, UNK, "d"]


def test_vocab_file_is_one_word_per_line(tmp_path):
    vocab = Vocab(["the", ",", EOS, UNK, "@-@", "naïve"])
    path = tmp_path / "vocab.txt"
    vocab.write(path)
    assert path.read_text(encoding="utf-8").split("\n") == vocab.words + [""]


def test_read_lines_appends_eos_per_line_including_blank_lines(tmp_path):
    path = tmp_path / "t.txt"
    path.write_text(" a b \n \n c \n", encoding="utf-8")
    assert read_lines(path) == [["a", "b", EOS], [EOS], ["c", EOS]]


@pytest.mark.parametrize("content, message", [
    (None, "corpus file not found"),
    (b"", "has no tokens"),
    (b" \n \n", "has no tokens"),
    (b" caf\xe9 \n", "not valid UTF-8"),
], ids=["missing", "empty", "blank-lines", "latin-1"])
def test_read_lines_rejects_bad_files(tmp_path, content, message):
    path = tmp_path / "train.txt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(TrainingError, match=message) as err:
        read_lines(path)
    assert str(path) in str(err.value)


def test_missing_corpus_folder_is_a_training_error(tmp_path):
    with pytest.raises(TrainingError, match="corpus folder not found"):
        Corpus.load(tmp_path / "nope")


def test_batchify_cuts_parallel_streams_and_drops_the_remainder():
    ids = np.arange(23, dtype=np.int64)
    data = batchify(ids, 4)  # 5 tokens per stream, 3 dropped
    assert data.shape == (4, 5)
    assert data[1].tolist() == [5, 6, 7, 8, 9]  # row b continues the stream, not interleaved
    assert data.reshape(-1).tolist() == list(range(20))


@pytest.mark.parametrize("n, batch", [(7, 4), (3, 2), (10, 0)])
def test_batchify_refuses_too_short_or_bad_batches(n, batch):
    with pytest.raises(TrainingError):
        batchify(np.arange(n, dtype=np.int64), batch)


def test_check_corpus_accepts_the_tiny_corpus_and_finds_a_blank_split(tiny_corpus, tmp_path):
    check_corpus(tiny_corpus)
    folder = tmp_path / "c"
    folder.mkdir()
    for split in ("train", "valid", "test"):
        (folder / f"{split}.txt").write_text((tiny_corpus / f"{split}.txt").read_text())
    (folder / "test.txt").write_text(" \n \n")
    with pytest.raises(TrainingError, match="corpus file has no tokens: .*test.txt"):
        check_corpus(folder)


def test_derive_cuts_consecutive_splits_from_one_file_with_a_smaller_vocabulary(tiny_corpus, tmp_path):
    sizes = derive(tiny_corpus / "train.txt", tmp_path / "small", words=12, train_tokens=800, eval_tokens=200)
    corpus = Corpus.load(tmp_path / "small")
    assert len(corpus.vocab) <= 12 and UNK in corpus.vocab.words
    assert corpus.train.size == sizes["train"] >= 800 and corpus.valid.size == sizes["valid"] >= 200
    source = read_lines(tiny_corpus / "train.txt")
    n_train = len(read_lines(tmp_path / "small" / "train.txt"))
    keep = set(corpus.vocab.words)
    assert read_lines(tmp_path / "small" / "valid.txt")[0] == [w if w in keep else UNK for w in source[n_train]]
    with pytest.raises(TrainingError, match="too few tokens"):
        derive(tiny_corpus / "train.txt", tmp_path / "big", words=12, train_tokens=10**6, eval_tokens=200)
