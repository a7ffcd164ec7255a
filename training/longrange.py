"""The seed's claim as an experiment: can a tanh RNN and an LSTM recall a name after N words of real text?

`python -m training longrange --data ../shared/data/wikitext-2 --out docs` builds examples like

    <filler …> I have a dog named Cliff <N filler words> my pet  ->  Cliff

where the filler is running WikiText-2 text (train.txt for training, valid.txt for the held-out
test), the name is drawn uniformly from NAMES (so chance is exactly 1 / len(NAMES)) and never
occurs anywhere else in an example, and every example has the same length whatever N is (the
filler before the name fills up), so position gives nothing away. Both architectures get the
same RNNModel from training/model.py with the same sizes (equal hidden size, not equal
parameters: the LSTM has four times the recurrent weights), the same initialisation seed and
seeded stream of training examples, optimiser, learning rate, clip and number of steps, once per
seed; they are trained on the answer only (cross-entropy over the whole vocabulary at the last
position, gaps drawn log-uniformly from 0..max_gap) and scored on the same held-out examples at
fixed gaps. Writes longrange.json (settings, per-gap accuracy with a 95 % Wilson interval, pooled
and per seed, learning curves, wall times), longrange.csv and longrange.png. Knows nothing of ONNX, bundles or serving; the figure is drawn by training/plots.py.
"""

from __future__ import annotations

import collections
import csv
import json
import math
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from training.data import EOS, UNK, Vocab, read_lines
from training.errors import TrainingError

INTRO = ("I", "have", "a", "dog", "named")  # the name follows these words
QUERY = ("my", "pet")  # the name is to be predicted after these words
NAMES = ("Cliff", "Rex", "Bella", "Max", "Luna", "Daisy", "Milo", "Rocky", "Coco", "Bruno")
CHANCE = 1 / len(NAMES)  # names are uniform and independent of the filler: a model without memory scores this
LEAD = 10  # filler words before the intro even at the longest gap, so no example starts with its name
FIXED_WORDS = (UNK, *NAMES, *dict.fromkeys(INTRO + QUERY))  # the first ids of every vocabulary built here
FIXED_IDS = {w: i for i, w in enumerate(FIXED_WORDS)}


@dataclass
class LongRangeConfig:
    data: str  # corpus folder: train.txt (training filler) and valid.txt (held-out filler)
    out: str  # folder for longrange.json / .csv / .png
    architectures: list[str] = field(default_factory=lambda: ["rnn_tanh", "lstm"])
    max_gap: int = 200  # training gaps are log-uniform in 0..max_gap; every example is as long as the longest
    eval_gaps: list[int] = field(default_factory=lambda: [0, 5, 10, 20, 30, 50, 75, 100, 150, 200])
    vocab_size: int = 5000  # most frequent filler words kept (the rest read as <unk>), names and cue words added
    embedding_size: int = 64
    hidden_size: int = 64  # the same for both cells (the LSTM has 4x the recurrent weights)
    layers: int = 1
    batch_size: int = 32
    steps: int = 2000  # optimiser steps per run, the same for both cells
    lr: float = 2e-3  # Adam, the same for both
    clip: float = 1.0  # gradient-norm clip, the same for both
    eval_examples: int = 300  # held-out examples per gap (95 % interval about ±5 points at 50 %)
    seeds: list[int] = field(default_factory=lambda: [1111, 1112, 1113])  # one run per cell and seed
    threads: int = 1  # small matrices: a second thread buys little, and on a busy machine it stalls both
    command: str = ""

    def validate(self) -> None:
        if self.max_gap < 0 or any(g < 0 or g > self.max_gap for g in self.eval_gaps) or not self.eval_gaps:
            raise TrainingError(f"--eval-gaps must lie in 0..--max-gap ({self.max_gap}), got {self.eval_gaps}")
        if not self.seeds or len(set(self.seeds)) != len(self.seeds):
            raise TrainingError(f"--seeds must be distinct integers, got {self.seeds}")
        if min(self.vocab_size, self.embedding_size, self.hidden_size, self.layers, self.batch_size, self.steps,
               self.eval_examples, self.threads) < 1 or self.lr <= 0 or self.clip < 0:
            raise TrainingError("sizes, --steps, --batch-size, --eval-examples, --threads and --lr must be positive")
        from training.config import ARCHITECTURES

        bad = [a for a in self.architectures if a not in ARCHITECTURES]
        if bad or not self.architectures:
            raise TrainingError(f"unknown architecture(s) {bad}; choose from {', '.join(ARCHITECTURES)}")

    @property
    def length(self) -> int:
        """Tokens per example, the same for every gap."""
        return LEAD + self.max_gap + len(INTRO) + 1 + len(QUERY)


