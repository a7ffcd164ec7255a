"""Every training and model setting in one place: ModelConfig, TrainConfig and the per-architecture
recipes that `python -m training train` starts from. Imports no torch, so the command line can
describe and check options before torch loads. Knows nothing of corpora, training loops or ONNX.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

from service.bundle import TEXT_CONVENTIONS
from training.errors import TrainingError

ARCHITECTURES = ("rnn_tanh", "rnn_relu", "lstm", "gru")
SOFTMAXES = ("full", "adaptive")
DROPOUTS = ("dropout", "dropout_input", "dropout_hidden", "dropout_embedding", "weight_drop")


@dataclass
class ModelConfig:
    architecture: str = field(default="lstm", metadata={"choices": ARCHITECTURES, "help": "recurrent cell"})
    vocab_size: int = field(default=0, metadata={"cli": False})  # set from the corpus
    embedding_size: int = field(default=256, metadata={"help": "word embedding size"})
    hidden_size: int = field(default=512, metadata={"help": "recurrent state size of every layer"})
    layers: int = field(default=2, metadata={"help": "stacked recurrent layers"})
    dropout: float = field(default=0.4, metadata={"help": "locked dropout on the last layer's output"})
    dropout_input: float = field(default=0.3, metadata={"help": "locked dropout on the embedding output"})
    dropout_hidden: float = field(default=0.2, metadata={"help": "locked dropout between recurrent layers"})
    dropout_embedding: float = field(default=0.1, metadata={"help": "drops whole words from the embedding"})
    weight_drop: float = field(default=0.2, metadata={"help": "DropConnect on hidden-to-hidden matrices"})
    tied: bool = field(default=False, metadata={"help": "share the embedding with the output matrix (full softmax)"})
    softmax: str = field(default="full", metadata={"choices": SOFTMAXES,
                                                   "help": "adaptive trains faster on big vocabularies; "
                                                           "both give the exact full distribution"})
    cutoffs: list[int] = field(default_factory=lambda: [2000, 10000],
                               metadata={"help": "adaptive softmax cluster boundaries by frequency rank"})
    div_value: float = field(default=4.0, metadata={"help": "adaptive softmax tail projection divisor"})

    def validate(self) -> None:
        """Raises TrainingError naming the bad option. The vocabulary-dependent checks run once
        `vocab_size` is known (it is 0 until the corpus is read)."""
        if self.architecture not in ARCHITECTURES:
            raise TrainingError(f"unknown architecture {self.architecture!r}; choose one of {', '.join(ARCHITECTURES)}")
        if self.softmax not in SOFTMAXES:
            raise TrainingError(f"unknown softmax {self.softmax!r}; choose full or adaptive")
        if self.tied and self.softmax != "full":
            raise TrainingError("--tied needs --softmax full")
        if min(self.embedding_size, self.hidden_size, self.layers) < 1:
            raise TrainingError("sizes and layer count must be positive")
        if self.vocab_size < 0 or self.vocab_size == 1:
            raise TrainingError(f"vocabulary size must be at least 2, got {self.vocab_size}")
        for name in DROPOUTS:
            if not 0.0 <= getattr(self, name) < 1.0:
                raise TrainingError(f"--{name.replace('_', '-')} must be in [0, 1)")
        if self.softmax == "adaptive":
            cuts = self.cutoffs
            if not cuts or cuts != sorted(set(cuts)) or cuts[0] < 1:
                raise TrainingError(f"--cutoffs {cuts} must be positive and increase")
            if self.vocab_size and cuts[-1] >= self.vocab_size - 1:
                raise TrainingError(f"--cutoffs {cuts} must stay below the vocabulary size minus one "
                                    f"({self.vocab_size - 1}); drop the larger ones")

    @property
    def projected(self) -> bool:
        """A tied head whose sizes differ maps the hidden state down to the embedding size first."""
        return self.tied and self.hidden_size != self.embedding_size

    @property
    def state_names(self) -> list[tuple[str, str]]:
        """(input, output) names of the recurrent state tensors, in order."""
        return [("h0", "hn"), ("c0", "cn")] if self.architecture == "lstm" else [("h0", "hn")]

    def to_dict(self) -> dict:
        return asdict(self)



@dataclass
class TrainConfig:
    data: str = field(default="", metadata={"required": True, "help": "corpus folder with train.txt, valid.txt, test.txt"})
    out: str = field(default="runs/model", metadata={"help": "folder for best.pt, last.pt, history.csv, curves.png"})
    text_convention: str = field(default="wikitext", metadata={"choices": tuple(TEXT_CONVENTIONS),
                                                               "help": "how raw user text is split to match the corpus"})
    device: str = field(default="auto", metadata={"choices": ("auto", "cpu", "cuda"), "help": "auto: cuda if present"})
    batch_size: int = field(default=32, metadata={"help": "parallel training streams"})
    eval_batch_size: int = field(default=10, metadata={"help": "parallel streams when measuring perplexity"})
    bptt: int = field(default=35, metadata={"help": "truncated backprop length"})
    optimizer: str = field(default="adam", metadata={"choices": ("adam", "sgd")})
    lr: float = field(default=2e-3, metadata={"help": "peak learning rate"})
    weight_decay: float = field(default=1.2e-6, metadata={"help": "L2 penalty"})
    schedule: str = field(default="cosine", metadata={
        "choices": ("cosine", "plateau"),
        "help": "cosine: from lr down to lr*lr_floor over the epochs or the budget, whichever ends first; "
                "plateau: lr /= lr_decay_factor when validation stalls"})
    warmup_steps: int = field(default=100, metadata={"help": "linear learning-rate warm-up steps"})
    lr_floor: float = field(default=0.02, metadata={"help": "cosine: the last learning rate, as a fraction of lr"})
    lr_decay_factor: float = field(default=4.0, metadata={"help": "plateau: divide lr by this"})
    clip: float = field(default=0.5, metadata={"help": "gradient norm clip (0 = off)"})
    epochs: int = field(default=100, metadata={"help": "at most this many epochs"})
    budget_minutes: float = field(default=25.0, metadata={  # + start-up and the final test: within 30 min
        "help": "wall-clock budget (0 = none); the cosine schedule ends at its floor when it runs out"})
    seed: int = 1111
    threads: int = field(default=0, metadata={"help": "torch CPU threads (0 = all cores)"})
    max_steps: int = field(default=0, metadata={"help": "cap batches per epoch (smoke runs; 0 = whole epochs)"})
    command: str = field(default="", metadata={"cli": False})




# What `python -m training train --architecture A` uses where the command line is silent. Chosen for a
# corpus of about 1 M tokens and 10 k words trained for 30 minutes on 2 CPU cores (docs/training.md shows
# the runs behind them); the wall-clock budget ends the cosine schedule at its floor.
_RNN = dict(embedding_size=256, hidden_size=256, tied=True, dropout=0.25, dropout_input=0.15, dropout_hidden=0.1,
            dropout_embedding=0.05, weight_drop=0.1,  # a tanh/relu cell has less capacity to regularise away
            lr=1e-3, clip=0.25)  # a plain RNN diverges at Adam's usual rates; its gradients spike
RECIPES: dict[str, dict] = {
    "lstm": dict(embedding_size=256, hidden_size=256, tied=True, lr=3e-3, dropout=0.3, dropout_input=0.2,
                 dropout_hidden=0.15, dropout_embedding=0.05, weight_drop=0.15),  # ~5 epochs: lighter than AWD
    "gru": dict(embedding_size=256, hidden_size=256, tied=True, lr=3e-3),
    "rnn_tanh": _RNN,
    "rnn_relu": _RNN,
}
