"""training.model and training.train: the RNN LM, learning, checkpoints, resume, determinism, Ctrl-C."""

from __future__ import annotations

import csv
import math

import pytest
import torch

from training.data import Corpus, batchify
from training.errors import TrainingError
from training.model import ARCHITECTURES, ModelConfig, RNNModel
from training.config import TrainConfig
from training.train import compact, evaluate_torch, load_checkpoint, model_from_checkpoint, train

VOCAB = 40
RUN_FILES = ["best.pt", "curves.png", "history.csv", "last.pt"]
NO_DROPOUT = dict(dropout=0.0, dropout_input=0.0, dropout_hidden=0.0, dropout_embedding=0.0, weight_drop=0.0)


def _model(seed: int = 0, **cfg) -> RNNModel:
    torch.manual_seed(seed)
    base = dict(vocab_size=VOCAB, embedding_size=12, hidden_size=12, layers=2, tied=False, cutoffs=[6, 14],
                div_value=2.0, **NO_DROPOUT)
    return RNNModel(ModelConfig(**{**base, **cfg})).eval()


def _random_state(model: RNNModel, batch: int, gen: torch.Generator) -> tuple[torch.Tensor, ...]:
    shape = (model.cfg.layers, batch, model.cfg.hidden_size)
    return tuple(torch.randn(shape, generator=gen) * 0.5 for _ in model.cfg.state_names)


HEADS = [dict(softmax="full"), dict(softmax="adaptive"), dict(softmax="full", tied=True),
         dict(softmax="full", tied=True, embedding_size=8)]
HEAD_IDS = ["full", "adaptive", "tied", "tied-projected"]


# ---------------------------------------------------------------------------- configuration

@pytest.mark.parametrize("change, message", [
    (dict(architecture="transformer"), "unknown architecture"),
    (dict(softmax="hierarchical"), "unknown softmax"),
    (dict(tied=True, softmax="adaptive"), "--tied needs --softmax full"),
    (dict(hidden_size=0), "must be positive"),
    (dict(layers=0), "must be positive"),
    (dict(vocab_size=0), "vocabulary size must be at least 2"),
    (dict(vocab_size=1), "vocabulary size must be at least 2"),
    (dict(dropout=1.0), "--dropout must"),
    (dict(dropout_input=-0.1), "--dropout-input must"),
    (dict(weight_drop=1.0), "--weight-drop must"),
    (dict(softmax="adaptive", cutoffs=[14, 6]), "--cutoffs"),
    (dict(softmax="adaptive", cutoffs=[0, 6]), "--cutoffs"),
    (dict(softmax="adaptive", cutoffs=[6, 6]), "--cutoffs"),
    (dict(softmax="adaptive", cutoffs=[100, 200]), "--cutoffs"),
], ids=lambda v: str(v) if isinstance(v, str) else "-".join(f"{k}={w}" for k, w in v.items()))
def test_bad_model_config_is_a_training_error(change, message):
    cfg = ModelConfig(**{**dict(vocab_size=VOCAB, embedding_size=12, hidden_size=12, tied=False), **change})
    with pytest.raises(TrainingError, match=message):
        RNNModel(cfg)


def test_cutoffs_are_checked_against_the_vocabulary_once_it_is_known_and_never_rewritten():
    cfg = ModelConfig(softmax="adaptive", tied=False, cutoffs=[6, 14, 2000])
    cfg.validate()  # vocab_size 0: not known yet (the command line checks options before reading the corpus)
    cfg.vocab_size = VOCAB
    with pytest.raises(TrainingError, match=r"--cutoffs \[6, 14, 2000\] must stay below the vocabulary size"):
        cfg.validate()
    assert cfg.cutoffs == [6, 14, 2000]


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_state_names_and_zero_state(architecture):
    model = _model(architecture=architecture)
    names = model.cfg.state_names
    assert names == ([("h0", "hn"), ("c0", "cn")] if architecture == "lstm" else [("h0", "hn")])
    state = model.init_hidden(5)
    assert len(state) == len(names)
    assert all(s.shape == (2, 5, 12) and not s.any() for s in state)


