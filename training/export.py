"""Turns a training checkpoint into a verified model bundle (model.onnx + vocab.txt + manifest.json).

The bundle is written to a temporary folder and moved into place only after it has proved
itself: onnxruntime agrees with PyTorch on shapes unlike the export example and over a
multi-step rollout where each side feeds back its own state, and the batch and sequence axes
are really dynamic. The manifest then records the perplexity measured through onnxruntime on the
file that ships, and the finished folder passes the checks the service runs at start (the bundle
contract, service/bundle.py, through training.bundle.open_bundle). The graph's input and output
names and dynamic axes come from that contract too. Knows nothing of serving beyond the contract.
"""

from __future__ import annotations

import json
import shutil
import sys
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch

from service import bundle as contract
from training.bundle import open_bundle, open_session
from training.data import Corpus, read_lines
from training.errors import TrainingError, first_line
from training.evaluate import context_profile, line_reset_perplexity, perplexity
from training.train import library_versions, load_checkpoint, model_from_checkpoint

OPSET = 17
PARITY_ATOL = 1e-4


def _graph_io(cfg) -> tuple[dict, dict]:
    return contract.graph_io(cfg.layers, cfg.hidden_size, cfg.vocab_size, cfg.state_names)


def _described(io: tuple[str, list]) -> dict:
    dtype, dims = io
    return {"dtype": dtype, "shape": dims}


def _export_onnx(model, path: Path) -> None:
    inputs, outputs = _graph_io(model.cfg)
    tokens = torch.zeros((2, 3), dtype=torch.long)  # (batch, seq) example; both axes exported dynamic
    state = model.init_hidden(2)  # (layers, batch, hidden) each
    dynamic = {name: {axis: dim for axis, dim in enumerate(dims) if isinstance(dim, str)}  # the contract's named axes
               for name, (_, dims) in {**inputs, **outputs}.items()}
    with warnings.catch_warnings():
        # The tracer warns about shape checks inside nn.RNN and about "batch_size other than 1" for RNNs
        # without state inputs; ours has state inputs, and verify() proves every axis dynamic.
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", message="Exporting a model to ONNX with a batch_size other than 1")
        warnings.filterwarnings("ignore", category=DeprecationWarning)  # dynamo=False is deliberate: RNNs export cleanly
        torch.onnx.export(model, (tokens, *state), str(path), dynamo=False, opset_version=OPSET,
                          input_names=list(inputs), output_names=list(outputs),
                          dynamic_axes=dynamic, do_constant_folding=True)


FLOAT16_MIN_ELEMENTS = 256  # smaller tensors (biases of tiny models) stay float32: nothing to gain


