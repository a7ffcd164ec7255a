"""Trains an RNNModel with truncated BPTT and keeps the best checkpoint. Knows nothing of ONNX.

A checkpoint is a plain dict of tensors and primitives (loadable with `weights_only=True`):
model config, training config, vocabulary, state_dict, optimizer state, RNG state, history.
`best.pt` holds the best validation perplexity so far, `last.pt` the end of the last finished
epoch (what `--resume` continues from). Both are written atomically, so Ctrl-C never leaves a
half-written file. Every epoch also rewrites `history.csv` and `curves.png` beside them.

A compact checkpoint (`compact()`) keeps what export needs and nothing to resume from: the
weights (fp16 if asked), configs, vocabulary, history and commands, split into parts of a
bounded size so it can travel through size-limited channels; `load_checkpoint` reads a folder
of parts as one checkpoint.
"""

from __future__ import annotations

import csv
import hashlib
import io
import math
import os
import platform
import sys
import time
import warnings
import zipfile
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from training.data import Corpus, Vocab, batchify
from training.errors import TrainingError, first_line
from training.config import ModelConfig, TrainConfig
from training.model import RNNModel

CHECKPOINT_FORMAT = "nextword-checkpoint/1"
COMPACT_NAME = "checkpoint.pt"  # a compact checkpoint folder holds this file, or its parts `checkpoint.pt.part-NN`


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


def _read_checkpoint_bytes(path: Path) -> bytes:
    """A checkpoint file, or a compact checkpoint folder (one file or its parts, joined in order)."""
    if path.is_dir():
        parts = sorted(path.glob(COMPACT_NAME + ".part-*")) or [path / COMPACT_NAME]
        if not parts[0].is_file():
            raise TrainingError(f"checkpoint not found: no {COMPACT_NAME} or {COMPACT_NAME}.part-* in {path}")
        return b"".join(p.read_bytes() for p in parts)
    if not path.is_file():
        raise TrainingError(f"checkpoint not found: {path}")
    return path.read_bytes()


def _upgrade(ckpt: dict) -> dict:
    """The one place where checkpoints written by earlier versions get today's fields."""
    tc = ckpt["train_config"]
    ckpt.setdefault("commands", [tc.get("command", "")])
    ckpt.setdefault("device", "cpu")
    ckpt.setdefault("stopped", "unknown")
    ckpt.setdefault("wall_seconds_total", ckpt["wall_seconds"])
    tc.pop("extra", None)
    mc = ckpt["model_config"]
    if "weight_drop" not in mc:  # one dropout rate, applied to the embedding, between layers and on the output
        mc.update(dropout_input=mc["dropout"], dropout_hidden=mc["dropout"], dropout_embedding=0.0, weight_drop=0.0)
        # one multi-layer module `rnn` became one module per layer, `rnns.K`
        ckpt["state_dict"] = {_per_layer_name(k): v for k, v in ckpt["state_dict"].items()}
    return ckpt


def _per_layer_name(key: str) -> str:
    if not key.startswith("rnn."):
        return key
    name, layer = key[len("rnn."):].rsplit("_l", 1)  # rnn.weight_hh_l1 -> rnns.1.weight_hh_l0
    return f"rnns.{layer}.{name}_l0"


def load_checkpoint(path: str | Path) -> dict:
    path = Path(path)
    data = _read_checkpoint_bytes(path)
    if not zipfile.is_zipfile(io.BytesIO(data)):  # torch.save writes a zip archive; anything else is foreign or truncated
        raise TrainingError(f"{path} is not a nextword checkpoint (not a torch zip archive, or truncated)")
    try:
        ckpt = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as e:  # torch raises many types, with multi-paragraph messages, for a corrupt file
        raise TrainingError(f"cannot read checkpoint {path}: {first_line(e)}") from None
    if not isinstance(ckpt, dict) or ckpt.get("format") != CHECKPOINT_FORMAT:
        raise TrainingError(f"{path} is not a nextword checkpoint")
    return _upgrade(ckpt)


def model_from_checkpoint(ckpt: dict) -> tuple[RNNModel, Vocab]:
    model = RNNModel(ModelConfig(**ckpt["model_config"]))
    model.load_state_dict({k: v.float() for k, v in ckpt["state_dict"].items()})
    model.eval()
    return model, Vocab(list(ckpt["vocab"]))


