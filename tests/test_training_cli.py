"""`python -m training`: the whole train -> export -> evaluate path, bad input, and Ctrl-C, as a user runs it."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from training import __main__ as cli
from training.__main__ import _configs, _parser, main
from training.config import RECIPES
from training.model import RNNModel
from training.train import load_checkpoint, model_from_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--layers", "1", "--embedding-size", "8", "--hidden-size", "8", "--batch-size", "4", "--eval-batch-size", "4",
        "--bptt", "8", "--optimizer", "adam", "--lr", "0.02", "--threads", "1", "--seed", "7"]


def _cli(*args, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "training", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


# ---------------------------------------------------------------------------- the happy path

def _main(capsys, *args) -> tuple[int, str, str]:
    """`python -m training ARGS` in this process (torch is already imported here): (code, stdout, stderr)."""
    code = main([str(a) for a in args])
    out, err = capsys.readouterr()
    return code, out, err


@pytest.mark.slow
def test_train_export_evaluate(tiny_corpus, tmp_path, capsys):
    run, bundle = tmp_path / "run", tmp_path / "models" / "tiny-gru"
    train_args = ["train", "--data", tiny_corpus, "--out", run, "--architecture", "gru", *TINY,
                  "--epochs", "2", "--max-steps", "15"]
    code, out, err = _main(capsys, *train_args)
    assert code == 0, err
    summary = json.loads(out.strip().splitlines()[-1])
    assert summary["epochs"] == 2 and summary["checkpoint"] == str(run / "best.pt")
    train_command = "python -m training " + " ".join(shlex.quote(str(a)) for a in train_args)
    assert load_checkpoint(run / "best.pt")["train_config"]["command"] == train_command

    exported = _cli("export", "--checkpoint", run / "best.pt", "--out", bundle, "--data", tiny_corpus,
                    "--verify-steps", "5", "--context-window", "6")
    assert exported.returncode == 0, exported.stderr
    assert "Warning" not in exported.stderr and "Traceback" not in exported.stderr
    result = json.loads(exported.stdout.strip().splitlines()[-1])
    manifest = json.loads((bundle / "manifest.json").read_text())
    assert result["sha256"] == manifest["onnx"]["sha256"] == result["sha256"]
    assert manifest["name"] == "tiny-gru" and manifest["architecture"] == "gru" and manifest["layers"] == 1
    assert manifest["training"]["command"] == train_command
    assert manifest["training"]["seed"] == 7 and manifest["training"]["epochs"] == 2
    assert manifest["export"]["command"].startswith("python -m training export --checkpoint ")

    evaluated = _cli("evaluate", "--bundle", bundle, "--text", tiny_corpus / "test.txt", "--batch-size", "4")
    assert evaluated.returncode == 0, evaluated.stderr
    ppl = json.loads(evaluated.stdout)["perplexity"]
    assert ppl == pytest.approx(manifest["metrics"]["test_perplexity"], rel=1e-4)
    assert ppl == pytest.approx(load_checkpoint(run / "best.pt")["test_ppl_torch"], rel=1e-3)

    profiled = _cli("evaluate", "--bundle", bundle, "--text", tiny_corpus / "test.txt", "--batch-size", "4",
                    "--context-window", "6")
    assert profiled.returncode == 0, profiled.stderr
    buckets = json.loads(profiled.stdout)["context_profile"]
    assert [b["context"] for b in buckets] == ["1", "2", "3-4", "5-6"]
    assert sum(b["tokens"] for b in buckets) == json.loads(profiled.stdout)["tokens"]
    assert [b["context"] for b in manifest["metrics"]["context_profile"]["buckets"]] == ["1", "2", "3-4", "5-6"]


# ---------------------------------------------------------------------------- bad input: one line, no traceback

def _corpus_without(tiny_corpus: Path, folder: Path, drop: str | None = None, empty: str | None = None) -> Path:
    shutil.copytree(tiny_corpus, folder)
    if drop:
        (folder / drop).unlink()
    if empty:
        (folder / empty).write_text("")
    return folder


def _tamper(bundle: Path) -> Path:
    path = bundle / "model.onnx"
    data = bytearray(path.read_bytes())
    data[100] ^= 0xFF
    path.write_bytes(bytes(data))
    return bundle


# id -> (argv builder(tiny_corpus, tiny_bundle, tmp) , what the error line must say)
BAD_INPUT = {
    "missing-corpus-folder": (lambda c, b, t: ["train", "--data", t / "nope", "--out", t / "o", *TINY],
                              "corpus folder not found"),
    "missing-test-split": (lambda c, b, t: ["train", "--data", _corpus_without(c, t / "c", drop="test.txt"),
                                            "--out", t / "o", *TINY], "corpus file not found: .*test.txt"),
    "empty-train-split": (lambda c, b, t: ["train", "--data", _corpus_without(c, t / "c", empty="train.txt"),
                                           "--out", t / "o", *TINY], "corpus file has no tokens: .*train.txt"),
    "missing-valid-split": (lambda c, b, t: ["train", "--data", _corpus_without(c, t / "c", drop="valid.txt"),
                                             "--out", t / "o", *TINY], "corpus file not found: .*valid.txt"),
    "empty-valid-split": (lambda c, b, t: ["train", "--data", _corpus_without(c, t / "c", empty="valid.txt"),
                                           "--out", t / "o", *TINY], "corpus file has no tokens: .*valid.txt"),
    "unknown-architecture": (lambda c, b, t: ["train", "--data", c, "--out", t / "o", *TINY,
                                              "--architecture", "transformer"], "invalid choice: 'transformer'"),
    "zero-cutoff": (lambda c, b, t: ["train", "--data", c, "--out", t / "o", *TINY, "--softmax", "adaptive",
                                     "--cutoffs", "0,5"], "--cutoffs"),
    "resume-from-a-text-file": (lambda c, b, t: ["train", "--data", c, "--out", t / "o", *TINY,
                                                 "--resume", c / "train.txt"], "not a nextword checkpoint"),
    "out-is-a-file": (lambda c, b, t: ["train", "--data", c, "--out", c / "train.txt" / "run", *TINY,
                                       "--max-steps", "1", "--epochs", "1"], "Not a directory"),
    "export-a-missing-checkpoint": (lambda c, b, t: ["export", "--checkpoint", t / "no.pt", "--out", t / "b"],
                                    "checkpoint not found"),
    "evaluate-a-tampered-bundle": (lambda c, b, t: ["evaluate", "--bundle", _tamper(shutil.copytree(b, t / "b")),
                                                    "--text", c / "test.txt"],
                                   "model.onnx: sha256 .* does not match manifest.json's"),
    "evaluate-a-missing-bundle": (lambda c, b, t: ["evaluate", "--bundle", t / "nope", "--text", c / "test.txt"],
                                  "bundle folder not found"),
    "evaluate-batch-size-zero": (lambda c, b, t: ["evaluate", "--bundle", b, "--text", c / "test.txt",
                                                  "--batch-size", "0"], "batch size must be positive"),
}


def _one_error_line(case: str, code: int, out: str, err: str) -> None:
    assert code != 0
    assert "Traceback" not in err
    lines = err.splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("error: ")
    assert re.search(BAD_INPUT[case][1], lines[0]), lines[0]
    assert out == ""


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_ends_in_one_error_line(case, tiny_corpus, tiny_bundle, tmp_path, capsys):
    argv = BAD_INPUT[case][0](tiny_corpus, tiny_bundle, tmp_path)
    _one_error_line(case, *_main(capsys, *argv))


# The cases again as real processes: exit status, stderr and no traceback as a user sees them.
AS_PROCESSES = ["missing-corpus-folder", "missing-test-split", "empty-train-split", "missing-valid-split",
                "empty-valid-split", "unknown-architecture", "evaluate-a-tampered-bundle"]


@pytest.mark.parametrize("case", AS_PROCESSES)
def test_bad_input_as_a_real_process_exits_with_one_error_line(case, tiny_corpus, tiny_bundle, tmp_path):
    done = _cli(*BAD_INPUT[case][0](tiny_corpus, tiny_bundle, tmp_path))
    _one_error_line(case, done.returncode, done.stdout, done.stderr)


# ---------------------------------------------------------------------------- Ctrl-C

@pytest.mark.slow
def test_ctrl_c_exits_130_keeps_a_loadable_best_checkpoint_and_resume_goes_on(tiny_corpus, tmp_path, capsys):
    """A real SIGINT to a running `train`, sent once the first epoch's checkpoints are written."""
    run = tmp_path / "run"
    args = ["train", "--data", str(tiny_corpus), "--out", str(run), *TINY, "--max-steps", "3"]
    proc = subprocess.Popen([sys.executable, "-m", "training", *args, "--epochs", "100000"],
                            cwd=ROOT, text=True, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 120
        # last.pt is written after best.pt, then history.csv and curves.png: once the plot exists the first epoch's
        # files are all there and matplotlib is imported, so the signal lands in a training step
        while not (run / "curves.png").exists():
            assert proc.poll() is None and time.monotonic() < deadline, "training ended or stalled"
            time.sleep(0.05)
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=120)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 130, err[-3000:]
    assert "Traceback" not in err and out == ""
    assert err.rstrip().splitlines()[-1] == f"interrupted; best checkpoint kept at {run / 'best.pt'}"
    best = load_checkpoint(run / "best.pt")
    assert best["epoch"] >= 1
    model, vocab = model_from_checkpoint(best)
    assert model.cfg.vocab_size == len(vocab)
    assert not list(run.glob("*.tmp"))

    done = load_checkpoint(run / "last.pt")["epoch"]
    code, out, err = _main(capsys, *args, "--epochs", done + 1, "--resume", run / "last.pt")
    assert code == 0, err
    assert f"resumed from {run / 'last.pt'} after epoch {done}" in err
    assert json.loads(out)["epochs"] == done + 1
    assert [h["epoch"] for h in load_checkpoint(run / "last.pt")["history"]] == list(range(1, done + 2))