# ---------------------------------------------------------------------------- the distribution

@pytest.mark.parametrize("architecture", ARCHITECTURES)
@pytest.mark.parametrize("head", HEADS, ids=HEAD_IDS)
def test_forward_gives_a_normalised_distribution_and_new_state(architecture, head):
    model = _model(architecture=architecture, **head)
    gen = torch.Generator().manual_seed(1)
    tokens = torch.randint(VOCAB, (3, 5), generator=gen)
    state = _random_state(model, 3, gen)
    with torch.no_grad():
        log_probs, *new = model(tokens, *state)
    assert log_probs.shape == (3, VOCAB)
    assert torch.allclose(log_probs.exp().sum(-1), torch.ones(3), atol=1e-5)
    assert len(new) == len(state) and all(n.shape == s.shape for n, s in zip(new, state))
    assert all(not torch.equal(n, s) for n, s in zip(new, state))


def test_adaptive_log_probs_equal_pytorchs_own():
    model = _model(architecture="gru", softmax="adaptive")
    hidden = torch.randn(9, 12, generator=torch.Generator().manual_seed(2))
    with torch.no_grad():
        assert torch.allclose(model.log_probs(hidden), model.adaptive.log_prob(hidden), atol=1e-6)


@pytest.mark.parametrize("architecture", ["rnn_relu", "lstm"])
@pytest.mark.parametrize("head", HEADS, ids=HEAD_IDS)
def test_training_loss_is_the_nll_of_the_served_distribution(architecture, head):
    """Stepping forward() token by token, carrying the state, scores what loss() optimises."""
    model = _model(architecture=architecture, **head)
    gen = torch.Generator().manual_seed(3)
    tokens = torch.randint(VOCAB, (4, 7), generator=gen)
    targets = torch.randint(VOCAB, (4, 7), generator=gen)
    state0 = _random_state(model, 4, gen)
    with torch.no_grad():
        loss, final = model.loss(tokens, targets, state0)
        state, nll = state0, []
        for t in range(7):
            log_probs, *state = model(tokens[:, t : t + 1], *state)
            nll.append(-log_probs.gather(1, targets[:, t : t + 1]))
    assert float(loss) == pytest.approx(float(torch.cat(nll).mean()), rel=1e-5)
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(final, state))


@pytest.mark.parametrize("architecture", ARCHITECTURES)
def test_a_batched_row_equals_the_same_row_alone(architecture):
    model = _model(architecture=architecture, softmax="adaptive")
    gen = torch.Generator().manual_seed(4)
    tokens = torch.randint(VOCAB, (6, 4), generator=gen)
    state = _random_state(model, 6, gen)
    with torch.no_grad():
        batched = model(tokens, *state)
        alone = model(tokens[2:3], *(s[:, 2:3] for s in state))
    assert torch.allclose(batched[0][2:3], alone[0], atol=1e-5)
    assert all(torch.allclose(b[:, 2:3], a, atol=1e-5) for b, a in zip(batched[1:], alone[1:]))


def test_tied_decoder_shares_the_embedding_matrix():
    model = _model(tied=True)
    assert model.decoder.weight is model.encoder.weight
    assert not hasattr(model, "projection")
    assert sum(p.numel() for p in model.parameters()) < sum(p.numel() for p in _model().parameters())


def test_a_tied_head_of_another_size_projects_the_state_to_the_embedding():
    model = _model(tied=True, embedding_size=8, hidden_size=12)
    assert model.decoder.weight is model.encoder.weight
    assert tuple(model.projection.weight.shape) == (8, 12)  # (embedding, hidden)
    assert all(s.shape == (2, 3, 12) for s in model.init_hidden(3))


