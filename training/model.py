"""The RNN language model: embedding -> stacked RNN/LSTM/GRU layers -> softmax over the vocabulary.

One class for every architecture, chosen by name. Two output heads:
- `full`: a linear decoder and a log-softmax; `tied` shares its matrix with the input embedding
  (Inan et al. 2017, Press & Wolf 2017), through a hidden -> embedding projection when the sizes differ;
- `adaptive`: PyTorch's adaptive softmax (Grave et al. 2017) for fast training, which still
  yields the exact, normalised distribution over the whole vocabulary at inference.
Regularisation for training only, as in AWD-LSTM (Merity et al. 2018): word-level embedding dropout,
locked (variational) dropout on the embedding, between layers and on the output, and DropConnect on
each layer's hidden-to-hidden matrix ("weight drop"). In eval mode the model is a plain stack of
layers, which is what exports to ONNX. Knows nothing of corpora files, ONNX or serving.
"""

from __future__ import annotations

import torch
from torch import nn
import torch.nn.functional as F

from training.config import ARCHITECTURES, ModelConfig  # noqa: F401  (ARCHITECTURES: re-exported)
from training.errors import TrainingError

def locked_dropout(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    """One mask per sequence and feature, the same at every time step; x is (batch, seq, features)."""
    if not training or p == 0.0:
        return x
    mask = x.new_empty(x.size(0), 1, x.size(2)).bernoulli_(1 - p) / (1 - p)  # (batch, 1, features)
    return x * mask


def _make_layer(architecture: str, inputs: int, hidden: int) -> nn.Module:
    if architecture == "lstm":
        return nn.LSTM(inputs, hidden, batch_first=True)
    if architecture == "gru":
        return nn.GRU(inputs, hidden, batch_first=True)
    return nn.RNN(inputs, hidden, nonlinearity=architecture.split("_")[1], batch_first=True)


class RNNModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        if cfg.vocab_size < 2:
            raise TrainingError(f"vocabulary size must be at least 2, got {cfg.vocab_size}")
        self.cfg = cfg
        self.encoder = nn.Embedding(cfg.vocab_size, cfg.embedding_size)
        # One single-layer module per layer, so locked dropout and weight drop can act between them.
        self.rnns = nn.ModuleList(
            _make_layer(cfg.architecture, cfg.embedding_size if k == 0 else cfg.hidden_size, cfg.hidden_size)
            for k in range(cfg.layers))
        if cfg.projected:
            self.projection = nn.Linear(cfg.hidden_size, cfg.embedding_size)
        if cfg.softmax == "full":
            self.decoder = nn.Linear(cfg.embedding_size if cfg.tied else cfg.hidden_size, cfg.vocab_size)
            nn.init.zeros_(self.decoder.bias)
            if cfg.tied:
                self.decoder.weight = self.encoder.weight
        else:
            self.adaptive = nn.AdaptiveLogSoftmaxWithLoss(cfg.hidden_size, cfg.vocab_size, cfg.cutoffs,
                                                          div_value=cfg.div_value)
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)

    def init_hidden(self, batch: int) -> tuple[torch.Tensor, ...]:
        """Zero state: a tuple of (layers, batch, hidden) tensors, one per state name, on the model's device."""
        shape = (self.cfg.layers, batch, self.cfg.hidden_size)
        device = self.encoder.weight.device
        return tuple(torch.zeros(shape, device=device) for _ in self.cfg.state_names)

    def _embed(self, tokens: torch.Tensor) -> torch.Tensor:
        weight = self.encoder.weight  # (vocab, emb)
        p = self.cfg.dropout_embedding
        if self.training and p > 0.0:
            weight = weight * (weight.new_empty(weight.size(0), 1).bernoulli_(1 - p) / (1 - p))  # whole words
        return F.embedding(tokens, weight)  # (batch, seq, emb)

    def _layer(self, rnn: nn.Module, x: torch.Tensor, state: tuple[torch.Tensor, ...]):
        hx = state if len(state) > 1 else state[0]
        if self.training and self.cfg.weight_drop > 0.0:
            dropped = F.dropout(rnn.weight_hh_l0, self.cfg.weight_drop, training=True)
            out, new = torch.func.functional_call(rnn, {"weight_hh_l0": dropped}, (x, hx))
        else:
            out, new = rnn(x, hx)
        return out, new if isinstance(new, tuple) else (new,)

    def _rnn(self, tokens: torch.Tensor, state: tuple[torch.Tensor, ...]):
        cfg = self.cfg
        x = locked_dropout(self._embed(tokens), cfg.dropout_input, self.training)  # (batch, seq, emb)
        news = []
        for k, rnn in enumerate(self.rnns):
            x, new = self._layer(rnn, x, tuple(s[k : k + 1].contiguous() for s in state))  # (1, batch, hidden) each
            news.append(new)
            x = locked_dropout(x, cfg.dropout_hidden if k < cfg.layers - 1 else cfg.dropout, self.training)
        state = tuple(torch.cat([new[j] for new in news], 0) for j in range(len(state)))  # (layers, batch, hidden)
        if cfg.projected:
            x = self.projection(x)  # (batch, seq, emb)
        return x, state  # (batch, seq, emb or hidden), state

    def loss(self, tokens: torch.Tensor, targets: torch.Tensor, state: tuple[torch.Tensor, ...]):
        """Mean next-token NLL over every position; tokens/targets (batch, seq)."""
        out, new = self._rnn(tokens, state)
        flat = out.reshape(-1, out.size(-1))  # (batch*seq, features)
        if self.cfg.softmax == "full":
            nll = F.cross_entropy(self.decoder(flat), targets.reshape(-1))
        else:
            nll = self.adaptive(flat, targets.reshape(-1)).loss
        return nll, new

    def log_probs(self, hidden: torch.Tensor) -> torch.Tensor:
        """Full next-word log-probabilities for (n, features) -> (n, vocab); export-friendly."""
        if self.cfg.softmax == "full":
            return F.log_softmax(self.decoder(hidden), dim=-1)
        a = self.adaptive
        head_lp = F.log_softmax(a.head(hidden), dim=-1)  # (n, shortlist + clusters)
        parts = [head_lp[:, : a.shortlist_size]]
        for i, tail in enumerate(a.tail):
            cluster_lp = F.log_softmax(tail(hidden), dim=-1)  # (n, cluster size)
            parts.append(cluster_lp + head_lp[:, a.shortlist_size + i : a.shortlist_size + i + 1])
        return torch.cat(parts, dim=-1)  # (n, vocab)

    def forward(self, tokens: torch.Tensor, *state: torch.Tensor):
        """The served step: tokens (batch, seq) + state -> log_probs after the last token, new state."""
        out, new = self._rnn(tokens, tuple(state))
        return (self.log_probs(out[:, -1]), *new)  # (batch, vocab), (layers, batch, hidden)...
