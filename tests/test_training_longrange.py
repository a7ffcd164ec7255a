"""`python -m training longrange` (the name-after-N-words corpus, a seconds-long run) and `plot-context`."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from training.__main__ import main
from training.data import UNK, Vocab
from training.errors import TrainingError
from training.export import export
from training.longrange import (CHANCE, FIXED_IDS, INTRO, LEAD, NAMES, QUERY, LongRangeConfig, build_vocab,
                                _filler_words, make_examples, run, wilson)

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
TEXT_WORDS = 600  # distinct words w0 … w599, so any run of them has exactly one place in the text


def _write_corpus(folder: Path, extra: str = "") -> Path:
    """train.txt / valid.txt of distinct words in order, 20 to a line; `extra` is appended to train.txt's first line."""
    folder.mkdir(parents=True, exist_ok=True)
    for split, offset in (("train", 0), ("valid", 10_000)):
        words = [f"w{offset + i}" for i in range(TEXT_WORDS)]
        lines = [" ".join(words[i : i + 20]) for i in range(0, TEXT_WORDS, 20)]
        if split == "train":
            lines[0] += extra
        (folder / f"{split}.txt").write_text("".join(f" {line} \n" for line in lines), encoding="utf-8")
    return folder


def _words(vocab: Vocab, ids) -> list[str]:
    return [vocab.words[i] for i in ids]


# ---------------------------------------------------------------------------- the corpus

@pytest.fixture
def text_vocab():
    words = [f"w{i}" for i in range(TEXT_WORDS)]
    vocab = build_vocab(words, size=TEXT_WORDS)
    return words, vocab, vocab.encode([words])