def compact(checkpoint: str | Path, out: str | Path, dtype: str = "float16", part_mib: float = 15.0) -> dict:
    """Writes the weights-only form of `checkpoint` to the folder `out` (see the module docstring)."""
    ckpt = load_checkpoint(checkpoint)
    if dtype not in ("float16", "float32"):
        raise TrainingError(f"unknown weights dtype {dtype!r}; choose float16 or float32")
    # A tied matrix stays one tensor. Keyed by the tensor's own address and layout, not its storage's:
    # on CUDA, cuDNN packs each layer's weights and biases into one buffer, so they share a storage.
    cast: dict[tuple, torch.Tensor] = {}
    state = {}
    for key, value in ckpt["state_dict"].items():
        ident = (value.data_ptr(), value.dtype, tuple(value.shape), value.stride())
        if ident not in cast:
            cast[ident] = value.to(getattr(torch, dtype)) if value.is_floating_point() else value
        state[key] = cast[ident]
    small = {k: v for k, v in ckpt.items() if k not in ("optimizer", "rng", "cuda_rng", "state_dict")}
    small.update(state_dict=state, compact={"dtype": dtype, "from": str(checkpoint)})
    buffer = io.BytesIO()
    torch.save(small, buffer)
    data = buffer.getvalue()
    folder = Path(out)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob(COMPACT_NAME + "*"):
        old.unlink()
    size = max(1, int(part_mib * 2**20))
    if len(data) <= size:
        files = [folder / COMPACT_NAME]
        files[0].write_bytes(data)
    else:
        files = [folder / f"{COMPACT_NAME}.part-{i:02d}" for i in range(math.ceil(len(data) / size))]
        for i, f in enumerate(files):
            f.write_bytes(data[i * size : (i + 1) * size])
    return {"folder": str(folder), "files": [f.name for f in files], "bytes": len(data),
            "sha256": hashlib.sha256(data).hexdigest(), "dtype": dtype}


@torch.no_grad()
def evaluate_torch(model: RNNModel, data: np.ndarray, bptt: int) -> tuple[float, int]:
    """Perplexity over (batch, n) streams, state carried across chunks; returns (ppl, tokens scored)."""
    model.eval()
    src = torch.from_numpy(data).to(model.encoder.weight.device)
    state = model.init_hidden(src.size(0))
    total, count = 0.0, 0
    for i in range(0, src.size(1) - 1, bptt):
        seq = min(bptt, src.size(1) - 1 - i)
        nll, state = model.loss(src[:, i : i + seq], src[:, i + 1 : i + 1 + seq], state)
        total += nll.item() * seq * src.size(0)
        count += seq * src.size(0)
    return math.exp(total / count), count


