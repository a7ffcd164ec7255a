"""The model bundle contract, and the loader the service starts with. Knows nothing of onnxruntime, torch, HTTP or
Redis: it imports the standard library alone.

A bundle is a folder: `model.onnx` (the graph), `vocab.txt` (one word per line, id = line number) and
`manifest.json` (what the graph and the words are, and how they were made). This module is the one place that
says what a bundle must hold, and the one place that checks a folder against it:

- read_manifest: the manifest is a JSON object of format FORMAT_VERSION with every key of MANIFEST_KEYS in its
  type, positive sizes, special token ids inside the vocabulary, a text convention of TEXT_CONVENTIONS, and
  state pairs with distinct names;
- load_bundle: the ONNX file's sha256 is the manifest's, and vocab.txt holds vocab_size words with `<unk>` and
  `<eos>` where special_tokens says;
- check_graph: the graph's inputs and outputs have the names, element types and static dimensions of graph_io,
  with the batch and sequence axes dynamic. The graph must be open for this one, and opening it is onnxruntime's
  job: the caller opens it and hands over its inputs and outputs (onnxruntime's NodeArgs: .name, .type, .shape).

Both sides use it. The service runs load_bundle at start and check_graph in service/runtime.py; training runs
the same two, through training/bundle.py (which turns a BundleError into its TrainingError), on every bundle it
exports or evaluates. It lives in service/ rather than in a package of its own because the service is what has
to accept a bundle, and the service image ships service/ alone; training may import it because it needs nothing
beyond the standard library (`python -X importtime -c "import training.bundle"` shows no Flask, Redis or
onnxruntime). Every error names the offending file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

FORMAT_VERSION = 1
MANIFEST_FILE = "manifest.json"
VOCAB_FILE = "vocab.txt"
ONNX_FILE = "model.onnx"  # the name exporters write; a loader opens whatever the manifest's onnx.file names
TOKENS = "tokens"  # graph input: token ids, (batch, seq) int64
LOG_PROBS = "log_probs"  # graph output: next-word log-probabilities after each row's last token, (batch, vocab)
UNK, EOS = "<unk>", "<eos>"  # every vocabulary holds both; special_tokens gives their ids

# How raw user text must be split to match the corpus (service/tokenizer.py implements each). The manifest records
# the name and, for people, the description.
TEXT_CONVENTIONS = {
    "wikitext": "Moses-style: punctuation split off, clitics split before the apostrophe (do n't -> do n 't "
                "as in the corpus), hyphens and separators inside numbers as @-@ @,@ @.@; case kept",
    "whitespace": "split on whitespace only",
}

# The keys a manifest must hold, with their JSON types ("a.b" is key b of object a). The other keys (parity,
# metrics, training, export) record how the bundle was made and measured, for people; nothing reads them to run.
MANIFEST_KEYS: dict[str, type] = {
    "format_version": int, "name": str, "architecture": str, "layers": int, "hidden_size": int,
    "embedding_size": int, "vocab_size": int, "special_tokens.unk": int, "special_tokens.eos": int,
    "text.convention": str, "state": list, "onnx.file": str, "onnx.sha256": str,
}
_SIZES = ("layers", "hidden_size", "embedding_size", "vocab_size")
_JSON_TYPES = {int: "an integer", str: "a string", list: "a list", dict: "an object"}
_ORT_TYPES = {"int64": "tensor(int64)", "float32": "tensor(float)"}  # how onnxruntime's NodeArg.type spells them


class BundleError(Exception):
    """A bundle breaks the contract; the message names the offending file."""


@dataclass(frozen=True)
class Bundle:
    name: str
    path: Path
    manifest: dict = field(repr=False)
    words: tuple[str, ...] = field(repr=False)
    digest: str  # sha256 of model.onnx: sessions remember it, so a new bundle never reads an old state

    def __post_init__(self) -> None:
        object.__setattr__(self, "index", {w: i for i, w in enumerate(self.words)})

    @property
    def onnx_path(self) -> Path:
        return self.path / self.manifest["onnx"]["file"]

    @property
    def vocab_size(self) -> int:
        return len(self.words)

    @property
    def unk(self) -> int:
        return int(self.manifest["special_tokens"]["unk"])

    @property
    def eos(self) -> int:
        return int(self.manifest["special_tokens"]["eos"])

    @property
    def convention(self) -> str:
        return self.manifest["text"]["convention"]

    @property
    def state_pairs(self) -> list[tuple[str, str]]:
        """(input, output) names of the recurrent state tensors, in manifest order."""
        return [(s["input"], s["output"]) for s in self.manifest["state"]]

    @property
    def state_shape(self) -> tuple[int, int, int]:
        """(tensors, layers, hidden) of one session's state."""
        return (len(self.manifest["state"]), int(self.manifest["layers"]), int(self.manifest["hidden_size"]))

    @property
    def created(self) -> tuple[int, str]:
        """(Unix seconds, where from) of the bundle's making: the manifest's `export.created` (written by exports
        since it was added), else the ONNX file's modification time, which a copy or a checkout may have reset."""
        export = self.manifest.get("export")
        stamp = export.get("created") if isinstance(export, dict) else None
        if isinstance(stamp, int) and not isinstance(stamp, bool) and stamp > 0:
            return stamp, "manifest"
        return int(self.onnx_path.stat().st_mtime), "file_mtime"

    def graph_io(self) -> tuple[dict, dict]:
        m = self.manifest
        return graph_io(m["layers"], m["hidden_size"], m["vocab_size"], self.state_pairs)

    def info(self) -> dict:
        m = self.manifest
        return {"name": self.name, "architecture": m["architecture"], "layers": m["layers"],
                "hidden_size": m["hidden_size"], "embedding_size": m["embedding_size"], "vocab_size": self.vocab_size,
                "version": self.digest[:12], "sha256": self.digest, "text_convention": self.convention,
                "metrics": m.get("metrics", {})}