def _filler_words(path: Path) -> list[str]:
    """Running text of a file with line ends dropped and every name read as <unk>, so a name occurs only where
    an example puts it."""
    names = set(NAMES)
    return [UNK if w in names else w for words in read_lines(path) for w in words if w != EOS]


def build_vocab(train_words: list[str], size: int) -> Vocab:
    """<unk>, the names, the cue words, then the `size` most frequent other filler words (ties: first seen)."""
    counts = collections.Counter(train_words)
    frequent = [w for w, _ in sorted(counts.items(), key=lambda kv: -kv[1]) if w not in FIXED_IDS][:size]
    return Vocab([*FIXED_WORDS, *frequent])


def make_examples(filler: np.ndarray, gaps: np.ndarray, max_gap: int, rng: np.random.Generator):
    """One example per gap: (tokens (n, length) int64, name ids (n,) int64, name positions (n,) int64).

    Each row is one contiguous window of `filler` (ids) cut in two: LEAD + max_gap - gap words, the
    intro and the name, the next `gap` words of the same window, then the query."""
    window = LEAD + max_gap
    if filler.size < window + 1:
        raise TrainingError(f"the filler text has {filler.size} words; a gap of {max_gap} needs at least {window + 1}")
    n = len(gaps)
    starts = rng.integers(0, filler.size - window + 1, size=n)
    names = rng.integers(0, len(NAMES), size=n)
    name_ids = np.array([FIXED_IDS[w] for w in NAMES], dtype=np.int64)[names]
    intro = np.array([FIXED_IDS[w] for w in INTRO], dtype=np.int64)
    query = np.array([FIXED_IDS[w] for w in QUERY], dtype=np.int64)
    rows, positions = [], []
    for start, gap, name in zip(starts, gaps, name_ids):
        text = filler[start : start + window]
        cut = window - int(gap)
        rows.append(np.concatenate([text[:cut], intro, [name], text[cut:], query]))
        positions.append(cut + len(intro))
    return np.stack(rows).astype(np.int64), name_ids.astype(np.int64), np.array(positions, dtype=np.int64)


def training_gaps(max_gap: int, n: int, rng: np.random.Generator) -> np.ndarray:
    """(n,) gaps in 0..max_gap, log-uniform: gap + 1 = e^u with u uniform in [0, ln(max_gap + 2)). Each
    doubling of the gap gets about the same share, as in the scored gaps, so short gaps are seen often
    enough to learn the task at all and long ones often enough to learn to keep the name."""
    return np.minimum(np.floor(np.exp(rng.uniform(0, math.log(max_gap + 2), size=n))).astype(np.int64) - 1, max_gap)