def write_curves(history: list[dict], out: Path) -> None:
    """history.csv, and curves.png when matplotlib is installed (the `train` extra has it)."""
    columns = ["epoch", "train_loss", "train_ppl", "valid_ppl", "lr", "wall_seconds"]
    with (out / "history.csv").open("w", newline="", encoding="utf-8") as f:
        writer = csv.DictWriter(f, columns, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(history)
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    epochs = [h["epoch"] for h in history]
    fig, ax = plt.subplots(figsize=(6, 4), dpi=100)
    ax.plot(epochs, [h["train_ppl"] for h in history], "o-", label="training (with dropout)")
    ax.plot(epochs, [h["valid_ppl"] for h in history], "o-", label="validation")
    ax.set_yscale("log")
    ax.set_xlabel("epoch")
    ax.set_ylabel("perplexity")
    ax.set_title(out.name)
    ax.grid(True, which="both", alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "curves.png")
    plt.close(fig)


def _device(name: str) -> torch.device:
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda":
        if not torch.cuda.is_available():
            raise TrainingError("--device cuda: no CUDA device is available")
        torch.backends.cuda.matmul.allow_tf32 = True  # TF32 matmuls: ~10-bit mantissa, ample for SGD noise
        torch.backends.cudnn.allow_tf32 = True
    return torch.device(name)


def _device_label(device: torch.device) -> str:
    return f"cuda ({torch.cuda.get_device_name(device)})" if device.type == "cuda" else "cpu"


def train(tc: TrainConfig, mc: ModelConfig, resume: str | None = None) -> dict:
    """Runs training; returns a summary dict (also printed as the last line by the CLI)."""
    torch.manual_seed(tc.seed)
    np.random.seed(tc.seed)
    torch.set_num_threads(tc.threads or os.cpu_count() or 1)
    device = _device(tc.device)
    # Weight drop hands cuDNN a fresh hidden-to-hidden matrix each step; it copies it, which is expected.
    warnings.filterwarnings("ignore", message="RNN module weights are not part of single contiguous chunk")
    ckpt = load_checkpoint(resume) if resume else None
    if ckpt and "compact" in ckpt:
        raise TrainingError(f"{resume} is a compact checkpoint (weights only); resume needs a last.pt")
    corpus = Corpus.load(tc.data, Vocab(list(ckpt["vocab"])) if ckpt else None)
    mc.vocab_size = len(corpus.vocab)
    if ckpt:
        mc = ModelConfig(**ckpt["model_config"])
    model = RNNModel(mc).to(device)
    if tc.optimizer == "sgd":
        optimizer = torch.optim.SGD(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    else:
        optimizer = torch.optim.Adam(model.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)

    train_data = torch.from_numpy(batchify(corpus.train, tc.batch_size)).to(device)  # (batch, n)
    valid_data = batchify(corpus.valid, tc.eval_batch_size)
    steps_per_epoch = math.ceil((train_data.size(1) - 1) / tc.bptt)
    if tc.max_steps:
        steps_per_epoch = min(steps_per_epoch, tc.max_steps)
    total_steps = steps_per_epoch * tc.epochs
    budget = tc.budget_minutes * 60

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
        commands = [*ckpt["commands"], tc.command]
        print(f"resumed from {resume} after epoch {ckpt['epoch']} (best valid ppl {best_val:.2f})", file=sys.stderr)

    def snapshot(epoch: int) -> dict:
        return {
            "format": CHECKPOINT_FORMAT, "model_config": mc.to_dict(), "train_config": asdict(tc),
            "vocab": corpus.vocab.words, "state_dict": model.state_dict(), "optimizer": optimizer.state_dict(),
            "rng": torch.get_rng_state(), "epoch": epoch, "step": step, "lr": lr, "best_valid_ppl": best_val,
            "history": history, "commands": commands, "wall_seconds": wall,
            "corpus": {"path": str(tc.data), "sha256": corpus.sha256},
            "versions": library_versions(), "device": _device_label(device),
        }

    def progress() -> float:
        """How far along the schedule is: steps over all epochs' steps, or time over the budget."""
        by_steps = step / total_steps
        return max(by_steps, (time.monotonic() - started) / budget) if budget else by_steps

    def schedule_lr() -> float:
        warm = min(1.0, (step + 1) / tc.warmup_steps) if tc.warmup_steps else 1.0
        if tc.schedule == "cosine":
            floor = tc.lr_floor
            return tc.lr * warm * (floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * min(1.0, progress()))))
        return lr * warm if step < tc.warmup_steps else lr

    started = time.monotonic() - wall
    stopped = "epochs"
    bar = None
    params = sum(p.numel() for p in model.parameters())
    print(f"{mc.architecture} {mc.layers}x{mc.hidden_size} emb {mc.embedding_size} softmax {mc.softmax}"
          f"{' tied' if mc.tied else ''}: {params:,} parameters, vocab {len(corpus.vocab):,}, "
          f"{corpus.train.size:,} train tokens, {steps_per_epoch} steps/epoch, device {_device_label(device)}",
          file=sys.stderr)
    try:
        for epoch in range(start_epoch, tc.epochs + 1):
            model.train()
            state = model.init_hidden(tc.batch_size)
            bar = tqdm(total=steps_per_epoch * tc.bptt * tc.batch_size, desc=f"epoch {epoch}", unit="tok",
                       unit_scale=True, file=sys.stderr, mininterval=1.0 if sys.stderr.isatty() else 30.0)
            loss_sum = torch.zeros((), device=device)
            seen = 0
            for batch, i in enumerate(range(0, train_data.size(1) - 1, tc.bptt)):
                if batch >= steps_per_epoch:
                    break
                step_lr = schedule_lr()
                for group in optimizer.param_groups:
                    group["lr"] = step_lr
                seq = min(tc.bptt, train_data.size(1) - 1 - i)
                state = tuple(s.detach() for s in state)  # truncated BPTT
                loss, state = model.loss(train_data[:, i : i + seq], train_data[:, i + 1 : i + 1 + seq], state)
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                if tc.clip > 0:
                    torch.nn.utils.clip_grad_norm_(model.parameters(), tc.clip)
                optimizer.step()
                step += 1
                loss_sum += loss.detach() * seq
                seen += seq
                bar.update(seq * tc.batch_size)
                if batch % 50 == 0:
                    bar.set_postfix(loss=f"{loss.item():.3f}", lr=f"{step_lr:.3g}", refresh=False)
                if budget and progress() >= 1.0:
                    stopped = "budget"
                    break
            bar.close()
            if tc.schedule == "cosine":
                lr = step_lr
            train_loss = loss_sum.item() / max(seen, 1)
            valid_ppl, _ = evaluate_torch(model, valid_data, tc.bptt)
            wall = time.monotonic() - started
            history.append({"epoch": epoch, "train_loss": round(train_loss, 4),
                            "train_ppl": round(math.exp(min(train_loss, 50.0)), 3), "valid_ppl": round(valid_ppl, 3),
                            "lr": step_lr, "wall_seconds": round(wall, 1), "steps": step})
            improved = valid_ppl < best_val
            if improved:
                best_val = valid_ppl
            elif tc.schedule == "plateau":
                lr /= tc.lr_decay_factor
            print(f"epoch {epoch}: train ppl {history[-1]['train_ppl']:.2f}, valid ppl {valid_ppl:.2f}"
                  f"{' (best)' if improved else ''}, lr {step_lr:.3g}, {wall / 60:.1f} min", file=sys.stderr)
            snap = snapshot(epoch)
            if improved:
                save_atomic(snap, out / "best.pt")
            save_atomic(snap, out / "last.pt")
            write_curves(history, out)
            if stopped == "budget":
                print(f"wall-clock budget of {tc.budget_minutes} min reached; the schedule ended at lr {step_lr:.3g}",
                      file=sys.stderr)
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
    print(f"best valid ppl {best_val:.2f}, test ppl {test_ppl:.2f} (PyTorch, {_device_label(device)})", file=sys.stderr)
    return {"checkpoint": str(out / "best.pt"), "best_valid_ppl": round(best_val, 3), "test_ppl": round(test_ppl, 3),
            "epochs": len(history), "wall_seconds": round(wall, 1), "stopped": stopped}