def graph_io(layers: int, hidden: int, vocab: int, state_pairs: list[tuple[str, str]]) -> tuple[dict, dict]:
    """(inputs, outputs) of a bundle's graph, in order, each {name: (dtype, dims)}; a str dim is a dynamic axis,
    named as exporters name it."""
    state = ("float32", [layers, "batch", hidden])  # (layers, batch, hidden)
    inputs = {TOKENS: ("int64", ["batch", "seq"]), **{i: state for i, _ in state_pairs}}
    outputs = {LOG_PROBS: ("float32", ["batch", vocab]), **{o: state for _, o in state_pairs}}
    return inputs, outputs


def file_sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


_MISSING = object()


def _field(manifest: dict, key: str):
    value = manifest
    for part in key.split("."):
        if not isinstance(value, dict) or part not in value:
            return _MISSING
        value = value[part]
    return value


def read_manifest(folder: Path) -> dict:
    """The folder's manifest, checked on its own (load_bundle checks the files against it)."""
    if not folder.is_dir():
        raise BundleError(f"bundle folder not found: {folder}")
    path = folder / MANIFEST_FILE
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise BundleError(f"bundle has no manifest: {path}") from None
    except OSError as e:
        raise BundleError(f"{path}: cannot read ({e.strerror})") from None
    except ValueError as e:  # JSONDecodeError and UnicodeDecodeError both
        raise BundleError(f"{path}: not valid JSON ({e})") from None
    if not isinstance(manifest, dict):
        raise BundleError(f"{path}: not a JSON object")
    if manifest.get("format_version") != FORMAT_VERSION:
        raise BundleError(f"{path}: unsupported format_version {manifest.get('format_version')!r} "
                          f"(this version reads {FORMAT_VERSION})")
    for key, kind in MANIFEST_KEYS.items():
        value = _field(manifest, key)
        if value is _MISSING:
            raise BundleError(f"{path}: missing field {key!r}")
        if not isinstance(value, kind) or isinstance(value, bool):
            raise BundleError(f"{path}: {key!r} must be {_JSON_TYPES[kind]}, not {json.dumps(value)}")
    for key in _SIZES:
        if manifest[key] < 1:
            raise BundleError(f"{path}: {key!r} must be positive, not {manifest[key]}")
    for key in ("unk", "eos"):
        token_id = manifest["special_tokens"][key]
        if not 0 <= token_id < manifest["vocab_size"]:
            raise BundleError(f"{path}: special_tokens.{key} {token_id} is outside the vocabulary "
                              f"(vocab_size {manifest['vocab_size']})")
    if manifest["text"]["convention"] not in TEXT_CONVENTIONS:
        raise BundleError(f"{path}: unknown text.convention {manifest['text']['convention']!r}; "
                          f"expected one of {', '.join(TEXT_CONVENTIONS)}")
    names = [TOKENS, LOG_PROBS]
    for n, s in enumerate(manifest["state"]):
        if not (isinstance(s, dict) and isinstance(s.get("input"), str) and isinstance(s.get("output"), str)):
            raise BundleError(f"{path}: state[{n}] must be {{\"input\": name, \"output\": name}}, not {json.dumps(s)}")
        names += [s["input"], s["output"]]
    if not manifest["state"] or len(set(names)) != len(names):
        raise BundleError(f"{path}: state must pair distinct input and output names (besides {TOKENS!r} and "
                          f"{LOG_PROBS!r}), not {json.dumps(manifest['state'])}")
    onnx_file = manifest["onnx"]["file"]
    if Path(onnx_file).name != onnx_file or onnx_file in ("", ".."):
        raise BundleError(f"{path}: onnx.file must name a file in the bundle folder, not {onnx_file!r}")
    return manifest