REGULARISERS = [dict(dropout=0.5), dict(dropout_input=0.5), dict(dropout_hidden=0.5), dict(dropout_embedding=0.5),
                dict(weight_drop=0.5)]


@pytest.mark.parametrize("architecture", ["lstm", "rnn_tanh"])
@pytest.mark.parametrize("regulariser", REGULARISERS, ids=lambda r: next(iter(r)))
def test_each_regulariser_acts_in_training_only(architecture, regulariser):
    model = _model(architecture=architecture, **regulariser)
    gen = torch.Generator().manual_seed(6)
    tokens = torch.randint(VOCAB, (3, 6), generator=gen)
    state = model.init_hidden(3)
    with torch.no_grad():
        model.eval()
        plain = [float(model.loss(tokens, tokens, state)[0]) for _ in range(2)]
        model.train()
        noisy = [float(model.loss(tokens, tokens, state)[0]) for _ in range(2)]
        reference = _model(architecture=architecture)  # same seed, no regularisation
        exact = float(reference.loss(tokens, tokens, state)[0])
    assert plain[0] == plain[1] == pytest.approx(exact, abs=1e-6)  # eval: the plain model
    assert noisy[0] != noisy[1] and plain[0] not in noisy  # training: a fresh mask at every call


def test_weight_drop_trains_the_hidden_to_hidden_matrix():
    model = _model(architecture="lstm", weight_drop=0.5).train()
    tokens = torch.randint(VOCAB, (3, 6), generator=torch.Generator().manual_seed(7))
    model.loss(tokens, tokens, model.init_hidden(3))[0].backward()
    grads = [rnn.weight_hh_l0.grad for rnn in model.rnns]
    assert all(g is not None and g.abs().sum() > 0 for g in grads)
    assert all((g == 0).any() for g in grads)  # the dropped connections got no gradient


# ---------------------------------------------------------------------------- learning

@pytest.mark.parametrize("head", HEADS, ids=HEAD_IDS)
def test_a_few_steps_lower_the_loss_on_a_batch(head):
    model = _model(architecture="gru", **head).train()
    gen = torch.Generator().manual_seed(5)
    tokens = torch.randint(VOCAB, (4, 9), generator=gen)
    targets = torch.roll(tokens, -1, dims=1)  # a learnable mapping
    state = model.init_hidden(4)
    optimizer = torch.optim.Adam(model.parameters(), lr=0.05)
    with torch.no_grad():
        before = float(model.loss(tokens, targets, state)[0])
    for _ in range(15):
        optimizer.zero_grad()
        model.loss(tokens, targets, state)[0].backward()
        optimizer.step()
    with torch.no_grad():
        after = float(model.loss(tokens, targets, state)[0])
    assert after < before - 0.5, (before, after)


def test_an_epoch_of_training_lowers_validation_perplexity(tiny_trained, tiny_configs, tiny_corpus, tmp_path):
    run = tiny_trained(max_steps=80)
    trained, vocab = model_from_checkpoint(load_checkpoint(run / "best.pt"))
    # The same model before any step: same seed, same construction as train() does.
    tc, mc = tiny_configs(tmp_path)
    torch.manual_seed(tc.seed)
    mc.vocab_size = len(vocab)
    untrained = RNNModel(mc)
    valid = batchify(Corpus.load(tiny_corpus, vocab).valid, tc.eval_batch_size)
    before, n = evaluate_torch(untrained, valid, tc.bptt)
    after, _ = evaluate_torch(trained, valid, tc.bptt)
    assert before > 0.8 * len(vocab)  # an untrained model is close to uniform
    assert after < 0.5 * before, (before, after)
    assert load_checkpoint(run / "best.pt")["history"][0]["valid_ppl"] == pytest.approx(after, rel=1e-3)
    assert n == valid.shape[0] * (valid.shape[1] - 1)


