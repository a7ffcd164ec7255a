"""Measures service/tokenizer.py against sacremoses on a WikiText corpus: how many lines each gives back
exactly. Run by hand, once per change of either (the test suite never reads the corpus); needs sacremoses,
which is not a dependency of the project:

    .venv/bin/pip install sacremoses==0.2.0
    .venv/bin/python tools/compare_tokenizers.py ../shared/data/wikitext-2/train.txt

Each non-blank corpus line is detokenized, by ours and by sacremoses' MosesDetokenizer (after `@-@` `@,@`
`@.@` are joined back, which it does not know), and each text is tokenized again by ours and by sacremoses'
MosesTokenizer with the WikiText layer (number separators split into `@,@` `@.@`, and what ours does
around Moses: NFC, control characters, curly quotes, `<unk>` kept whole). A line counts as exact when the
tokens equal the corpus line's. Then the lines that differ are tallied by the first token where they part,
and both tokenizers are timed on an 8-word text. It also checks that every fragment of the corpus that
tests/test_tokenizer.py quotes is in the corpus.
"""

from __future__ import annotations

import argparse
import collections
import re
import sys
import timeit
from pathlib import Path

from sacremoses import MosesDetokenizer, MosesTokenizer

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from service import tokenizer  # noqa: E402
from tests.test_tokenizer import CORPUS_FRAGMENTS  # noqa: E402

TYPICAL = "The film was released in the United States."  # 8 words, as a /predict text typically is
_MOSES = MosesTokenizer(lang="en")
_MOSES_DETOKENIZER = MosesDetokenizer(lang="en")
_IN_NUMBER = re.compile(r"(?<=\d)([.,])(?=\d)")
_JOINED = re.compile(r" @([-,.])@ ")


def sacremoses_tokenize(text: str) -> list[str]:
    """sacremoses with the WikiText layer, lines and specials handled as service.tokenizer handles them."""
    tokens: list[str] = []
    for i, line in enumerate(tokenizer._LINE_BREAK.split(tokenizer._clean(text))):
        if i:
            tokens.append(tokenizer.EOS)
        pieces = tokenizer._SPECIAL.split(line.translate(tokenizer._STRAIGHTEN))  # text, special, ..., text
        for j, piece in enumerate(pieces):
            if j % 2:
                tokens.append(piece)
                continue
            # where a word touches `<unk>` (`<unk>'s`, `non-<unk>`), a letter stands in for it, as ours does
            left, right = j > 0 and piece[:1].strip() != "", j + 1 < len(pieces) and piece[-1:].strip() != ""
            words = _MOSES.tokenize("a" * left + piece + "a" * right, aggressive_dash_splits=True, escape=False)
            if words and left:
                words[0] = words[0][1:]
            if words and right:
                words[-1] = words[-1][:-1]
            for token in filter(None, words):
                tokens += _IN_NUMBER.sub(r" @\1@ ", token).split()
    return tokens


def sacremoses_detokenize(line: str) -> str:
    return _MOSES_DETOKENIZER.detokenize(_JOINED.sub(r"\1", line).split())


def first_difference(got: list[str], want: list[str]) -> str:
    for a, b in zip(got, want):
        if a != b:
            return f"{b!r} -> {a!r}"
    return "length"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("corpus", type=Path)
    parser.add_argument("--show", type=int, default=12, help="most common first differences to show")
    args = parser.parse_args()
    corpus = args.corpus.read_text(encoding="utf-8")
    missing = [fragment for _, fragment in CORPUS_FRAGMENTS if f" {fragment} " not in corpus]
    print(f"tests/test_tokenizer.py's corpus fragments not in the corpus: {missing or 'none'}")
    lines = [line.strip() for line in corpus.splitlines() if line.strip()]
    detokenizers = {"ours": lambda line: tokenizer.detokenize(line.split(), "wikitext"),
                    "sacremoses": sacremoses_detokenize}
    tokenizers = {"ours": lambda text: tokenizer.tokenize(text, "wikitext"), "sacremoses": sacremoses_tokenize}
    print(f"{len(lines)} non-blank lines of {args.corpus}")
    for dname, detokenize in detokenizers.items():
        texts = [detokenize(line) for line in lines]
        results = {tname: [tokenize(text) for text in texts] for tname, tokenize in tokenizers.items()}
        disagree = sum(a != b for a, b in zip(results["ours"], results["sacremoses"]))
        only = {name: sum(g == line.split() != o for g, o, line in zip(got, results[other], lines))
                for (name, got), other in zip(results.items(), ("sacremoses", "ours"))}
        print(f"\ndetokenized by {dname}: the two tokenizers disagree on {disagree} lines; only ours is exact on "
              f"{only['ours']}, only sacremoses on {only['sacremoses']}")
        for tname, got in results.items():
            wrong = [(g, line.split()) for g, line in zip(got, lines) if g != line.split()]
            print(f"  tokenized by {tname}: {len(lines) - len(wrong)} exact, {len(wrong)} differ "
                  f"({100 * (len(lines) - len(wrong)) / len(lines):.2f}% exact)")
            for where, count in collections.Counter(first_difference(g, w) for g, w in wrong).most_common(args.show):
                print(f"      {count:6d}  {where}")
    print(f"\nper call on {TYPICAL!r}:")
    for tname, tokenize in tokenizers.items():
        number, _ = timeit.Timer(lambda: tokenize(TYPICAL)).autorange()
        best = min(timeit.repeat(lambda: tokenize(TYPICAL), number=number, repeat=5)) / number
        print(f"  {tname}: {best * 1e6:.1f} µs")
    return 0


if __name__ == "__main__":
    sys.exit(main())