def load_bundle(folder: Path) -> Bundle:
    """The bundle in folder after every check that needs no open graph (check_graph does the rest)."""
    manifest = read_manifest(folder)
    onnx_path = folder / manifest["onnx"]["file"]
    if not onnx_path.is_file():
        raise BundleError(f"bundle file missing: {onnx_path}")
    digest, expected = file_sha256(onnx_path), manifest["onnx"]["sha256"]
    if digest != expected:
        raise BundleError(f"{onnx_path}: sha256 {digest[:12]}… does not match {MANIFEST_FILE}'s {expected[:12]}… "
                          f"(the file changed after export)")
    vocab_path = folder / VOCAB_FILE
    try:
        words = vocab_path.read_text(encoding="utf-8").split("\n")[:-1]
    except FileNotFoundError:
        raise BundleError(f"bundle file missing: {vocab_path}") from None
    except (OSError, ValueError) as e:
        raise BundleError(f"{vocab_path}: cannot read ({e})") from None
    if len(words) != manifest["vocab_size"]:
        raise BundleError(f"{vocab_path}: {len(words)} words, {MANIFEST_FILE} says {manifest['vocab_size']}")
    for key, word in (("unk", UNK), ("eos", EOS)):
        at = manifest["special_tokens"][key]
        if words[at] != word:
            raise BundleError(f"{vocab_path}: line {at + 1} is {words[at]!r}, but {MANIFEST_FILE}'s "
                              f"special_tokens.{key} says {word!r} is there")
    return Bundle(name=folder.name, path=folder, manifest=manifest, words=tuple(words), digest=digest)


def refused_by_onnxruntime(onnx_path: Path, error: Exception) -> BundleError:
    """The error for a graph that onnxruntime would not open, with the first line of what it said."""
    said = str(error).strip().splitlines()
    return BundleError(f"{onnx_path}: onnxruntime cannot load it: {said[0] if said else type(error).__name__}")


def check_graph(bundle: Bundle, inputs, outputs) -> None:
    """Refuses a graph whose inputs or outputs (onnxruntime's NodeArgs) differ from bundle.graph_io()."""
    for kind, args, want in zip(("input", "output"), (inputs, outputs), bundle.graph_io()):
        got = {a.name: a for a in args}
        if set(got) != set(want):
            raise BundleError(f"{bundle.onnx_path}: graph {kind}s {sorted(got)} are not {MANIFEST_FILE}'s "
                              f"{sorted(want)}")
        for name, (dtype, dims) in want.items():
            arg, shape = got[name], list(got[name].shape)
            if arg.type != _ORT_TYPES[dtype]:
                raise BundleError(f"{bundle.onnx_path}: {kind} {name!r} is {arg.type}, {MANIFEST_FILE} implies "
                                  f"{_ORT_TYPES[dtype]}")
            # onnxruntime shows a dynamic axis as its name (a str) or None, a static one as an int
            if len(shape) != len(dims) or any(g != w if isinstance(w, int) else isinstance(g, int)
                                              for g, w in zip(shape, dims)):
                raise BundleError(f"{bundle.onnx_path}: {kind} {name!r} has shape {shape}, {MANIFEST_FILE} implies "
                                  f"{dims}")


def discover(models_dir: Path) -> list[Bundle]:
    """Every sub-folder of models_dir holding a manifest.json, sorted by name."""
    if not models_dir.is_dir():
        raise BundleError(f"{models_dir}: models folder not found")
    bundles = [load_bundle(p) for p in sorted(models_dir.iterdir()) if (p / MANIFEST_FILE).is_file()]
    if not bundles:
        raise BundleError(f"{models_dir}: no bundle (a folder with manifest.json) found")
    return bundles