def test_checkpoint_is_plain_data_with_everything_needed_to_reload(tiny_trained, tiny_corpus):
    run = tiny_trained()
    raw = torch.load(run / "best.pt", weights_only=True)  # no pickled code
    for key in ("model_config", "train_config", "vocab", "state_dict", "optimizer", "rng", "epoch", "history",
                "corpus", "versions", "test_ppl_torch"):
        assert key in raw, key
    assert raw["vocab"] == Corpus.load(tiny_corpus).vocab.words
    assert raw["corpus"]["sha256"] == Corpus.load(tiny_corpus).sha256
    model, vocab = model_from_checkpoint(raw)
    assert model.cfg.vocab_size == len(vocab) and not model.training


@pytest.mark.parametrize("content, message", [
    (b"not a checkpoint at all\n", "not a nextword checkpoint"),
    (None, "not a nextword checkpoint"),  # a torch file of the wrong shape
    ("truncated", "not a nextword checkpoint"),
])
def test_bad_checkpoints_are_one_line_training_errors(tmp_path, tiny_trained, content, message):
    path = tmp_path / "x.pt"
    if content is None:
        torch.save({"weights": torch.zeros(2)}, path)
    elif content == "truncated":
        path.write_bytes((tiny_trained() / "best.pt").read_bytes()[:2000])
    else:
        path.write_bytes(content)
    with pytest.raises(TrainingError, match=message) as err:
        load_checkpoint(path)
    assert "\n" not in str(err.value)


def test_a_compact_checkpoint_in_parts_loads_as_the_same_model_with_float16_weights(tiny_trained, tmp_path):
    run = tiny_trained(tied=True)
    summary = compact(run / "best.pt", tmp_path / "c", dtype="float16", part_mib=0.004)  # ~4 KiB parts
    parts = sorted(p.name for p in (tmp_path / "c").iterdir())
    assert len(parts) > 1 and parts == summary["files"] and parts[0] == "checkpoint.pt.part-00"
    assert all((tmp_path / "c" / p).stat().st_size <= 0.004 * 2**20 for p in parts)
    small = load_checkpoint(tmp_path / "c")
    assert "optimizer" not in small and small["compact"]["dtype"] == "float16"
    assert all(v.dtype == torch.float16 for v in small["state_dict"].values() if v.is_floating_point())
    assert small["state_dict"]["decoder.weight"] is small["state_dict"]["encoder.weight"]  # tied: stored once
    full, _ = model_from_checkpoint(load_checkpoint(run / "best.pt"))
    half, _ = model_from_checkpoint(small)
    for (name, a), (_, b) in zip(full.state_dict().items(), half.state_dict().items()):
        assert b.dtype == torch.float32 and torch.equal(a.half().float(), b), name
    with pytest.raises(TrainingError, match="compact checkpoint"):
        tc, mc = _tiny_resume_configs(run)
        train(tc, mc, resume=str(tmp_path / "c"))
    (tmp_path / "c" / parts[-1]).unlink()  # a lost part
    with pytest.raises(TrainingError, match="not a nextword checkpoint|cannot read checkpoint"):
        load_checkpoint(tmp_path / "c")