def _store_float16(path: Path) -> int:
    """Rewrites the ONNX file with its large float32 initializers stored as float16, each followed by a
    Cast back to float32. onnxruntime folds those casts when it loads the file, so inference runs in
    float32 exactly as before, from weights rounded to float16. Returns the number of tensors converted."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    model = onnx.load(str(path))
    graph = model.graph
    casts = []
    for init in graph.initializer:
        if init.data_type != TensorProto.FLOAT or int(np.prod(init.dims)) < FLOAT16_MIN_ELEMENTS:
            continue
        name = init.name
        init.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(init).astype(np.float16), f"{name}_float16"))
        casts.append(helper.make_node("Cast", [f"{name}_float16"], [name], to=TensorProto.FLOAT, name=f"{name}_cast"))
    nodes = casts + list(graph.node)
    del graph.node[:]
    graph.node.extend(nodes)
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return len(casts)


def verify(model, session, steps: int = 20, seed: int = 0) -> dict:
    """Compares onnxruntime with PyTorch; raises TrainingError naming what differed."""
    names = model.cfg.state_names
    gen = torch.Generator().manual_seed(seed)
    vocab = model.cfg.vocab_size
    worst = 0.0

    def compare(what: str, a: torch.Tensor, b: np.ndarray) -> None:
        nonlocal worst
        if tuple(a.shape) != b.shape:
            fixed = len(a.shape) == b.ndim and any(o != t and o in (2, 3) for o, t in zip(b.shape, a.shape))
            hint = " (an axis was fixed to the export example's size)" if fixed else ""
            raise TrainingError(f"export verification: {what}: onnxruntime shape {b.shape}, PyTorch {tuple(a.shape)}{hint}")
        diff = float(np.abs(a.numpy() - b).max())
        worst = max(worst, diff)
        if not diff <= PARITY_ATOL:
            raise TrainingError(f"export verification: {what}: max abs difference {diff:.3g} > {PARITY_ATOL}")

    def run_both(tokens, torch_state, ort_state, what):
        with torch.no_grad():
            t_out = model(tokens, *torch_state)
        try:
            o_out = session.run([contract.LOG_PROBS, *[o for _, o in names]],
                                {contract.TOKENS: tokens.numpy(), **{i: s for (i, _), s in zip(names, ort_state)}})
        except Exception as e:  # onnxruntime's own error types: wrong input names, shapes or token ids
            raise TrainingError(f"export verification: {what}: onnxruntime failed: {first_line(e)}") from None
        for label, a, b in zip([contract.LOG_PROBS, *[o for _, o in names]], t_out, o_out):
            compare(f"{what} {label}", a, b)
        return t_out[1:], o_out[1:], t_out[0]

    # Shapes unlike the (2, 3) export example, from fresh random states.
    for batch, seq in ((1, 1), (5, 7), (3, 13), (8, 1)):
        tokens = torch.randint(vocab, (batch, seq), generator=gen)
        state = tuple(torch.randn((model.cfg.layers, batch, model.cfg.hidden_size), generator=gen) * 0.5 for _ in names)
        run_both(tokens, state, [s.numpy() for s in state], f"batch {batch} seq {seq}:")
    # A rollout: each side feeds back its own state; lengths vary to mix prompt and single steps.
    batch = 4
    t_state = model.init_hidden(batch)
    o_state = [s.numpy() for s in t_state]
    for step in range(steps):
        seq = 1 + (step * 5) % 9
        tokens = torch.randint(vocab, (batch, seq), generator=gen)
        t_state, o_state, log_probs = run_both(tokens, t_state, o_state, f"rollout step {step + 1} (seq {seq}):")
        total = float(log_probs.exp().sum(-1).sub(1).abs().max())
        if total > 1e-3:
            raise TrainingError(f"export verification: probabilities sum to 1 ± {total:.3g}")
    return {"max_abs_diff": worst, "rollout_steps": steps, "atol": PARITY_ATOL}


def export(checkpoint: str, out: str, name: str | None = None, data: str | None = None,
           command: str = "", verify_steps: int = 20, context_window: int = 0, weights: str = "auto") -> dict:
    import onnxruntime as ort

    started = time.monotonic()
    ckpt = load_checkpoint(checkpoint)
    model, vocab = model_from_checkpoint(ckpt)
    if weights == "auto":
        weights = ckpt.get("compact", {}).get("dtype", "float32")
    if weights == "float16":  # PyTorch then computes with exactly the weights the file stores
        with torch.no_grad():
            for p in model.parameters():
                p.copy_(p.half().float())
    out_dir = Path(out)
    out_dir.parent.mkdir(parents=True, exist_ok=True)  # temp folder beside it: the final move is a rename
    name = name or out_dir.name
    tc = ckpt["train_config"]
    with tempfile.TemporaryDirectory(prefix=".export-", dir=out_dir.parent) as tmp:
        tmp_dir = Path(tmp)
        onnx_path = tmp_dir / contract.ONNX_FILE
        _export_onnx(model, onnx_path)
        converted = _store_float16(onnx_path) if weights == "float16" else 0
        session = open_session(onnx_path)
        parity = verify(model, session, steps=verify_steps)
        vocab.write(tmp_dir / contract.VOCAB_FILE)
        cfg = model.cfg
        inputs, outputs = _graph_io(cfg)
        manifest = {
            "format_version": contract.FORMAT_VERSION,
            "name": name,
            "architecture": cfg.architecture,
            "layers": cfg.layers,
            "hidden_size": cfg.hidden_size,
            "embedding_size": cfg.embedding_size,
            "vocab_size": len(vocab),
            "tied": cfg.tied,
            "softmax": cfg.softmax if cfg.softmax == "full" else f"adaptive (cutoffs {cfg.cutoffs}, exact full distribution)",
            "special_tokens": {"unk": vocab.unk, "eos": vocab.eos},
            "text": {"convention": tc["text_convention"],  # an unknown one: the contract check below refuses it
                     "description": contract.TEXT_CONVENTIONS.get(tc["text_convention"], "")},
            "inputs": {contract.TOKENS: _described(inputs[contract.TOKENS])},
            "outputs": {contract.LOG_PROBS: _described(outputs[contract.LOG_PROBS])},
            "state": [{"input": i, "output": o, **_described(inputs[i])} for i, o in cfg.state_names],
            "onnx": {"file": contract.ONNX_FILE, "sha256": contract.file_sha256(onnx_path), "opset": OPSET,
                     "bytes": onnx_path.stat().st_size,
                     "weights": {"stored": weights, "computed": "float32", "tensors_stored_float16": converted}},
            "parity": parity,
            "training": {
                "corpus": ckpt["corpus"],
                "command": tc.get("command", ""),
                "commands": ckpt["commands"],
                "seed": tc["seed"],
                "epochs": len(ckpt["history"]),
                "history": ckpt["history"],
                "stopped": ckpt["stopped"],
                "wall_seconds": round(ckpt["wall_seconds_total"], 1),
                "device": ckpt["device"],
                "versions": ckpt["versions"],
                "config": {k: v for k, v in tc.items() if k not in ("command", "data", "out")},
                "model_config": cfg.to_dict(),
                "compact": ckpt.get("compact"),
                "test_ppl_torch": ckpt.get("test_ppl_torch"),
            },
            "export": {"command": command, "versions": library_versions(), "created": int(time.time())},
        }
        if data:
            corpus = Corpus.load(data, vocab)
            batch = tc.get("eval_batch_size", 10)
            valid_ppl, valid_n = perplexity(session, manifest, corpus.valid, batch)
            test_ppl, test_n = perplexity(session, manifest, corpus.test, batch)
            test_lines = [vocab.encode([line]) for line in read_lines(Path(data) / "test.txt")]
            reset_ppl, reset_n = line_reset_perplexity(session, manifest, test_lines, vocab.eos)
            manifest["metrics"] = {"valid_perplexity": round(valid_ppl, 3), "test_perplexity": round(test_ppl, 3),
                                   "valid_tokens": valid_n, "test_tokens": test_n, "eval_batch_size": batch,
                                   "test_perplexity_line_reset": round(reset_ppl, 3), "test_tokens_line_reset": reset_n,
                                   "line_reset": "state zeroed at every line; each line read after a lone <eos>",
                                   "measured_with": f"onnxruntime {ort.__version__} on the exported model.onnx"}
            if context_window:
                manifest["metrics"]["context_profile"] = {
                    "split": "test", "window": context_window,
                    "buckets": context_profile(session, manifest, corpus.test, 50, context_window)}
        (tmp_dir / contract.MANIFEST_FILE).write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
        open_bundle(tmp_dir)  # the checks the service runs at start: manifest, sha256, vocabulary, graph I/O
        if out_dir.exists():
            shutil.rmtree(out_dir)
        shutil.move(str(tmp_dir), str(out_dir))
        out_dir.chmod(0o755)  # TemporaryDirectory made it private; a bundle is read by whoever serves it
        tmp_dir.mkdir()  # TemporaryDirectory cleanup expects it
    print(f"exported {out_dir} in {time.monotonic() - started:.1f} s (parity max abs diff "
          f"{parity['max_abs_diff']:.2e})", file=sys.stderr)
    summary = {"bundle": str(out_dir), "sha256": manifest["onnx"]["sha256"], "bytes": manifest["onnx"]["bytes"],
               "max_abs_diff": parity["max_abs_diff"]}
    summary.update(manifest.get("metrics", {}))
    return summary
