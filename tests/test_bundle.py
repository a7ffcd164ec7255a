"""service.bundle, the bundle contract: the service and training refuse the same broken bundles for the same reason,
and the shipped bundles keep passing."""

from __future__ import annotations

import hashlib
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import onnx
import pytest

from service.bundle import BundleError, load_bundle
from service.runtime import ModelRuntime
from training.__main__ import main
from training.bundle import open_bundle
from training.errors import TrainingError

ROOT = Path(__file__).resolve().parents[1]


def _edit_manifest(bundle: Path, edit) -> None:
    path = bundle / "manifest.json"
    manifest = json.loads(path.read_text())
    edit(manifest)
    path.write_text(json.dumps(manifest))


def _set(key: str, value):
    """A tampering that sets manifest key ("a.b": key b of object a) to value."""
    *parents, last = key.split(".")

    def edit(manifest: dict) -> None:
        for part in parents:
            manifest = manifest[part]
        manifest[last] = value

    return lambda bundle: _edit_manifest(bundle, edit)


def _delete(key: str):
    *parents, last = key.split(".")

    def edit(manifest: dict) -> None:
        for part in parents:
            manifest = manifest[part]
        del manifest[last]

    return lambda bundle: _edit_manifest(bundle, edit)


def _rehash(bundle: Path) -> None:
    """The manifest made to match a changed model.onnx, so the sha256 passes and a later check must refuse it."""
    digest = hashlib.sha256((bundle / "model.onnx").read_bytes()).hexdigest()
    _edit_manifest(bundle, lambda m: m["onnx"].update(sha256=digest))


def _flip_a_byte(bundle: Path) -> None:
    path = bundle / "model.onnx"
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))


def _append_a_byte(bundle: Path) -> None:
    with (bundle / "model.onnx").open("ab") as f:
        f.write(b"\0")


def _not_a_graph(bundle: Path) -> None:
    (bundle / "model.onnx").write_bytes(b"not an onnx graph")
    _rehash(bundle)


def _edit_graph(edit):
    """A tampering that changes the ONNX graph (with the onnx library) and rehashes it."""

    def tamper(bundle: Path) -> None:
        model = onnx.load(str(bundle / "model.onnx"))
        edit(model.graph)
        onnx.save(model, str(bundle / "model.onnx"))
        _rehash(bundle)

    return tamper


def _fix_the_batch_axis(graph) -> None:
    graph.input[0].type.tensor_type.shape.dim[0].dim_value = 2  # what an exporter without dynamic axes writes


def _int32_tokens(graph) -> None:
    graph.input[0].type.tensor_type.elem_type = 6  # onnx.TensorProto.INT32; the embedding's Gather accepts it


def _drop_a_vocab_word(bundle: Path) -> None:
    path = bundle / "vocab.txt"
    path.write_text("".join(path.read_text().splitlines(keepends=True)[:-1]))


def _rename_unk(bundle: Path) -> None:
    path = bundle / "vocab.txt"
    path.write_text(path.read_text().replace("<unk>\n", "<UNK>\n"))


def _unk_at(where: str):
    """special_tokens.unk moved: to the id of `<eos>`, or one past the vocabulary."""
    def edit(m: dict) -> None:
        m["special_tokens"]["unk"] = m["special_tokens"]["eos"] if where == "eos" else m["vocab_size"]

    return lambda bundle: _edit_manifest(bundle, edit)


def _rename_state(bundle: Path) -> None:
    _edit_manifest(bundle, lambda m: m["state"][0].update(input="x0"))