def test_compact_keeps_every_tensor_when_a_layer_shares_one_buffer_as_cudnn_leaves_it(tiny_trained, tmp_path):
    # On CUDA, cuDNN packs each recurrent layer's weight_ih, weight_hh, bias_ih and bias_hh into one flat
    # buffer, so a GPU checkpoint's tensors are views into one storage at different offsets.
    ckpt = torch.load(tiny_trained(tied=True) / "best.pt", weights_only=True)
    for layer in sorted({k.split(".")[1] for k in ckpt["state_dict"] if k.startswith("rnns.")}):
        names = [k for k in ckpt["state_dict"] if k.startswith(f"rnns.{layer}.")]
        flat = torch.cat([ckpt["state_dict"][k].flatten() for k in names])
        offset = 0
        for k in names:
            shape = ckpt["state_dict"][k].shape
            ckpt["state_dict"][k] = flat[offset:offset + shape.numel()].view(shape)
            offset += shape.numel()
    torch.save(ckpt, tmp_path / "gpu.pt")
    original = load_checkpoint(tmp_path / "gpu.pt")["state_dict"]
    assert len({v.untyped_storage().data_ptr() for k, v in original.items() if k.startswith("rnns.0.")}) == 1
    compact(tmp_path / "gpu.pt", tmp_path / "c", dtype="float16")
    small = load_checkpoint(tmp_path / "c")["state_dict"]
    assert small.keys() == original.keys()
    for k, v in original.items():
        assert small[k].shape == v.shape and torch.equal(small[k].float(), v.half().float()), k
    model_from_checkpoint(load_checkpoint(tmp_path / "c"))  # loads: every shape matches the model


def _tiny_resume_configs(run):
    ckpt = load_checkpoint(run / "best.pt")
    return TrainConfig(**ckpt["train_config"]), ModelConfig(**ckpt["model_config"])


def test_a_checkpoint_of_the_previous_layout_is_upgraded_in_one_place(tiny_trained, tmp_path):
    """Before per-layer modules: one multi-layer `rnn` module and a single dropout rate."""
    ckpt = load_checkpoint(tiny_trained() / "best.pt")
    old = dict(ckpt, state_dict={}, model_config={k: v for k, v in ckpt["model_config"].items()
                                                  if k not in ("dropout_input", "dropout_hidden",
                                                               "dropout_embedding", "weight_drop")})
    for key, value in ckpt["state_dict"].items():  # rnns.1.weight_hh_l0 -> rnn.weight_hh_l1
        layer, _, name = key.removeprefix("rnns.").partition(".")
        old["state_dict"][f"rnn.{name[:-1]}{layer}" if key.startswith("rnns.") else key] = value
    for key in ("commands", "device", "stopped", "wall_seconds_total"):
        old.pop(key, None)
    torch.save(old, tmp_path / "old.pt")
    upgraded = load_checkpoint(tmp_path / "old.pt")
    assert upgraded["model_config"]["dropout_input"] == upgraded["model_config"]["dropout"]
    assert upgraded["commands"] == [ckpt["train_config"]["command"]] and upgraded["device"] == "cpu"
    new, _ = model_from_checkpoint(ckpt)
    again, _ = model_from_checkpoint(upgraded)
    tokens = torch.randint(len(ckpt["vocab"]), (2, 5), generator=torch.Generator().manual_seed(8))
    with torch.no_grad():
        assert torch.equal(new(tokens, *new.init_hidden(2))[0], again(tokens, *again.init_hidden(2))[0])


