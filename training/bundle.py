"""Training's side of the bundle contract: opens a bundle after the contract's checks and says what went wrong as a
TrainingError. Knows nothing of torch, nor of serving beyond the contract, and checks nothing itself.

The checks are the service's own (service/bundle.py: the manifest, the sha256, the vocabulary, the graph's inputs
and outputs), so a bundle that training exports or evaluates is refused exactly when, and for exactly the reason
that, the service would refuse it at start. Importing that module pulls in no Flask, Redis or onnxruntime.
"""

from __future__ import annotations

from contextlib import contextmanager
from pathlib import Path

from service import bundle as contract
from training.data import Vocab
from training.errors import TrainingError


@contextmanager
def _as_training_error():
    """The contract's BundleError becomes the TrainingError the CLI prints as one `error:` line (exit 2)."""
    try:
        yield
    except contract.BundleError as e:
        raise TrainingError(str(e)) from None


def read_manifest(folder: str | Path) -> dict:
    with _as_training_error():
        return contract.read_manifest(Path(folder))


def open_session(onnx_path: Path, providers: list[str] | None = None):
    """An onnxruntime session (on the CPU unless providers say otherwise); a graph it refuses is a TrainingError."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 3
    try:
        return ort.InferenceSession(str(onnx_path), opts, providers=providers or ["CPUExecutionProvider"])
    except Exception as e:  # onnxruntime raises its own types for a malformed graph
        raise TrainingError(str(contract.refused_by_onnxruntime(onnx_path, e))) from None


def open_bundle(folder: str | Path, providers: list[str] | None = None):
    """(manifest, vocab, onnxruntime session) of a bundle that passed every check of the contract."""
    with _as_training_error():
        bundle = contract.load_bundle(Path(folder))
        session = open_session(bundle.onnx_path, providers)
        contract.check_graph(bundle, session.get_inputs(), session.get_outputs())
    return bundle.manifest, Vocab(list(bundle.words)), session


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
                    f"{m['embedding_size']} | {'yes' if m.get('tied') else 'no'} | "
                    f"{m['onnx'].get('weights', {}).get('stored', 'float32')} | {size:.1f} | "
                    f"{training.get('epochs', '?')} | {training.get('device', '?')} | "
                    f"{metrics.get('valid_perplexity', '–')} | **{metrics.get('test_perplexity', '–')}** | "
                    f"{metrics.get('test_perplexity_line_reset', '–')} |")
    return "\n".join(rows)