# (tampering, the reason both sides give, as a regular expression)
BROKEN = {
    "onnx-byte-flipped": (_flip_a_byte, r"model\.onnx: sha256 [0-9a-f]{12}… does not match manifest\.json's "
                                        r"[0-9a-f]{12}… \(the file changed after export\)$"),
    "onnx-byte-appended": (_append_a_byte, r"model\.onnx: sha256 .* does not match manifest\.json's"),
    "onnx-not-a-graph": (_not_a_graph, r"model\.onnx: onnxruntime cannot load it: .*\S"),
    "onnx-missing": (lambda b: (b / "model.onnx").unlink(), r"^bundle file missing: .*/model\.onnx$"),
    "graph-batch-axis-fixed": (_edit_graph(_fix_the_batch_axis),
                               r"model\.onnx: input 'tokens' has shape \[2, 'seq'\], manifest\.json implies "
                               r"\['batch', 'seq'\]"),
    "graph-int32-tokens": (_edit_graph(_int32_tokens),
                           r"model\.onnx: input 'tokens' is tensor\(int32\), manifest\.json implies tensor\(int64\)"),
    "graph-hidden-size-differs": (_set("hidden_size", 13),
                                  r"model\.onnx: input 'h0' has shape \[2, 'batch', 12\], manifest\.json implies "
                                  r"\[2, 'batch', 13\]"),
    "graph-state-names-differ": (_rename_state, r"model\.onnx: graph inputs \['c0', 'h0', 'tokens'\] are not "
                                                r"manifest\.json's \['c0', 'tokens', 'x0'\]"),
    "vocab-a-word-short": (_drop_a_vocab_word, r"vocab\.txt: \d+ words, manifest\.json says \d+$"),
    "vocab-missing": (lambda b: (b / "vocab.txt").unlink(), r"^bundle file missing: .*/vocab\.txt$"),
    "vocab-not-utf8": (lambda b: (b / "vocab.txt").write_bytes(b"\xff\n"), r"vocab\.txt: cannot read \(.*utf-8"),
    "vocab-unk-moved": (_unk_at("eos"), r"vocab\.txt: line \d+ is '<eos>', but manifest\.json's special_tokens\.unk "
                                        r"says '<unk>' is there"),
    "vocab-unk-renamed": (_rename_unk, r"vocab\.txt: line \d+ is '<UNK>', but manifest\.json's special_tokens\.unk "
                                       r"says '<unk>' is there$"),
    "manifest-missing": (lambda b: (b / "manifest.json").unlink(), r"^bundle has no manifest: .*/manifest\.json$"),
    "manifest-not-json": (lambda b: (b / "manifest.json").write_text("{"), r"manifest\.json: not valid JSON \("),
    "manifest-not-an-object": (lambda b: (b / "manifest.json").write_text("[1]"), r"manifest\.json: not a JSON object"),
    "format-version-2": (_set("format_version", 2), r"manifest\.json: unsupported format_version 2 \(this version "
                                                    r"reads 1\)"),
    "format-version-missing": (_delete("format_version"), r"manifest\.json: unsupported format_version None"),
    "no-onnx-sha256": (_delete("onnx.sha256"), r"manifest\.json: missing field 'onnx\.sha256'$"),
    "no-embedding-size": (_delete("embedding_size"), r"manifest\.json: missing field 'embedding_size'$"),
    "no-special-tokens": (_delete("special_tokens"), r"manifest\.json: missing field 'special_tokens\.unk'$"),
    "layers-a-string": (_set("layers", "2"), r"manifest\.json: 'layers' must be an integer, not \"2\"$"),
    "layers-a-bool": (_set("layers", True), r"manifest\.json: 'layers' must be an integer, not true$"),
    "state-not-a-list": (_set("state", {"input": "h0"}), r"manifest\.json: 'state' must be a list, not \{"),
    "vocab-size-zero": (_set("vocab_size", 0), r"manifest\.json: 'vocab_size' must be positive, not 0$"),
    "unk-outside-the-vocabulary": (_unk_at("end"), r"manifest\.json: special_tokens\.unk \d+ is outside the "
                                                   r"vocabulary \(vocab_size \d+\)$"),
    "unknown-text-convention": (_set("text.convention", "bpe"), r"manifest\.json: unknown text\.convention 'bpe'; "
                                                                r"expected one of wikitext, whitespace$"),
    "state-empty": (_set("state", []), r"manifest\.json: state must pair distinct input and output names"),
    "state-names-clash": (_set("state", [{"input": "h0", "output": "hn"}, {"input": "c0", "output": "hn"}]),
                          r"manifest\.json: state must pair distinct input and output names"),
    "state-item-not-an-object": (_set("state", ["h0"]), r"manifest\.json: state\[0\] must be \{\"input\": name, "
                                                        r"\"output\": name\}, not \"h0\"$"),
    "onnx-file-outside-the-folder": (_set("onnx.file", "../model.onnx"),
                                     r"manifest\.json: onnx\.file must name a file in the bundle folder, not "
                                     r"'\.\./model\.onnx'$"),
    "folder-missing": (shutil.rmtree, r"^bundle folder not found: .*/bundle$"),
}


def _service_refuses(folder: Path) -> str:
    """What the service says at start: load_bundle, then the graph check once onnxruntime has the file."""
    with pytest.raises(BundleError) as refused:
        ModelRuntime(load_bundle(folder), device="cpu")
    return str(refused.value)


def _training_refuses(folder: Path) -> str:
    with pytest.raises(TrainingError) as refused:
        open_bundle(folder)
    return str(refused.value)


@pytest.mark.parametrize("tamper, reason", BROKEN.values(), ids=BROKEN.keys())
def test_service_and_training_refuse_a_broken_bundle_for_the_same_reason(tiny_bundle_copy, tamper, reason):
    ModelRuntime(load_bundle(tiny_bundle_copy), device="cpu")  # the untouched copy passes both
    open_bundle(tiny_bundle_copy)
    tamper(tiny_bundle_copy)
    service, training = _service_refuses(tiny_bundle_copy), _training_refuses(tiny_bundle_copy)
    assert service == training
    assert re.search(reason, service), service
    assert "\n" not in service


def test_the_training_cli_says_the_contract_reason_in_one_line(tiny_bundle_copy, tiny_corpus, capsys):
    _set("text.convention", "bpe")(tiny_bundle_copy)
    code = main(["evaluate", "--bundle", str(tiny_bundle_copy), "--text", str(tiny_corpus / "test.txt")])
    assert code == 2
    assert capsys.readouterr().err == f"error: {_training_refuses(tiny_bundle_copy)}\n"


@pytest.mark.parametrize("name", ["wikitext2-lstm", "wikitext2-rnn"])
def test_the_shipped_bundles_keep_passing_the_contract(name):
    bundle = load_bundle(ROOT / "models" / name)
    runtime = ModelRuntime(bundle, device="cpu")  # the graph check runs on the live session
    _, vocab, session = open_bundle(ROOT / "models" / name)
    assert tuple(vocab.words) == bundle.words
    for opened in (runtime.session, session):
        assert [a.name for a in opened.get_inputs()] == list(bundle.graph_io()[0])


def test_training_reaches_the_contract_without_flask_redis_or_onnxruntime():
    code = ("import sys, training.bundle, training.data, training.config; "
            "print(sorted({m.split('.')[0] for m in sys.modules} & {'flask', 'redis', 'onnxruntime', 'torch'}))")
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "[]"