def test_every_epoch_writes_a_csv_and_a_png_of_the_curves(tiny_configs, tmp_path):
    tc, mc = tiny_configs(tmp_path / "run", epochs=2, max_steps=5)
    train(tc, mc)
    with (tmp_path / "run" / "history.csv").open() as f:
        rows = list(csv.DictReader(f))
    history = load_checkpoint(tmp_path / "run" / "last.pt")["history"]
    assert [int(r["epoch"]) for r in rows] == [1, 2]
    assert [float(r["valid_ppl"]) for r in rows] == [h["valid_ppl"] for h in history]
    assert (tmp_path / "run" / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_a_budgeted_cosine_schedule_ends_at_its_floor_when_the_budget_runs_out(tiny_configs, tmp_path, monkeypatch):
    """The schedule follows the wall clock: a fake clock advancing 1 s per call makes the budget bind."""
    clock = iter(range(10**6))
    monkeypatch.setattr("training.train.time.monotonic", lambda: float(next(clock)))
    tc, mc = tiny_configs(tmp_path / "run", schedule="cosine", lr=0.01, lr_floor=0.1, epochs=1000, max_steps=20,
                          budget_minutes=1.0)
    summary = train(tc, mc)
    history = load_checkpoint(tmp_path / "run" / "last.pt")["history"]
    assert summary["stopped"] == "budget" and 1 < len(history) < 1000
    assert history[-1]["lr"] == pytest.approx(0.01 * 0.1, rel=0.05)  # the floor, not mid-schedule
    assert history[0]["lr"] > 2 * history[-1]["lr"]  # it was still descending after the first epoch


# ---------------------------------------------------------------------------- determinism and resume

def _history(ckpt: dict) -> list[dict]:
    """History without wall-clock times, the one thing two identical runs cannot share."""
    return [{k: v for k, v in h.items() if k != "wall_seconds"} for h in ckpt["history"]]


def _assert_same_weights(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


# Adam (optimizer state), dropout (RNG state) and a plateau schedule: what resume must restore.
RESUMABLE = dict(optimizer="adam", lr=0.01, dropout=0.3, layers=2, max_steps=5)


def test_same_seed_gives_the_same_numbers_and_another_seed_does_not(tiny_trained, tiny_configs, tmp_path):
    first = load_checkpoint(tiny_trained(epochs=2, **RESUMABLE) / "last.pt")
    tc, mc = tiny_configs(tmp_path / "again", epochs=2, **RESUMABLE)
    train(tc, mc)
    again = load_checkpoint(tmp_path / "again" / "last.pt")
    _assert_same_weights(first["state_dict"], again["state_dict"])
    assert _history(first) == _history(again)
    tc, mc = tiny_configs(tmp_path / "other", epochs=2, **{**RESUMABLE, "seed": 99})
    train(tc, mc)
    other = load_checkpoint(tmp_path / "other" / "last.pt")
    assert not torch.equal(first["state_dict"]["encoder.weight"], other["state_dict"]["encoder.weight"])
    assert _history(first) != _history(other)


def test_resume_from_last_continues_where_it_stopped(tiny_trained, tiny_configs, tmp_path):
    straight = load_checkpoint(tiny_trained(epochs=2, **RESUMABLE) / "last.pt")
    out = tmp_path / "resumed"
    tc, mc = tiny_configs(out, epochs=1, **RESUMABLE)
    train(tc, mc)
    one = load_checkpoint(out / "last.pt")
    assert one["epoch"] == 1
    with pytest.raises(AssertionError):  # one epoch is not yet the answer: the comparison can fail
        _assert_same_weights(straight["state_dict"], one["state_dict"])
    tc, mc = tiny_configs(out, epochs=2, **RESUMABLE)
    mc.architecture = "gru"  # ignored on resume: the checkpoint's model config wins
    summary = train(tc, mc, resume=str(out / "last.pt"))
    resumed = load_checkpoint(out / "last.pt")
    assert resumed["epoch"] == straight["epoch"] == 2 and resumed["step"] == straight["step"]
    _assert_same_weights(straight["state_dict"], resumed["state_dict"])
    assert _history(resumed) == _history(straight)
    assert resumed["lr"] == straight["lr"]
    assert summary["epochs"] == 2


class _InterruptOnTrainingCall:
    """Wraps RNNModel.loss: raises KeyboardInterrupt (as Ctrl-C would) on the n-th training-mode call."""

    def __init__(self, monkeypatch, n: int):
        self.n, self.calls, self.original = n, 0, RNNModel.loss
        monkeypatch.setattr(RNNModel, "loss", self)

    def __get__(self, model, owner=None):
        def loss(*args, **kwargs):
            if model.training:
                self.calls += 1
                if self.calls == self.n:
                    raise KeyboardInterrupt
            return self.original(model, *args, **kwargs)

        return loss


@pytest.mark.slow
def test_ctrl_c_keeps_the_best_checkpoint_and_resume_finishes_the_run(tiny_trained, tiny_configs, tmp_path,
                                                                      monkeypatch, capsys):
    cfg = dict(RESUMABLE, schedule="cosine", epochs=2)  # cosine: the lr depends on the step across epochs
    out = tmp_path / "run"
    tc, mc = tiny_configs(out, **cfg)
    interrupt = _InterruptOnTrainingCall(monkeypatch, n=RESUMABLE["max_steps"] + 2)  # mid epoch 2
    with pytest.raises(KeyboardInterrupt):
        train(tc, mc)
    assert interrupt.calls == interrupt.n
    assert f"best checkpoint kept at {out / 'best.pt'}" in capsys.readouterr().err
    monkeypatch.undo()
    best = load_checkpoint(out / "best.pt")
    assert best["epoch"] == 1 and load_checkpoint(out / "last.pt")["epoch"] == 1
    model, _ = model_from_checkpoint(best)
    assert sorted(p.name for p in out.iterdir()) == RUN_FILES  # no half-written temp files

    tc, mc = tiny_configs(out, **cfg)
    train(tc, mc, resume=str(out / "last.pt"))
    straight_out = tmp_path / "straight"
    tc, mc = tiny_configs(straight_out, **cfg)
    train(tc, mc)
    resumed, straight = load_checkpoint(out / "last.pt"), load_checkpoint(straight_out / "last.pt")
    _assert_same_weights(straight["state_dict"], resumed["state_dict"])
    assert _history(resumed) == _history(straight)


def test_ctrl_c_while_saving_leaves_the_previous_checkpoints_whole(tiny_configs, tmp_path, monkeypatch):
    out = tmp_path / "run"
    tc, mc = tiny_configs(out, epochs=3, max_steps=3)
    real_save, saves = torch.save, []

    def save(obj, path, *args, **kwargs):
        saves.append(path)
        if len(saves) == 3:  # the first save of epoch 2: half a file, then Ctrl-C
            with open(path, "wb") as f:
                f.write(b"PK\x03\x04 half a zip")
            raise KeyboardInterrupt
        return real_save(obj, path, *args, **kwargs)

    monkeypatch.setattr(torch, "save", save)
    with pytest.raises(KeyboardInterrupt):
        train(tc, mc)
    monkeypatch.undo()
    assert len(saves) == 3
    assert sorted(p.name for p in out.iterdir()) == RUN_FILES  # the partial temp file is gone
    for name in ("best.pt", "last.pt"):
        ckpt = load_checkpoint(out / name)
        assert ckpt["epoch"] == 1
        model_from_checkpoint(ckpt)


def test_ctrl_c_in_the_first_epoch_says_no_checkpoint_was_written(tiny_configs, tmp_path, monkeypatch, capsys):
    tc, mc = tiny_configs(tmp_path / "run")
    _InterruptOnTrainingCall(monkeypatch, n=2)
    with pytest.raises(KeyboardInterrupt):
        train(tc, mc)
    err = capsys.readouterr().err
    assert not (tmp_path / "run" / "best.pt").exists()
    assert "no checkpoint written" in err and "best checkpoint kept" not in err


def test_perplexity_is_exp_of_the_mean_nll(tiny_trained, tiny_corpus):
    model, vocab = model_from_checkpoint(load_checkpoint(tiny_trained() / "best.pt"))
    data = batchify(Corpus.load(tiny_corpus, vocab).test, 3)  # (3, n)
    ppl, count = evaluate_torch(model, data, bptt=1000)  # one chunk: a single loss() call
    src = torch.from_numpy(data)
    with torch.no_grad():
        nll, _ = model.loss(src[:, :-1], src[:, 1:], model.init_hidden(3))
    assert count == src.numel() - 3
    assert ppl == pytest.approx(math.exp(float(nll)), rel=1e-5)
    chunked, _ = evaluate_torch(model, data, bptt=7)  # the state carries across chunks
    assert chunked == pytest.approx(ppl, rel=1e-4)
