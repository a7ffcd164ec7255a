"""Benchmark: training throughput of the full softmax vs the adaptive softmax on a WikiText-sized vocabulary.

Run:  python benchmarks/train_softmax.py [--data ../shared/data/wikitext-2] [--steps 60] [--rounds 3]

Times forward + backward + optimizer step of the shipped LSTM shape (2x256, embedding 128, batch 20,
bptt 35) with each output head, alternating the two in several rounds so drift in machine load hits
both alike. The full softmax is the baseline; the ratio is what the adaptive head buys per token.
Both heads give an exact, normalised distribution over the whole vocabulary at inference.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from training.data import Corpus, batchify  # noqa: E402
from training.model import ModelConfig, RNNModel  # noqa: E402


def tokens_per_second(model: RNNModel, data: torch.Tensor, steps: int, bptt: int) -> float:
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3)
    state = model.init_hidden(data.size(0))
    model.train()
    started = time.perf_counter()
    for i in range(steps):
        x, y = data[:, i * bptt : (i + 1) * bptt], data[:, i * bptt + 1 : (i + 1) * bptt + 1]
        state = tuple(s.detach() for s in state)
        loss, state = model.loss(x, y, state)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return steps * bptt * data.size(0) / (time.perf_counter() - started)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", default="../shared/data/wikitext-2")
    p.add_argument("--steps", type=int, default=60)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    corpus = Corpus.load(args.data)
    data = torch.from_numpy(batchify(corpus.train, 20))
    base = dict(architecture="lstm", vocab_size=len(corpus.vocab), embedding_size=128, hidden_size=256, layers=2,
                dropout=0.25)
    models = {"full": RNNModel(ModelConfig(**base, softmax="full")),
              "adaptive": RNNModel(ModelConfig(**base, softmax="adaptive", cutoffs=[2000, 10000]))}
    rates: dict[str, list[float]] = {name: [] for name in models}
    for _ in range(args.rounds):
        for name, model in models.items():
            rates[name].append(tokens_per_second(model, data, args.steps, 35))
    full, adaptive = statistics.median(rates["full"]), statistics.median(rates["adaptive"])
    print(json.dumps({"vocab": len(corpus.vocab), "threads": args.threads, "full_tokens_per_s": round(full),
                      "adaptive_tokens_per_s": round(adaptive), "speedup": round(adaptive / full, 2),
                      "rounds": {k: [round(r) for r in v] for k, v in rates.items()}}))


if __name__ == "__main__":
    main()
