"""Trains an RNNModel with truncated BPTT and keeps the best checkpoint. Knows nothing of ONNX.

A checkpoint is a plain dict of tensors and primitives (loadable with `weights_only=True`):
model config, training config, vocabulary, state_dict, optimizer state, RNG state, history.
`best.pt` holds the best validation perplexity so far, `last.pt` the end of the last finished
epoch (what `--resume` continues from). Both are written atomically, so Ctrl-C never leaves a
half-written file.
"""

from __future__ import annotations

import json
import math
import os
import platform
import sys
import time
import zipfile
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from training.data import Corpus, Vocab, batchify
from training.errors import TrainingError, first_line
from training.model import ModelConfig, RNNModel

CHECKPOINT_FORMAT = "nextword-checkpoint/1"


@dataclass
class TrainConfig:
    data: str = ""
    out: str = "runs/model"
    text_convention: str = "wikitext"  # how raw user text must be split to match the corpus
    batch_size: int = 20
    eval_batch_size: int = 10
    bptt: int = 35
    optimizer: str = "sgd"  # sgd | adam
    lr: float = 20.0
    weight_decay: float = 0.0
    schedule: str = "plateau"  # plateau: lr /= lr_decay_factor when validation stalls; cosine: to 0 over all epochs
    lr_decay_factor: float = 4.0
    clip: float = 0.25
    epochs: int = 6
    budget_minutes: float = 0.0  # 0 = no wall-clock budget
    seed: int = 1111
    threads: int = 0  # 0 = all cores
    max_steps: int = 0  # 0 = whole epochs; >0 stops each epoch after this many batches (tests, smoke runs)
    command: str = ""
    extra: dict = field(default_factory=dict)


def library_versions() -> dict:
    versions = {"python": platform.python_version(), "torch": str(torch.__version__), "numpy": str(np.__version__)}
    for mod in ("onnx", "onnxruntime"):
        try:
            versions[mod] = str(__import__(mod).__version__)
        except ImportError:
            pass
    return versions