def test_main_returns_130_on_keyboard_interrupt(tiny_corpus, tmp_path, monkeypatch):
    calls = []
    original = RNNModel.loss

    def loss(self, *args, **kwargs):
        if self.training:
            calls.append(1)
            if len(calls) == 5:  # the second training step of epoch 2
                raise KeyboardInterrupt
        return original(self, *args, **kwargs)

    monkeypatch.setattr(RNNModel, "loss", loss)
    code = cli.main(["train", "--data", str(tiny_corpus), "--out", str(tmp_path / "run"), *TINY,
                     "--epochs", "3", "--max-steps", "3", "--dropout", "0"])
    assert code == 130 and len(calls) == 5
    assert load_checkpoint(tmp_path / "run" / "best.pt")["epoch"] == 1


# ---------------------------------------------------------------------------- options and recipes

def test_train_help_shows_every_default_and_choice(capsys):
    code, out, _ = _main(capsys, "train", "--help")
    assert code == 0
    text = " ".join(out.split()).split("options:", 1)[1]  # the option list, after the usage lines
    assert "--architecture {rnn_tanh,rnn_relu,lstm,gru}" in text and "--softmax {full,adaptive}" in text
    assert "--optimizer {adam,sgd}" in text and "--schedule {cosine,plateau}" in text
    for flag in ("--weight-drop", "--dropout-embedding", "--lr", "--budget-minutes", "--batch-size", "--bptt"):
        help_text = text.split(f"{flag} ", 1)[1].split(" --", 1)[0]
        assert "(default: " in help_text, flag


