"""Perplexity of an exported bundle through onnxruntime, never through PyTorch (no torch import).

The token file is read like a corpus split (one `<eos>` per line) and cut into `batch_size`
parallel streams exactly as training's evaluation does; each stream is fed one token per
onnxruntime call with its state carried across the whole file, and the log-probability the
bundle gives the true next token is summed. A second number resets the state at every line
(each line is read after a lone `<eos>`, as at the start of a line in training), which is what
sentence-level results report; the carried number is what a session that keeps its state sees.
"""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np

from training.bundle import open_bundle
from training.data import batchify, read_lines


def zero_state(manifest: dict, batch: int) -> dict[str, np.ndarray]:
    shape = (manifest["layers"], batch, manifest["hidden_size"])  # (layers, batch, hidden)
    return {s["input"]: np.zeros(shape, dtype=np.float32) for s in manifest["state"]}


def _stream_nll(session, manifest: dict, ids: np.ndarray, batch_size: int, reset_every: int = 0):
    """Yields (t, summed NLL of the `batch_size` tokens at t + 1), one token per stream per onnxruntime call,
    the state carried across the file (and reset to zero every `reset_every` tokens when that is > 0)."""
    data = batchify(ids, batch_size)  # (batch, n)
    outputs = ["log_probs"] + [s["output"] for s in manifest["state"]]
    rows = np.arange(batch_size)
    state = zero_state(manifest, batch_size)
    for t in range(data.shape[1] - 1):
        if reset_every and t % reset_every == 0:
            state = zero_state(manifest, batch_size)
        log_probs, *new = session.run(outputs, {"tokens": data[:, t : t + 1], **state})  # (batch, vocab)
        yield t, -float(log_probs[rows, data[:, t + 1]].astype(np.float64).sum())
        state = {s["input"]: h for s, h in zip(manifest["state"], new)}


def perplexity(session, manifest: dict, ids: np.ndarray, batch_size: int = 10) -> tuple[float, int]:
    nlls = [nll for _, nll in _stream_nll(session, manifest, ids, batch_size)]
    count = batch_size * len(nlls)
    return math.exp(sum(nlls) / count), count


def line_reset_perplexity(session, manifest: dict, lines: list[np.ndarray], eos: int,
                          batch_size: int = 64) -> tuple[float, int]:
    """Perplexity of every token of every line, the state zeroed at each line's start; (ppl, tokens scored).
    Lines of similar length are stepped together, one token per line per onnxruntime call."""
    outputs = ["log_probs"] + [s["output"] for s in manifest["state"]]
    order = sorted(range(len(lines)), key=lambda i: len(lines[i]))
    total, count = 0.0, 0
    for start in range(0, len(order), batch_size):
        group = [lines[i] for i in order[start : start + batch_size]]
        longest = max(len(line) for line in group)
        targets = np.full((len(group), longest), -1, dtype=np.int64)  # (lines, longest); -1 past a line's end
        for row, line in enumerate(group):
            targets[row, : len(line)] = line
        inputs = np.concatenate([np.full((len(group), 1), eos), np.where(targets[:, :-1] >= 0, targets[:, :-1], eos)], axis=1)
        state = zero_state(manifest, len(group))
        for t in range(longest):
            log_probs, *new = session.run(outputs, {"tokens": inputs[:, t : t + 1], **state})  # (lines, vocab)
            live = np.flatnonzero(targets[:, t] >= 0)
            total -= float(log_probs[live, targets[live, t]].astype(np.float64).sum())
            count += live.size
            state = {s["input"]: h for s, h in zip(manifest["state"], new)}
    return math.exp(total / count), count


CONTEXT_EDGES = (1, 2, 3, 5, 10, 20, 50, 100)  # context-length buckets [edge_i, edge_i+1), the last up to the window


def context_profile(session, manifest: dict, ids: np.ndarray, batch_size: int = 50, window: int = 200) -> list[dict]:
    """Perplexity by how many tokens of context the model had: the state is reset every `window` tokens,
    so the token after position t of a window was predicted from t + 1 tokens. A model that uses long
    context keeps improving in the later buckets; one that forgets flattens early."""
    edges = [e for e in CONTEXT_EDGES if e < window] + [window + 1]
    nll = np.zeros(len(edges) - 1)
    count = np.zeros(len(edges) - 1, dtype=np.int64)
    for t, step_nll in _stream_nll(session, manifest, ids, batch_size, reset_every=window):
        bucket = int(np.searchsorted(edges, t % window + 1, side="right")) - 1
        nll[bucket] += step_nll
        count[bucket] += batch_size
    return [{"context": f"{lo}-{hi - 1}" if hi - 1 > lo else str(lo), "perplexity": round(math.exp(n / c), 3),
             "tokens": int(c)} for lo, hi, n, c in zip(edges, edges[1:], nll, count) if c]


def evaluate_file(bundle: str | Path, text: str | Path, batch_size: int = 10, context_window: int = 0) -> dict:
    manifest, vocab, session = open_bundle(bundle)
    lines = read_lines(Path(text))
    ids = vocab.encode(lines)
    ppl, count = perplexity(session, manifest, ids, batch_size)
    reset_ppl, reset_count = line_reset_perplexity(session, manifest, [vocab.encode([line]) for line in lines], vocab.eos)
    result = {"bundle": str(bundle), "text": str(text), "perplexity": round(ppl, 4), "tokens": count,
              "batch_size": batch_size, "perplexity_line_reset": round(reset_ppl, 4), "tokens_line_reset": reset_count}
    if context_window:
        result["context_profile"] = context_profile(session, manifest, ids, batch_size, context_window)
    return result