def save_atomic(obj: dict, path: Path) -> None:
    tmp = path.with_suffix(path.suffix + ".tmp")
    try:
        torch.save(obj, tmp)
        os.replace(tmp, path)
    except BaseException:  # Ctrl-C mid-write: drop the partial file, keep the previous checkpoint
        tmp.unlink(missing_ok=True)
        raise


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise TrainingError(f"checkpoint not found: {path}")
    if not zipfile.is_zipfile(path):  # torch.save writes a zip archive; anything else is foreign or truncated
        raise TrainingError(f"{path} is not a nextword checkpoint (not a torch zip archive, or truncated)")
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types, with multi-paragraph messages, for a corrupt file
        raise TrainingError(f"cannot read checkpoint {path}: {first_line(e)}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise TrainingError(f"{path} is not a nextword checkpoint")
    return ckpt


def model_from_checkpoint(ckpt: dict) -> tuple[RNNModel, Vocab]:
    model = RNNModel(ModelConfig(**ckpt["model_config"]))
    model.load_state_dict(ckpt["state_dict"])
    model.eval()
    return model, Vocab(list(ckpt["vocab"]))


@torch.no_grad()
def evaluate_torch(model: RNNModel, data: np.ndarray, bptt: int) -> tuple[float, int]:
    """Perplexity over (batch, n) streams, state carried across chunks; returns (ppl, tokens scored)."""
    model.eval()
    src = torch.from_numpy(data)
    state = model.init_hidden(src.size(0))
    total, count = 0.0, 0
    for i in range(0, src.size(1) - 1, bptt):
        seq = min(bptt, src.size(1) - 1 - i)
        nll, state = model.loss(src[:, i : i + seq], src[:, i + 1 : i + 1 + seq], state)
        total += nll.item() * seq * src.size(0)
        count += seq * src.size(0)
    return math.exp(total / count), count


def _set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
    for group in optimizer.param_groups:
        group["lr"] = lr


def train(tc: TrainConfig, mc: ModelConfig, resume: str | None = None) -> dict:
    """Runs training; returns a summary dict (also printed as the last line by the CLI)."""
    torch.manual_seed(tc.seed)
    np.random.seed(tc.seed)
    torch.set_num_threads(tc.threads or os.cpu_count() or 1)
    ckpt = load_checkpoint(resume) if resume else None
    corpus = Corpus.load(tc.data, Vocab(list(ckpt["vocab"])) if ckpt else None)
    mc.vocab_size = len(corpus.vocab)
    if ckpt:
        mc = ModelConfig(**ckpt["model_config"])
    model = RNNModel(mc)
    if tc.optimizer == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    elif tc.optimizer == "adam":
        optimizer = torch.optim.Adam(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    else:
        raise TrainingError(f"unknown optimizer {tc.optimizer!r}; choose sgd or adam")
    if tc.schedule not in ("plateau", "cosine"):
        raise TrainingError(f"unknown schedule {tc.schedule!r}; choose plateau or cosine")

    train_data = torch.from_numpy(batchify(corpus.train, tc.batch_size))  # (batch, n)
    valid_data = batchify(corpus.valid, tc.eval_batch_size)
    steps_per_epoch = math.ceil((train_data.size(1) - 1) / tc.bptt)
    if tc.max_steps:
        steps_per_epoch = min(steps_per_epoch, tc.max_steps)
    total_steps = steps_per_epoch * tc.epochs

    out = Path(tc.out)
    out.mkdir(parents=True, exist_ok=True)
    start_epoch, step, lr, best_val, history, wall = 1, 0, tc.lr, math.inf, [], 0.0
    commands = [tc.command]  # every command that shaped these weights, a resume included
    if ckpt:
        model.load_state_dict(ckpt["state_dict"])
        optimizer.load_state_dict(ckpt["optimizer"])
        torch.set_rng_state(ckpt["rng"])
        start_epoch, step, lr = ckpt["epoch"] + 1, ckpt["step"], ckpt["lr"]
        best_val, history, wall = ckpt["best_valid_ppl"], list(ckpt["history"]), ckpt["wall_seconds"]
        commands = [*ckpt.get("commands", [ckpt["train_config"].get("command", "")]), tc.command]
        print(f"resumed from {resume} after epoch {ckpt['epoch']} (best valid ppl {best_val:.2f})", file=sys.stderr)

    def snapshot(epoch: int) -> dict:
        return {
            "format": CHECKPOINT_FORMAT, "model_config": mc.to_dict(), "train_config": asdict(tc),
            "vocab": corpus.vocab.words, "state_dict": model.state_dict(), "optimizer": optimizer.state_dict(),
            "rng": torch.get_rng_state(), "epoch": epoch, "step": step, "lr": lr, "best_valid_ppl": best_val,
            "history": history, "commands": commands, "wall_seconds": wall, "corpus": {"path": str(tc.data), "sha256": corpus.sha256},
            "versions": library_versions(), "device": "cpu",
        }

    started = time.monotonic() - wall
    stopped = "epochs"
    bar = None
    params = sum(p.numel() for p in model.parameters())
    print(f"{mc.architecture} {mc.layers}x{mc.hidden_size} emb {mc.embedding_size} softmax {mc.softmax}: "
          f"{params:,} parameters, vocab {len(corpus.vocab):,}, {corpus.train.size:,} train tokens", file=sys.stderr)
    try:
        for epoch in range(start_epoch, tc.epochs + 1):
            model.train()
            state = model.init_hidden(tc.batch_size)
            bar = tqdm(total=steps_per_epoch * tc.bptt * tc.batch_size, desc=f"epoch {epoch}", unit="tok",
                       unit_scale=True, file=sys.stderr, mininterval=1.0 if sys.stderr.isatty() else 30.0)
            running = None
            for batch, i in enumerate(range(0, train_data.size(1) - 1, tc.bptt)):
                if batch >= steps_per_epoch:
                    break
                if tc.schedule == "cosine":
                    lr = tc.lr * 0.5 * (1 + math.cos(math.pi * step / total_steps))
                    _set_lr(optimizer, lr)
                seq = min(tc.bptt, train_data.size(1) - 1 - i)
                state = tuple(s.detach() for s in state)  # truncated BPTT
                loss, state = model.loss(train_data[:, i : i + seq], train_data[:, i + 1 : i + 1 + seq], state)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if tc.clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), tc.clip)
                optimizer.step()
                step += 1
                running = loss.item() if running is None else 0.98 * running + 0.02 * loss.item()
                bar.update(seq * tc.batch_size)
                bar.set_postfix(loss=f"{running:.3f}", ppl=f"{math.exp(running):.1f}", lr=f"{lr:.3g}", refresh=False)
                if tc.budget_minutes and time.monotonic() - started > tc.budget_minutes * 60:
                    stopped = "budget"
                    break
            bar.close()
            valid_ppl, _ = evaluate_torch(model, valid_data, tc.bptt)
            wall = time.monotonic() - started
            history.append({"epoch": epoch, "valid_ppl": round(valid_ppl, 3), "lr": lr, "wall_seconds": round(wall, 1),
                            "train_loss": round(running or float("nan"), 4)})
            improved = valid_ppl < best_val
            if improved:
                best_val = valid_ppl
            elif tc.schedule == "plateau":
                lr /= tc.lr_decay_factor
                _set_lr(optimizer, lr)
            print(f"epoch {epoch}: valid ppl {valid_ppl:.2f}{' (best)' if improved else ''}, lr {lr:.3g}, "
                  f"{wall / 60:.1f} min", file=sys.stderr)
            snap = snapshot(epoch)
            if improved:
                save_atomic(snap, out / "best.pt")
            save_atomic(snap, out / "last.pt")
            if stopped == "budget":
                print(f"wall-clock budget of {tc.budget_minutes} min reached", file=sys.stderr)
                break
    except KeyboardInterrupt:
        if bar is not None:
            bar.close()  # else tqdm redraws it at exit, after the message below
        if (out / "best.pt").is_file():
            print(f"\ninterrupted; best checkpoint kept at {out / 'best.pt'}", file=sys.stderr)
        else:
            print("\ninterrupted before the first epoch finished; no checkpoint written", file=sys.stderr)
        raise
    best = load_checkpoint(out / "best.pt")
    model.load_state_dict(best["state_dict"])
    test_ppl, _ = evaluate_torch(model, batchify(corpus.test, tc.eval_batch_size), tc.bptt)
    best["test_ppl_torch"] = test_ppl
    best["stopped"] = stopped
    best["wall_seconds_total"] = wall
    best["history"] = history
    save_atomic(best, out / "best.pt")
    summary = {"checkpoint": str(out / "best.pt"), "best_valid_ppl": round(best_val, 3),
               "test_ppl": round(test_ppl, 3), "epochs": len(history), "wall_seconds": round(wall, 1), "stopped": stopped}
    return summary


def dump(summary: dict) -> str:
    return json.dumps(summary, sort_keys=True)
