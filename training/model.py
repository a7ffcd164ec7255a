"""The RNN language model: embedding -> RNN/LSTM/GRU -> softmax over the vocabulary.

One class for every architecture, chosen by name. Two output heads:
- `full`: a linear decoder (optionally tied to the embedding) and a log-softmax;
- `adaptive`: PyTorch's adaptive softmax (Grave et al. 2017) for fast training, which still
  yields the exact, normalised distribution over the whole vocabulary at inference.
Knows nothing of corpora files, ONNX or serving.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import torch
from torch import nn
import torch.nn.functional as F

from training.errors import TrainingError

ARCHITECTURES = ("rnn_tanh", "rnn_relu", "lstm", "gru")


@dataclass
class ModelConfig:
    architecture: str = "lstm"
    vocab_size: int = 0
    embedding_size: int = 200
    hidden_size: int = 200
    layers: int = 2
    dropout: float = 0.2
    tied: bool = False
    softmax: str = "full"  # full | adaptive
    cutoffs: list[int] = field(default_factory=lambda: [2000, 10000])
    div_value: float = 4.0

    def validate(self) -> None:
        if self.architecture not in ARCHITECTURES:
            raise TrainingError(f"unknown architecture {self.architecture!r}; choose one of {', '.join(ARCHITECTURES)}")
        if self.softmax not in ("full", "adaptive"):
            raise TrainingError(f"unknown softmax {self.softmax!r}; choose full or adaptive")
        if self.tied and self.softmax != "full":
            raise TrainingError("--tied needs --softmax full")
        if self.tied and self.embedding_size != self.hidden_size:
            raise TrainingError("--tied needs --embedding-size equal to --hidden-size")
        if min(self.embedding_size, self.hidden_size, self.layers, self.vocab_size) < 1:
            raise TrainingError("sizes and layer count must be positive")
        if not 0.0 <= self.dropout < 1.0:
            raise TrainingError("--dropout must be in [0, 1)")
        if self.softmax == "adaptive":
            cuts = [c for c in self.cutoffs if c < self.vocab_size - 1]
            if not cuts or cuts != sorted(set(cuts)) or cuts[0] < 1:
                raise TrainingError(f"--cutoffs {self.cutoffs} must be positive, increase and stay below the vocab size {self.vocab_size}")
            self.cutoffs = cuts

    @property
    def state_names(self) -> list[tuple[str, str]]:
        """(input, output) names of the recurrent state tensors, in order."""
        return [("h0", "hn"), ("c0", "cn")] if self.architecture == "lstm" else [("h0", "hn")]

    def to_dict(self) -> dict:
        return asdict(self)


class RNNModel(nn.Module):
    def __init__(self, cfg: ModelConfig):
        super().__init__()
        cfg.validate()
        self.cfg = cfg
        self.drop = nn.Dropout(cfg.dropout)
        self.encoder = nn.Embedding(cfg.vocab_size, cfg.embedding_size)
        rnn_dropout = cfg.dropout if cfg.layers > 1 else 0.0
        if cfg.architecture == "lstm":
            self.rnn = nn.LSTM(cfg.embedding_size, cfg.hidden_size, cfg.layers, dropout=rnn_dropout, batch_first=True)
        elif cfg.architecture == "gru":
            self.rnn = nn.GRU(cfg.embedding_size, cfg.hidden_size, cfg.layers, dropout=rnn_dropout, batch_first=True)
        else:
            nonlinearity = cfg.architecture.split("_")[1]
            self.rnn = nn.RNN(cfg.embedding_size, cfg.hidden_size, cfg.layers, nonlinearity=nonlinearity,
                              dropout=rnn_dropout, batch_first=True)
        if cfg.softmax == "full":
            self.decoder = nn.Linear(cfg.hidden_size, cfg.vocab_size)
            if cfg.tied:
                self.decoder.weight = self.encoder.weight
        else:
            self.adaptive = nn.AdaptiveLogSoftmaxWithLoss(cfg.hidden_size, cfg.vocab_size, cfg.cutoffs,
                                                          div_value=cfg.div_value)
        nn.init.uniform_(self.encoder.weight, -0.1, 0.1)

    def init_hidden(self, batch: int) -> tuple[torch.Tensor, ...]:
        """Zero state: a tuple of (layers, batch, hidden) tensors, one per state name."""
        shape = (self.cfg.layers, batch, self.cfg.hidden_size)
        return tuple(torch.zeros(shape) for _ in self.cfg.state_names)

    def _rnn(self, tokens: torch.Tensor, state: tuple[torch.Tensor, ...]):
        emb = self.drop(self.encoder(tokens))  # (batch, seq, emb)
        out, new = self.rnn(emb, state if len(state) > 1 else state[0])
        new = new if isinstance(new, tuple) else (new,)
        return self.drop(out), new  # (batch, seq, hidden), state

    def loss(self, tokens: torch.Tensor, targets: torch.Tensor, state: tuple[torch.Tensor, ...]):
        """Mean next-token NLL over every position; tokens/targets (batch, seq)."""
        out, new = self._rnn(tokens, state)
        flat = out.reshape(-1, self.cfg.hidden_size)  # (batch*seq, hidden)
        if self.cfg.softmax == "full":
            nll = F.cross_entropy(self.decoder(flat), targets.reshape(-1))
        else:
            nll = self.adaptive(flat, targets.reshape(-1)).loss
        return nll, new

    def log_probs(self, hidden: torch.Tensor) -> torch.Tensor:
        """Full next-word log-probabilities for (n, hidden) -> (n, vocab); export-friendly."""
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
