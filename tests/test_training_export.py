"""training.export, training.bundle, training.evaluate: verified ONNX bundles and their perplexity (the broken bundles
both sides refuse: tests/test_bundle.py)."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import pytest
import torch

from training.__main__ import main
from training.bundle import open_bundle
from training.data import EOS, UNK, Corpus, batchify, read_lines
from training.errors import TrainingError
from training.evaluate import context_profile, evaluate_file, line_reset_perplexity, perplexity
from training.export import export, verify
from training.train import compact
from training.model import ARCHITECTURES
from training.train import evaluate_torch, load_checkpoint, model_from_checkpoint

ROOT = Path(__file__).resolve().parents[1]

VARIANTS = {f"{a}-full": dict(architecture=a) for a in ARCHITECTURES}
VARIANTS.update({f"{a}-adaptive": dict(architecture=a, softmax="adaptive") for a in ARCHITECTURES})
VARIANTS["gru-tied"] = dict(architecture="gru", tied=True)
VARIANTS["lstm-1layer-tied"] = dict(architecture="lstm", tied=True, layers=1, embedding_size=16, hidden_size=16)


def _session(path: Path) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    return ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])


@pytest.fixture(params=sorted(VARIANTS), scope="module")
def variant(request, tiny_trained, tiny_exported):
    overrides = VARIANTS[request.param]
    run, bundle = tiny_trained(**overrides), tiny_exported(**overrides)
    model, vocab = model_from_checkpoint(load_checkpoint(run / "best.pt"))
    return overrides, run, bundle, model, vocab


def test_manifest_follows_the_bundle_contract(variant, tiny_corpus):
    overrides, run, bundle, model, vocab = variant
    assert sorted(p.name for p in bundle.iterdir()) == ["manifest.json", "model.onnx", "vocab.txt"]
    manifest = json.loads((bundle / "manifest.json").read_text(encoding="utf-8"))
    cfg = model.cfg
    assert manifest["format_version"] == 1 and manifest["name"] == "tiny"
    assert manifest["architecture"] == overrides["architecture"]
    assert (manifest["layers"], manifest["hidden_size"], manifest["embedding_size"]) == \
        (overrides.get("layers", 2), overrides.get("hidden_size", 12), overrides.get("embedding_size", 12))
    assert manifest["tied"] == overrides.get("tied", False)
    assert manifest["softmax"].startswith(overrides.get("softmax", "full"))
    assert manifest["vocab_size"] == len(Corpus.load(tiny_corpus).vocab) == cfg.vocab_size

    lines = (bundle / "vocab.txt").read_text(encoding="utf-8").split("\n")
    assert lines[-1] == "" and len(lines) - 1 == manifest["vocab_size"]
    assert lines[manifest["special_tokens"]["unk"]] == UNK and lines[manifest["special_tokens"]["eos"]] == EOS

    assert manifest["text"]["convention"] == "wikitext" and manifest["text"]["description"]
    pairs = [(s["input"], s["output"]) for s in manifest["state"]]
    assert pairs == ([("h0", "hn"), ("c0", "cn")] if overrides["architecture"] == "lstm" else [("h0", "hn")])
    assert all(s["shape"] == [cfg.layers, "batch", cfg.hidden_size] for s in manifest["state"])

    onnx = manifest["onnx"]
    data = (bundle / onnx["file"]).read_bytes()
    assert onnx["sha256"] == hashlib.sha256(data).hexdigest() and onnx["bytes"] == len(data)

    training = manifest["training"]
    ckpt = load_checkpoint(run / "best.pt")
    assert training["seed"] == 1234 and training["epochs"] == len(ckpt["history"]) >= 1
    assert "command" in training and isinstance(training["wall_seconds"], float)
    assert training["corpus"]["sha256"] == Corpus.load(tiny_corpus).sha256
    assert {"python", "torch", "numpy", "onnx", "onnxruntime"} <= set(training["versions"])
    assert training["versions"]["torch"] == torch.__version__
    assert manifest["export"]["versions"]["onnxruntime"] == ort.__version__
    assert manifest["parity"]["max_abs_diff"] <= 1e-4


def test_onnx_matches_pytorch_at_shapes_unlike_the_export_example(variant):
    _, _, bundle, model, vocab = variant
    session = _session(bundle / "model.onnx")
    names = model.cfg.state_names
    assert [i.name for i in session.get_inputs()] == ["tokens", *[i for i, _ in names]]
    gen = torch.Generator().manual_seed(11)
    batch = 7
    t_state = tuple(torch.randn(model.cfg.layers, batch, model.cfg.hidden_size, generator=gen) for _ in names)
    o_state = [s.numpy() for s in t_state]
    for seq in (11, 1, 4):  # a prompt, then steps that carry each side's own state
        tokens = torch.randint(len(vocab), (batch, seq), generator=gen)
        with torch.no_grad():
            t_log_probs, *t_state = model(tokens, *t_state)
        o_log_probs, *o_state = session.run(["log_probs", *[o for _, o in names]],
                                            {"tokens": tokens.numpy(), **{i: s for (i, _), s in zip(names, o_state)}})
        assert o_log_probs.shape == (batch, len(vocab)) and o_log_probs.dtype == np.float32
        np.testing.assert_allclose(o_log_probs, t_log_probs.numpy(), atol=1e-4, rtol=0)
        for o, t in zip(o_state, t_state):
            assert o.shape == (model.cfg.layers, batch, model.cfg.hidden_size)
            np.testing.assert_allclose(o, t.numpy(), atol=1e-4, rtol=0)


def test_onnx_perplexity_matches_pytorch(variant, tiny_corpus):
    _, _, bundle, model, vocab = variant
    batch = 3  # unlike the training config's eval batch size, which export used
    torch_ppl, torch_n = evaluate_torch(model, batchify(Corpus.load(tiny_corpus, vocab).test, batch), bptt=8)
    result = evaluate_file(bundle, tiny_corpus / "test.txt", batch)
    assert result["tokens"] == torch_n
    assert result["perplexity"] == pytest.approx(torch_ppl, rel=1e-3)
    assert result["perplexity"] < 0.7 * len(vocab)  # a trained model, not a uniform one
    metrics = json.loads((bundle / "manifest.json").read_text())["metrics"]
    valid_ppl, _ = evaluate_torch(model, batchify(Corpus.load(tiny_corpus, vocab).valid, 4), bptt=8)
    assert metrics["valid_perplexity"] == pytest.approx(valid_ppl, rel=1e-3)
    assert metrics["eval_batch_size"] == 4


# ---------------------------------------------------------------------------- verify() must be able to fail

def test_verify_fails_on_an_onnx_file_with_other_weights(tiny_trained, tiny_bundle):
    model, _ = model_from_checkpoint(load_checkpoint(tiny_trained() / "best.pt"))
    session = _session(tiny_bundle / "model.onnx")
    assert verify(model, session, steps=3)["max_abs_diff"] <= 1e-4
    with torch.no_grad():
        model.decoder.bias[5] += 0.01  # after export: one logit moves, so log_probs move by ~1e-3
    with pytest.raises(TrainingError, match=r"log_probs: max abs difference .* > 0.0001"):
        verify(model, session, steps=3)


def test_verify_fails_when_only_the_recurrent_state_differs(tiny_trained, tiny_bundle):
    model, _ = model_from_checkpoint(load_checkpoint(tiny_trained() / "best.pt"))
    session = _session(tiny_bundle / "model.onnx")
    with torch.no_grad():
        model.rnns[1].bias_hh_l0[0] += 0.01  # the last layer's input gate: hn and cn move
    with pytest.raises(TrainingError, match=r"export verification: .*(hn|cn|log_probs): max abs difference"):
        verify(model, session, steps=3)


def test_verify_names_a_session_of_a_different_model(tiny_trained, tiny_exported):
    model, _ = model_from_checkpoint(load_checkpoint(tiny_trained() / "best.pt"))  # 2x12 LSTM
    gru = _session(tiny_exported(**VARIANTS["gru-full"]) / "model.onnx")
    with pytest.raises(TrainingError, match="export verification: .*onnxruntime failed") as err:
        verify(model, gru, steps=3)  # the GRU graph has no c0 input
    assert "\n" not in str(err.value)
    small = _session(tiny_exported(**VARIANTS["lstm-1layer-tied"]) / "model.onnx")
    with pytest.raises(TrainingError, match="export verification: batch 1 seq 1:"):
        verify(model, small, steps=3)


def test_a_failed_export_leaves_the_previous_bundle_untouched(tiny_trained, tiny_bundle_copy, monkeypatch):
    before = {p.name: p.read_bytes() for p in tiny_bundle_copy.iterdir()}

    def broken_verify(*args, **kwargs):
        raise TrainingError("export verification: simulated mismatch")

    monkeypatch.setattr("training.export.verify", broken_verify)
    with pytest.raises(TrainingError, match="simulated mismatch"):
        export(str(tiny_trained(architecture="gru") / "best.pt"), str(tiny_bundle_copy))
    assert {p.name: p.read_bytes() for p in tiny_bundle_copy.iterdir()} == before
    assert [p.name for p in tiny_bundle_copy.parent.iterdir()] == [tiny_bundle_copy.name]  # no temp folder left


def test_export_creates_missing_parent_folders(tiny_trained, tmp_path):
    out = tmp_path / "models" / "deep" / "tiny"
    summary = export(str(tiny_trained() / "best.pt"), str(out), verify_steps=2)
    manifest, vocab, _ = open_bundle(out)
    assert summary["sha256"] == manifest["onnx"]["sha256"] and manifest["name"] == "tiny"
    assert "metrics" not in manifest  # no --data: nothing measured, nothing claimed
    assert sorted(p.name for p in out.parent.iterdir()) == ["tiny"]


# ---------------------------------------------------------------------------- evaluate never needs torch

def test_evaluate_does_not_import_torch(tiny_bundle, tiny_corpus):
    code = ("import sys, json; import training.evaluate as e; "
            f"r = e.evaluate_file({str(tiny_bundle)!r}, {str(tiny_corpus / 'valid.txt')!r}, 4); "
            "assert 'torch' not in sys.modules, 'torch was imported'; print(json.dumps(r))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    manifest = json.loads((tiny_bundle / "manifest.json").read_text())
    assert json.loads(done.stdout)["perplexity"] == pytest.approx(manifest["metrics"]["valid_perplexity"], rel=1e-4)


def test_perplexity_scores_each_parallel_stream_as_if_alone(tiny_bundle, tiny_corpus):
    """batchify(ids, 2) makes two streams; one batched pass must equal two single-stream passes."""
    manifest, vocab, session = open_bundle(tiny_bundle)
    ids = Corpus.load(tiny_corpus, vocab).valid
    ppl, n = perplexity(session, manifest, ids, 2)
    half = ids.size // 2
    ppl_a, n_a = perplexity(session, manifest, ids[:half], 1)
    ppl_b, n_b = perplexity(session, manifest, ids[half : 2 * half], 1)
    pieces = np.exp((np.log(ppl_a) * n_a + np.log(ppl_b) * n_b) / (n_a + n_b))
    assert n == n_a + n_b == 2 * (half - 1)
    assert pieces == pytest.approx(ppl, rel=1e-5)
    ppl_whole, _ = perplexity(session, manifest, ids, 1)
    assert ppl_whole != pytest.approx(ppl, rel=1e-6)  # the split matters, so the comparison above can fail


def test_context_profile_buckets_every_prediction_by_its_context_length(tiny_bundle, tiny_corpus):
    manifest, vocab, session = open_bundle(tiny_bundle)
    ids = Corpus.load(tiny_corpus, vocab).test
    batch, window = 4, 12
    buckets = context_profile(session, manifest, ids, batch, window)
    n = batchify(ids, batch).shape[1] - 1
    assert sum(b["tokens"] for b in buckets) == batch * n
    assert [b["context"] for b in buckets] == ["1", "2", "3-4", "5-9", "10-12"]
    assert buckets[0]["tokens"] == batch * len(range(0, n, window))  # one first-token prediction per window
    # A window longer than the stream never resets: the buckets' pooled NLL is the plain perplexity.
    long = context_profile(session, manifest, ids, batch, window=10 * n)
    pooled = np.exp(sum(np.log(b["perplexity"]) * b["tokens"] for b in long) / sum(b["tokens"] for b in long))
    assert pooled == pytest.approx(perplexity(session, manifest, ids, batch)[0], rel=1e-3)


def test_line_reset_perplexity_scores_each_line_alone_after_an_eos(tiny_trained, tiny_bundle, tiny_corpus):
    manifest, vocab, session = open_bundle(tiny_bundle)
    lines = [vocab.encode([line]) for line in read_lines(tiny_corpus / "test.txt")]
    ppl, n = line_reset_perplexity(session, manifest, lines, vocab.eos, batch_size=7)
    model, _ = model_from_checkpoint(load_checkpoint(tiny_trained() / "best.pt"))
    total = 0.0
    with torch.no_grad():
        for line in lines:  # PyTorch, one line at a time from the zero state, read after a lone <eos>
            tokens = torch.tensor([[vocab.eos, *line[:-1]]])
            total += float(model.loss(tokens, torch.tensor([list(line)]), model.init_hidden(1))[0]) * len(line)
    assert n == sum(len(line) for line in lines)
    assert ppl == pytest.approx(np.exp(total / n), rel=1e-4)
    assert ppl != pytest.approx(perplexity(session, manifest, np.concatenate(lines), 1)[0], rel=1e-3)
    metrics = json.loads((tiny_bundle / "manifest.json").read_text())["metrics"]
    assert metrics["test_perplexity_line_reset"] == pytest.approx(ppl, rel=1e-4)
    assert evaluate_file(tiny_bundle, tiny_corpus / "test.txt", 4)["perplexity_line_reset"] == pytest.approx(ppl, rel=1e-4)


def test_a_float16_bundle_stores_half_the_bytes_and_runs_in_float32(tiny_trained, tiny_bundle, tiny_corpus, tmp_path):
    run = tiny_trained(embedding_size=32, hidden_size=32)  # tensors large enough to be stored as float16
    compact(run / "best.pt", tmp_path / "compact", dtype="float16")
    summary = export(str(tmp_path / "compact"), str(tmp_path / "half"), name="tiny", data=str(tiny_corpus),
                     verify_steps=5)  # weights "auto": float16, as the compact checkpoint holds
    export(str(run / "best.pt"), str(tmp_path / "full"), name="tiny", data=str(tiny_corpus), verify_steps=5)
    half, full = (json.loads((tmp_path / b / "manifest.json").read_text()) for b in ("half", "full"))
    assert half["onnx"]["weights"]["stored"] == "float16" and full["onnx"]["weights"]["stored"] == "float32"
    assert half["onnx"]["bytes"] < 0.6 * full["onnx"]["bytes"]
    graph = onnx.load(str(tmp_path / "half" / "model.onnx")).graph
    assert any(i.data_type == onnx.TensorProto.FLOAT16 for i in graph.initializer)
    _, _, session = open_bundle(tmp_path / "half")  # the same checks the training side runs on any bundle
    assert session.get_outputs()[0].type == "tensor(float)"
    assert summary["test_perplexity"] == pytest.approx(full["metrics"]["test_perplexity"], rel=1e-2)


def test_summary_table_shows_what_the_manifest_measured(tiny_bundle, capsys):
    assert main(["summary", str(tiny_bundle)]) == 0
    header, rule, row = capsys.readouterr().out.strip().splitlines()
    metrics = json.loads((tiny_bundle / "manifest.json").read_text())["metrics"]
    assert header.count("|") == rule.count("|") == row.count("|")
    assert row.startswith("| `tiny` | lstm | 2 × 12, 12 |")
    assert f"**{metrics['test_perplexity']}**" in row and f"| {metrics['test_perplexity_line_reset']} |" in row