def wilson(correct: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """95 % Wilson score interval of a binomial proportion."""
    p = correct / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / (1 + z * z / n)
    return max(0.0, centre - half), min(1.0, centre + half)


def _train_one(arch: str, seed: int, cfg: LongRangeConfig, vocab: Vocab, train_filler: np.ndarray, log) -> tuple:
    import torch
    import torch.nn.functional as F

    from training.config import DROPOUTS, ModelConfig
    from training.model import RNNModel

    torch.manual_seed(seed)  # the same initialisation stream for both cells
    rng = np.random.default_rng(seed)  # the same training examples for both cells
    # No regulariser: fresh examples every step leave nothing to overfit, and none would act alike on both cells.
    model = RNNModel(ModelConfig(architecture=arch, vocab_size=len(vocab), embedding_size=cfg.embedding_size,
                                 hidden_size=cfg.hidden_size, layers=cfg.layers, tied=False, softmax="full",
                                 **{name: 0.0 for name in DROPOUTS}))
    # PyTorch's own nn.Embedding init, N(0, 1), not model.py's ±0.1 (made for 33k-word LMs): at ±0.1 the one word
    # that matters is a whisper under the filler and both cells sit at chance for thousands of steps, even at gap 0.
    torch.nn.init.normal_(model.encoder.weight)
    opt = torch.optim.Adam(model.parameters(), lr=cfg.lr)
    curve, window_loss, window_acc = [], [], []
    every = max(1, cfg.steps // 20)
    t0 = time.perf_counter()
    model.train()
    for step in range(1, cfg.steps + 1):
        gaps = training_gaps(cfg.max_gap, cfg.batch_size, rng)
        tokens, names, _ = make_examples(train_filler, gaps, cfg.max_gap, rng)
        log_probs, *_ = model(torch.from_numpy(tokens), *model.init_hidden(cfg.batch_size))  # (batch, vocab)
        target = torch.from_numpy(names)
        loss = F.nll_loss(log_probs, target)
        opt.zero_grad()
        loss.backward()
        if cfg.clip:
            torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.clip)
        opt.step()
        window_loss.append(loss.item())
        window_acc.append((log_probs.argmax(-1) == target).float().mean().item())
        if step % every == 0 or step == cfg.steps:
            curve.append({"step": step, "loss": round(float(np.mean(window_loss)), 4),
                          "train_accuracy": round(float(np.mean(window_acc)), 4)})
            log(f"{arch} seed {seed}: step {step}/{cfg.steps} loss {curve[-1]['loss']:.3f} "
                f"train accuracy {curve[-1]['train_accuracy']:.2f} ({time.perf_counter() - t0:.0f} s)")
            window_loss, window_acc = [], []
    return model, curve, time.perf_counter() - t0


def _evaluate(model, tokens: np.ndarray, names: np.ndarray, batch: int = 100) -> np.ndarray:
    """Per-example hit (argmax over the whole vocabulary is the name), (n,) bool."""
    import torch

    model.eval()
    hits = []
    with torch.no_grad():
        for i in range(0, len(tokens), batch):
            chunk = torch.from_numpy(tokens[i : i + batch])
            log_probs, *_ = model(chunk, *model.init_hidden(len(chunk)))  # (chunk, vocab)
            hits.append(log_probs.argmax(-1).numpy() == names[i : i + batch])
    return np.concatenate(hits)


def _by_gap(hits: np.ndarray, gaps: np.ndarray, scored: list[int]) -> list[dict]:
    """Accuracy and its 95 % Wilson interval at each scored gap; hits and gaps are (n,) per example."""
    rows = []
    for gap in scored:
        h = hits[gaps == gap]
        low, high = wilson(int(h.sum()), h.size)
        rows.append({"gap": gap, "accuracy": round(float(h.mean()), 4), "examples": int(h.size),
                     "ci95_low": round(low, 4), "ci95_high": round(high, 4)})
    return rows


def run(cfg: LongRangeConfig, log=print) -> dict:
    cfg.validate()
    import torch

    from training.plots import plot_longrange
    from training.train import library_versions

    started = time.perf_counter()
    torch.set_num_threads(cfg.threads)
    folder = Path(cfg.data)
    train_words = _filler_words(folder / "train.txt")
    vocab = build_vocab(train_words, cfg.vocab_size)
    train_filler = vocab.encode([train_words])
    heldout_filler = vocab.encode([_filler_words(folder / "valid.txt")])
    eval_rng = np.random.default_rng([cfg.seeds[0], 1])  # held-out examples: other text, names and stream
    eval_gaps = np.repeat(np.array(cfg.eval_gaps, dtype=np.int64), cfg.eval_examples)
    eval_tokens, eval_names, _ = make_examples(heldout_filler, eval_gaps, cfg.max_gap, eval_rng)

    rows, models = [], {}
    for arch in cfg.architectures:
        runs, hits = [], []
        for seed in cfg.seeds:
            model, curve, seconds = _train_one(arch, seed, cfg, vocab, train_filler, log)
            hits.append(_evaluate(model, eval_tokens, eval_names))
            runs.append({"seed": seed, "train_seconds": round(seconds, 1), "curve": curve,
                         "accuracy_by_gap": _by_gap(hits[-1], eval_gaps, cfg.eval_gaps)})
            rows += [{"architecture": arch, "seed": seed, **r} for r in runs[-1]["accuracy_by_gap"]]
            log(f"{arch} seed {seed}: held-out accuracy by gap "
                + ", ".join(f"{r['gap']}: {r['accuracy']:.2f}" for r in runs[-1]["accuracy_by_gap"]))
        pooled = _by_gap(np.concatenate(hits), np.tile(eval_gaps, len(cfg.seeds)), cfg.eval_gaps)
        rows += [{"architecture": arch, "seed": "all", **r} for r in pooled]
        models[arch] = {"parameters": sum(p.numel() for p in model.parameters()),
                        "recurrent_parameters": sum(p.numel() for p in model.rnns.parameters()),
                        "accuracy_by_gap": pooled, "runs": runs}

    out = Path(cfg.out)
    out.mkdir(parents=True, exist_ok=True)
    paths = {kind: out / f"longrange.{kind}" for kind in ("json", "csv", "png")}
    with paths["csv"].open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    plot_longrange(models, CHANCE, paths["png"], cfg)
    result = {"config": asdict(cfg), "names": list(NAMES), "chance": CHANCE, "example_length": cfg.length,
              "vocab_size": len(vocab), "filler": {"train": "train.txt", "held_out": "valid.txt"},
              "models": models, "versions": library_versions(),
              "wall_seconds": round(time.perf_counter() - started, 1)}
    paths["json"].write_text(json.dumps(result, indent=1) + "\n", encoding="utf-8")
    return {"json": str(paths["json"]), "csv": str(paths["csv"]), "png": str(paths["png"]), "chance": CHANCE,
            "accuracy": {a: {r["gap"]: r["accuracy"] for r in m["accuracy_by_gap"]} for a, m in models.items()},
            "wall_seconds": result["wall_seconds"]}


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise TrainingError(f"expected comma-separated integers, got {text!r}") from None


def add_parser(sub) -> None:
    """`python -m training longrange`; every default is LongRangeConfig's."""
    d = LongRangeConfig(data="", out="")
    p = sub.add_parser("longrange", help="the name-after-N-words experiment: tanh RNN vs LSTM, accuracy by gap (PNG)")
    p.add_argument("--data", default="../shared/data/wikitext-2", help="corpus folder: train.txt and valid.txt filler")
    p.add_argument("--out", default="runs/longrange", help="folder for longrange.json, .csv and .png")
    p.add_argument("--architectures", default=",".join(d.architectures), help="comma-separated cells to compare")
    p.add_argument("--max-gap", type=int, default=d.max_gap)
    p.add_argument("--eval-gaps", default=",".join(map(str, d.eval_gaps)), help="comma-separated gaps to score")
    p.add_argument("--seeds", default=",".join(map(str, d.seeds)), help="comma-separated: one run per cell and seed")
    for name in ("vocab_size", "embedding_size", "hidden_size", "layers", "batch_size", "steps", "eval_examples",
                 "threads"):
        p.add_argument("--" + name.replace("_", "-"), type=int, default=getattr(d, name))
    p.add_argument("--lr", type=float, default=d.lr)
    p.add_argument("--clip", type=float, default=d.clip)
    p.set_defaults(run=_run_cli)


def _run_cli(args, command: str) -> dict:
    import sys

    cfg = LongRangeConfig(
        data=args.data, out=args.out, architectures=[a.strip() for a in args.architectures.split(",") if a.strip()],
        max_gap=args.max_gap, eval_gaps=_ints(args.eval_gaps), vocab_size=args.vocab_size,
        embedding_size=args.embedding_size, hidden_size=args.hidden_size, layers=args.layers,
        batch_size=args.batch_size, steps=args.steps, lr=args.lr, clip=args.clip, eval_examples=args.eval_examples,
        seeds=_ints(args.seeds), threads=args.threads, command=command)
    return run(cfg, log=lambda line: print(line, file=sys.stderr, flush=True))
