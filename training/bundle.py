"""Reads and checks a model bundle folder (model.onnx + vocab.txt + manifest.json) without torch.

Checks what the manifest promises: the ONNX file's sha256, the vocabulary size, and the graph's
input/output names and static dimensions. Knows nothing of training or serving.
"""

from __future__ import annotations

import json
from pathlib import Path

from training.data import Vocab, file_sha256
from training.errors import TrainingError, first_line

FORMAT_VERSION = 1
REQUIRED_KEYS = ("layers", "hidden_size", "vocab_size", "state", "onnx")


def read_manifest(folder: Path) -> dict:
    path = folder / "manifest.json"
    if not path.is_file():
        raise TrainingError(f"bundle has no manifest: {path}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise TrainingError(f"{path} is not valid JSON: {e}") from None
    if not isinstance(manifest, dict):
        raise TrainingError(f"{path} is not a JSON object")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise TrainingError(f"{path}: unsupported format_version {manifest.get('format_version')!r}")
    missing = [k for k in REQUIRED_KEYS if k not in manifest]
    if missing or not isinstance(manifest["onnx"], dict) or not {"file", "sha256"} <= set(manifest["onnx"]):
        raise TrainingError(f"{path}: missing fields {missing or ['onnx.file', 'onnx.sha256']}")
    return manifest


def check_graph(session, manifest: dict, onnx_path: Path) -> None:
    """Graph I/O must be what the manifest says: names, ranks, and every static dimension."""
    layers, hidden, vocab = manifest["layers"], manifest["hidden_size"], manifest["vocab_size"]
    want_in = {"tokens": [None, None], **{s["input"]: [layers, None, hidden] for s in manifest["state"]}}
    want_out = {"log_probs": [None, vocab], **{s["output"]: [layers, None, hidden] for s in manifest["state"]}}
    for kind, got_list, want in (("input", session.get_inputs(), want_in), ("output", session.get_outputs(), want_out)):
        got = {a.name: a.shape for a in got_list}
        if set(got) != set(want):
            raise TrainingError(f"{onnx_path}: graph {kind}s {sorted(got)} do not match the manifest's {sorted(want)}")
        for name, dims in want.items():
            shape = got[name]
            ok = len(shape) == len(dims) and all(
                (isinstance(g, str) or g is None) if w is None else g == w for g, w in zip(shape, dims))
            if not ok:
                shown = ["dynamic" if w is None else w for w in dims]
                raise TrainingError(f"{onnx_path}: {kind} {name!r} has shape {shape}, manifest says {shown}")


def open_bundle(folder: str | Path, providers: list[str] | None = None):
    """(manifest, vocab, onnxruntime session) after every check; TrainingError names the bad file."""
    import onnxruntime as ort

    folder = Path(folder)
    if not folder.is_dir():
        raise TrainingError(f"bundle folder not found: {folder}")
    manifest = read_manifest(folder)
    onnx_path = folder / manifest["onnx"]["file"]
    if not onnx_path.is_file():
        raise TrainingError(f"bundle file missing: {onnx_path}")
    digest = file_sha256(onnx_path)
    if digest != manifest["onnx"]["sha256"]:
        raise TrainingError(f"{onnx_path}: sha256 {digest[:12]}… does not match the manifest's "
                            f"{manifest['onnx']['sha256'][:12]}…; the file was changed after export")
    if not (folder / "vocab.txt").is_file():
        raise TrainingError(f"bundle file missing: {folder / 'vocab.txt'}")
    vocab = Vocab.read(folder / "vocab.txt")
    if len(vocab) != manifest["vocab_size"]:
        raise TrainingError(f"{folder / 'vocab.txt'}: {len(vocab)} words, manifest says {manifest['vocab_size']}")
    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        session = ort.InferenceSession(str(onnx_path), opts, providers=providers or ["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own types for a malformed graph
        raise TrainingError(f"{onnx_path}: onnxruntime cannot load it: {first_line(e)}") from None
    check_graph(session, manifest, onnx_path)
    return manifest, vocab, session


def summary_table(folders: list[str | Path]) -> str:
    """A Markdown table of what each bundle's manifest records: sizes, weights, training, and the
    perplexities measured through onnxruntime on the file itself."""
    rows = ["| bundle | cell | layers × hidden, embedding | tied | weights | MB | epochs | device | valid ppl "
            "| **test ppl** | test ppl, state reset per line |", "|---" * 11 + "|"]
    for folder in map(Path, folders):
        m = read_manifest(folder)
        metrics, training = m.get("metrics", {}), m.get("training", {})
        size = sum(p.stat().st_size for p in folder.iterdir() if p.is_file()) / 1e6
        rows.append(f"| `{m['name']}` | {m['architecture']} | {m['layers']} × {m['hidden_size']}, "
                    f"{m.get('embedding_size', '?')} | {'yes' if m.get('tied') else 'no'} | "
                    f"{m['onnx'].get('weights', {}).get('stored', 'float32')} | {size:.1f} | "
                    f"{training.get('epochs', '?')} | {training.get('device', '?')} | "
                    f"{metrics.get('valid_perplexity', '–')} | **{metrics.get('test_perplexity', '–')}** | "
                    f"{metrics.get('test_perplexity_line_reset', '–')} |")
    return "\n".join(rows)