@pytest.mark.parametrize("max_gap", [0, 7, 40])
def test_the_name_sits_gap_words_before_the_query_inside_one_window_of_the_text(text_vocab, max_gap):
    words, vocab, filler = text_vocab
    gaps = np.array(sorted({0, max_gap // 2, max_gap}), dtype=np.int64)
    tokens, names, positions = make_examples(filler, gaps, max_gap, np.random.default_rng(3))
    assert tokens.shape == (len(gaps), LEAD + max_gap + len(INTRO) + 1 + len(QUERY))
    for row, gap, name, pos in zip(tokens, gaps, names, positions):
        seq = _words(vocab, row)
        assert seq[pos] in NAMES and row[pos] == name
        assert len(seq) - len(QUERY) - pos - 1 == gap  # exactly `gap` words between the name and the query
        assert tuple(seq[pos - len(INTRO) : pos]) == INTRO and tuple(seq[-len(QUERY):]) == QUERY
        filler_words = seq[: pos - len(INTRO)] + seq[pos + 1 : len(seq) - len(QUERY)]
        assert len(filler_words) == LEAD + max_gap
        start = words.index(filler_words[0])
        assert filler_words == words[start : start + len(filler_words)]  # one contiguous run of the given text
        assert sum(w in NAMES for w in seq) == 1  # the name is nowhere else


def test_names_in_the_text_are_unknown_words_so_only_the_example_holds_a_name(tmp_path):
    folder = _write_corpus(tmp_path / "c", extra=" Cliff met Max")
    words = _filler_words(folder / "train.txt")
    assert "Cliff" not in words and "Max" not in words and words[20:23] == [UNK, "met", UNK]
    vocab = build_vocab(words, size=10)
    assert vocab.words[: len(NAMES) + 1] == [UNK, *NAMES] and len(vocab) == len(FIXED_IDS) + 10


def test_a_text_shorter_than_the_longest_gap_is_a_clear_error(text_vocab):
    _, _, filler = text_vocab
    with pytest.raises(TrainingError, match="needs at least"):
        make_examples(filler[:50], np.array([0]), 100, np.random.default_rng(0))


def test_chance_is_one_in_the_number_of_names_and_a_fixed_guess_scores_it(text_vocab):
    _, _, filler = text_vocab
    _, names, _ = make_examples(filler, np.zeros(20_000, dtype=np.int64), 10, np.random.default_rng(5))
    assert CHANCE == 1 / len(NAMES) == 0.1
    share = np.bincount(names, minlength=len(FIXED_IDS))[[FIXED_IDS[n] for n in NAMES]] / names.size
    assert np.all(np.abs(share - CHANCE) < 0.015)  # each name equally likely: a fixed guess is right 1 in 10
    assert set(names) == {FIXED_IDS[n] for n in NAMES}


def test_wilson_interval():
    low, high = wilson(50, 100)
    assert low == pytest.approx(0.4038, abs=1e-3) and high == pytest.approx(0.5962, abs=1e-3)
    assert wilson(0, 10)[0] == 0.0 and wilson(10, 10)[1] == 1.0


# ---------------------------------------------------------------------------- a seconds-long run

def _tiny(tmp_path: Path, out: str = "out", **overrides) -> LongRangeConfig:
    cfg = LongRangeConfig(data=str(_write_corpus(tmp_path / "corpus")), out=str(tmp_path / out), max_gap=12,
                          eval_gaps=[0, 4, 12], vocab_size=200, embedding_size=8, hidden_size=8, batch_size=4,
                          steps=6, eval_examples=10, seeds=[7], threads=1)
    for key, value in overrides.items():
        setattr(cfg, key, value)
    return cfg


def test_a_tiny_run_writes_the_figure_and_the_numbers(tmp_path):
    cfg = _tiny(tmp_path, seeds=[7, 8])
    result = run(cfg, log=lambda line: None)
    out = Path(cfg.out)
    png = (out / "longrange.png").read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) < 200_000
    data = json.loads((out / "longrange.json").read_text())
    assert data["chance"] == result["chance"] == 0.1 and data["names"] == list(NAMES)
    assert data["example_length"] == LEAD + 12 + len(INTRO) + 1 + len(QUERY)
    assert sorted(data["models"]) == ["lstm", "rnn_tanh"]
    for arch, m in data["models"].items():
        assert [r["gap"] for r in m["accuracy_by_gap"]] == [0, 4, 12]
        assert [run["seed"] for run in m["runs"]] == [7, 8]
        for r in m["accuracy_by_gap"]:
            assert r["examples"] == 20 and r["ci95_low"] <= r["accuracy"] <= r["ci95_high"]
            assert r["accuracy"] * 20 == pytest.approx(round(r["accuracy"] * 20))  # a count out of 2 x 10
        for pooled, *per_seed in zip(m["accuracy_by_gap"], *(run["accuracy_by_gap"] for run in m["runs"])):
            assert pooled["accuracy"] == pytest.approx(sum(r["accuracy"] for r in per_seed) / 2, abs=1e-4)
            assert all(r["examples"] == 10 for r in per_seed)
        assert m["runs"][-1]["curve"][-1]["step"] == 6 and m["recurrent_parameters"] < m["parameters"]
    lstm, rnn = data["models"]["lstm"], data["models"]["rnn_tanh"]
    assert lstm["recurrent_parameters"] == 4 * rnn["recurrent_parameters"]  # equal hidden size, 4 gates
    with (out / "longrange.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 2 * 3 * 3 and {r["architecture"] for r in rows} == {"lstm", "rnn_tanh"}
    assert {r["seed"] for r in rows} == {"7", "8", "all"}
    assert {(r["architecture"], int(r["gap"]), float(r["accuracy"])) for r in rows if r["seed"] == "all"} == {
        (a, g, acc) for a, by_gap in result["accuracy"].items() for g, acc in by_gap.items()}


def test_the_same_seed_gives_the_same_numbers_and_another_seed_other_ones(tmp_path):
    first = json.loads(Path(run(_tiny(tmp_path, "a"), log=lambda line: None)["json"]).read_text())
    again = json.loads(Path(run(_tiny(tmp_path, "b"), log=lambda line: None)["json"]).read_text())
    other = json.loads(Path(run(_tiny(tmp_path, "c", seeds=[8]), log=lambda line: None)["json"]).read_text())
    for arch in ("lstm", "rnn_tanh"):
        assert first["models"][arch]["runs"][0]["curve"] == again["models"][arch]["runs"][0]["curve"]
        assert first["models"][arch]["accuracy_by_gap"] == again["models"][arch]["accuracy_by_gap"]
        assert first["models"][arch]["runs"][0]["curve"] != other["models"][arch]["runs"][0]["curve"]


def _main(capsys, *args) -> tuple[int, str, str]:
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


def test_the_cli_runs_the_experiment(tmp_path, capsys):
    data = _write_corpus(tmp_path / "corpus")
    code, out, err = _main(capsys, "longrange", "--data", data, "--out", tmp_path / "out", "--max-gap", 6,
                           "--eval-gaps", "0,6", "--architectures", "rnn_tanh", "--hidden-size", 4,
                           "--embedding-size", 4, "--steps", 2, "--batch-size", 2, "--eval-examples", 4)
    assert code == 0, err
    result = json.loads(out.strip().splitlines()[-1])
    assert list(result["accuracy"]) == ["rnn_tanh"] and list(result["accuracy"]["rnn_tanh"]) == ["0", "6"]
    saved = json.loads((tmp_path / "out" / "longrange.json").read_text())
    assert saved["config"]["command"].startswith("python -m training longrange --data ")
    assert "rnn_tanh seed 1111: step 2/2" in err


@pytest.mark.parametrize("args, message", [
    (["--max-gap", "5", "--eval-gaps", "0,9"], "--eval-gaps must lie in 0..--max-gap (5)"),
    (["--eval-gaps", "0,x"], "comma-separated integers"),
    (["--architectures", "transformer"], "unknown architecture"),
    (["--steps", "0"], "must be positive"),
    (["--seeds", "3,3"], "--seeds must be distinct"),
    (["--max-gap", "5000", "--eval-gaps", "0"], "needs at least"),
])
def test_bad_options_end_in_one_error_line(tmp_path, capsys, args, message):
    data = _write_corpus(tmp_path / "corpus")
    code, out, err = _main(capsys, "longrange", "--data", data, "--out", tmp_path / "out", "--steps", 1, *args)
    assert code == 2 and out == ""
    assert err.startswith("error: ") and message in err and err.count("\n") == 1


def test_a_missing_corpus_is_a_clear_error(tmp_path, capsys):
    code, _, err = _main(capsys, "longrange", "--data", tmp_path / "nowhere", "--out", tmp_path / "out")
    assert code == 2 and err.startswith("error: corpus file not found") and err.count("\n") == 1


# ---------------------------------------------------------------------------- plot-context

@pytest.fixture(scope="module")
def profiled_bundles(tiny_trained, tiny_corpus, tmp_path_factory):
    """Two tiny bundles (LSTM and tanh RNN) exported with a context profile, as `make train` exports them."""
    root = tmp_path_factory.mktemp("profiled")
    bundles = []
    for arch in ("lstm", "rnn_tanh"):
        out = root / f"tiny-{arch}"
        export(str(tiny_trained(architecture=arch) / "best.pt"), str(out), name=f"tiny-{arch}", data=str(tiny_corpus),
               verify_steps=5, context_window=6)
        bundles.append(out)
    return bundles


def test_plot_context_draws_the_recorded_profiles(profiled_bundles, tmp_path, capsys):
    out = tmp_path / "docs" / "context-profile.png"
    for bundle in profiled_bundles:
        assert json.loads((bundle / "manifest.json").read_text())["metrics"]["context_profile"]["buckets"]
    code, stdout, err = _main(capsys, "plot-context", *profiled_bundles, "--out", out)
    assert code == 0, err
    assert json.loads(stdout)["bundles"] == [str(b) for b in profiled_bundles]
    png = out.read_bytes()
    assert png.startswith(PNG_MAGIC) and len(png) < 200_000


def test_plot_context_reads_numbers_and_does_not_open_the_model(profiled_bundles, tmp_path, capsys):
    copy = Path(shutil.copytree(profiled_bundles[0], tmp_path / "manifest-only"))
    (copy / "model.onnx").unlink()
    code, _, err = _main(capsys, "plot-context", copy, "--out", tmp_path / "p.png")
    assert code == 0, err
    assert (tmp_path / "p.png").read_bytes().startswith(PNG_MAGIC)


def test_plot_context_without_a_profile_is_one_clear_line(tiny_bundle, tmp_path, capsys):
    assert "context_profile" not in json.loads((tiny_bundle / "manifest.json").read_text())["metrics"]
    code, out, err = _main(capsys, "plot-context", tiny_bundle, "--out", tmp_path / "p.png")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert err == f"error: {tiny_bundle / 'manifest.json'} has no metrics.context_profile; " \
                  "export the bundle again with --data and --context-window 200\n"
    assert not (tmp_path / "p.png").exists()


@pytest.mark.parametrize("make, message", [
    (lambda p: p / "missing", "bundle folder not found"),
    (lambda p: p.mkdir() or p, "bundle has no manifest"),
])
def test_plot_context_on_a_bad_folder_is_one_clear_line(tmp_path, capsys, make, message):
    code, _, err = _main(capsys, "plot-context", make(tmp_path / "b"), "--out", tmp_path / "p.png")
    assert code == 2 and message in err and err.count("\n") == 1


@pytest.mark.parametrize("bucket", [{"context": "x-3", "perplexity": 5.0}, {"context": "3-1", "perplexity": 5.0},
                                    {"context": "1", "perplexity": -1}, {"perplexity": 5.0}, "1"])
def test_plot_context_on_a_malformed_profile_is_one_clear_line(profiled_bundles, tmp_path, capsys, bucket):
    copy = Path(shutil.copytree(profiled_bundles[0], tmp_path / "bad"))
    manifest = json.loads((copy / "manifest.json").read_text())
    manifest["metrics"]["context_profile"]["buckets"][1] = bucket
    (copy / "manifest.json").write_text(json.dumps(manifest))
    code, out, err = _main(capsys, "plot-context", copy, "--out", tmp_path / "p.png")
    assert code == 2 and out == "" and err.count("\n") == 1
    assert "metrics.context_profile bucket" in err and not (tmp_path / "p.png").exists()
