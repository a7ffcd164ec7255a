"""Derives a smaller corpus folder from one split of a WikiText-style corpus: the first N tokens become
train, the next M valid and the next M test, with every word outside the K most frequent of the new
train split written as `<unk>`. Used to choose training defaults on a corpus of another size than
WikiText-2 without ever reading WikiText-2's own test split. Knows nothing of models.

    python -m training.derive --source ../shared/data/wikitext-2/train.txt --out .data/wt2-1m \\
        --words 10000 --train-tokens 1000000 --eval-tokens 100000
"""

from __future__ import annotations

import argparse
import collections
import sys
from pathlib import Path

from training.data import UNK
from training.errors import TrainingError


def derive(source: Path, out: Path, words: int, train_tokens: int, eval_tokens: int) -> dict:
    if not source.is_file():
        raise TrainingError(f"source file not found: {source}")
    lines = [line.split() for line in source.read_text(encoding="utf-8").splitlines()]
    splits, split, count = {"train": [], "valid": [], "test": []}, "train", 0
    limits = {"train": train_tokens, "valid": eval_tokens, "test": eval_tokens}
    for tokens in lines:  # whole lines, in order: a split ends at the first line that reaches its size
        if split == "done":
            break
        splits[split].append(tokens)
        count += len(tokens) + 1  # + the <eos> each line gets when read
        if count >= limits[split]:
            split, count = {"train": "valid", "valid": "test", "test": "done"}[split], 0
    if split != "done":
        raise TrainingError(f"{source} has too few tokens for {train_tokens} + 2 x {eval_tokens}")
    counts = collections.Counter(w for tokens in splits["train"] for w in tokens)
    keep = {w for w, _ in counts.most_common(words - 2)}  # room for <unk> and <eos>
    out.mkdir(parents=True, exist_ok=True)
    for name, chunk in splits.items():
        text = "".join(" " + " ".join(w if w in keep else UNK for w in tokens) + " \n" if tokens else " \n"
                       for tokens in chunk)
        (out / f"{name}.txt").write_text(text, encoding="utf-8")
    return {name: sum(len(t) + 1 for t in chunk) for name, chunk in splits.items()}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m training.derive", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--source", required=True, type=Path, help="a token file, e.g. WikiText-2's train.txt")
    p.add_argument("--out", required=True, type=Path, help="folder for train.txt, valid.txt, test.txt")
    p.add_argument("--words", type=int, default=10000, help="vocabulary size, <unk> and <eos> included")
    p.add_argument("--train-tokens", type=int, default=1_000_000)
    p.add_argument("--eval-tokens", type=int, default=100_000, help="tokens in each of valid and test")
    args = p.parse_args(argv)
    try:
        print(derive(args.source, args.out, args.words, args.train_tokens, args.eval_tokens))
    except TrainingError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