def test_an_architectures_recipe_fills_only_what_the_command_line_leaves_out(tiny_corpus, tmp_path):
    argv = ["train", "--data", str(tiny_corpus), "--architecture", "rnn_tanh", "--hidden-size", "24"]
    args = _parser().parse_args(argv)
    del args.cmd, args.resume
    tc, mc = _configs(args, argv)
    assert mc.hidden_size == 24  # given
    assert tc.lr == RECIPES["rnn_tanh"]["lr"] and mc.embedding_size == RECIPES["rnn_tanh"]["embedding_size"]
    assert tc.command.endswith("--hidden-size 24")


# ---------------------------------------------------------------------------- the GPU recipe, on CPU

@pytest.mark.slow
def test_gpu_recipe_smoke_run_then_export_gives_two_bundles(tiny_corpus, tmp_path):
    """training/gpu_recipe.sh --smoke runs the recipe's exact commands on CPU (sizes shrunk for the test),
    then training/after_gpu.sh joins the parts and exports bundles measured through onnxruntime."""
    env = {**os.environ, "PYTHON": sys.executable, "RUNS": str(tmp_path / "runs"), "CONTEXT_WINDOW": "20",
           "SMOKE_ARGS": "--embedding-size 16 --hidden-size 24 --batch-size 4 --bptt 8 --eval-batch-size 4"}
    out = tmp_path / "out"
    done = subprocess.run(["bash", "training/gpu_recipe.sh", str(tiny_corpus), str(out), "--smoke"], cwd=ROOT,
                          env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    names = ("wikitext2-lstm", "wikitext2-rnn")
    for name in names:
        log = (out / f"{name}.log").read_text()
        assert "epoch 2: train ppl" in log and "--architecture" in log and '"sha256"' in log, log
        assert list((out / name).iterdir()) == [out / name / "checkpoint.pt"]  # small: one part
    files = [p for p in out.rglob("*") if p.is_file()]
    assert len(files) <= 8 and all(p.stat().st_size <= 16 * 2**20 for p in files)

    done = subprocess.run(["bash", "training/after_gpu.sh", str(out), str(tiny_corpus), str(tmp_path / "models")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "both bundles:" in done.stdout
    for name, architecture in zip(names, ("lstm", "rnn_tanh")):
        manifest = json.loads((tmp_path / "models" / name / "manifest.json").read_text())
        assert manifest["architecture"] == architecture and manifest["tied"]
        assert manifest["training"]["model_config"]["weight_drop"] > 0
        assert manifest["training"]["compact"]["dtype"] == "float16"
        assert manifest["metrics"]["test_perplexity"] > 1 and manifest["metrics"]["test_perplexity_line_reset"] > 1
        assert "--smoke" not in manifest["training"]["command"] and "--max-steps 2" in manifest["training"]["command"]


@pytest.mark.slow
def test_cpu_recipe_trains_and_exports_both_bundles(tiny_corpus, tmp_path):
    """`make train` (training/cpu_recipe.sh): both recipes on CPU, then bundles measured through onnxruntime;
    the recipes' sizes and epochs are shrunk for the test with TRAIN_ARGS."""
    env = {**os.environ, "PYTHON": sys.executable, "CONTEXT_WINDOW": "20", "THREADS": "1", "BUDGET_MINUTES": "0",
           "TRAIN_ARGS": "--epochs 1 --max-steps 2 --embedding-size 8 --hidden-size 8 --batch-size 4 --bptt 8 "
                         "--eval-batch-size 4"}
    models = tmp_path / "models"
    done = subprocess.run(["bash", "training/cpu_recipe.sh", str(tiny_corpus), str(tmp_path / "runs"), str(models)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout + done.stderr
    assert f"NEXTWORD_MODELS_DIR={models} make serve" in done.stdout
    for name, architecture in (("wikitext2-lstm", "lstm"), ("wikitext2-rnn", "rnn_tanh")):
        manifest = json.loads((models / name / "manifest.json").read_text())
        assert manifest["architecture"] == architecture and manifest["metrics"]["test_perplexity"] > 1
        assert "--device cpu" in manifest["training"]["command"]


def test_without_torch_a_command_is_one_line_naming_the_extra(tiny_corpus):
    """A Python without the `train` extra: `import torch` fails, and the command says what to install."""
    code = ("import sys; sys.modules['torch'] = None; from training.__main__ import main; "
            f"sys.exit(main(['train', '--data', {str(tiny_corpus)!r}, '--architecture', 'lstm']))")
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    (line,) = proc.stderr.strip().splitlines()
    assert "'torch'" in line and ".[train]" in line and "python -m training train" in line, line
