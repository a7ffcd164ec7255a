"""Loads a model bundle folder for serving and checks it against its manifest. Knows nothing of
onnxruntime sessions, Redis or HTTP.

A bundle is refused, with a message naming the file, when the manifest is missing or malformed,
the ONNX file's sha256 differs from the manifest's, or the vocabulary size disagrees. Graph shapes
are checked by the runtime once onnxruntime has opened the file.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

SUPPORTED_FORMAT = 1


class BundleError(Exception):
    """A bundle cannot be served; the message names the offending file."""


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

    def info(self) -> dict:
        m = self.manifest
        return {"name": self.name, "architecture": m["architecture"], "layers": m["layers"],
                "hidden_size": m["hidden_size"], "embedding_size": m["embedding_size"], "vocab_size": self.vocab_size,
                "version": self.digest[:12], "sha256": self.digest, "text_convention": self.convention,
                "metrics": m.get("metrics", {})}


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load_bundle(folder: Path) -> Bundle:
    manifest_path = folder / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text(encoding="utf-8"))
        if manifest.get("format_version") != SUPPORTED_FORMAT:
            raise BundleError(f"{manifest_path}: format_version {manifest.get('format_version')!r} is not "
                              f"{SUPPORTED_FORMAT}")
        onnx_path = folder / manifest["onnx"]["file"]
        expected = manifest["onnx"]["sha256"]
        for key in ("name", "architecture", "layers", "hidden_size", "vocab_size", "state", "special_tokens", "text"):
            manifest[key]  # noqa: B018 - KeyError below names the missing field
    except OSError as e:
        raise BundleError(f"{manifest_path}: cannot read ({e.strerror})") from None
    except (ValueError, UnicodeDecodeError) as e:
        raise BundleError(f"{manifest_path}: not valid JSON ({e})") from None
    except (KeyError, TypeError) as e:
        raise BundleError(f"{manifest_path}: missing field {e}") from None
    if not onnx_path.is_file():
        raise BundleError(f"{onnx_path}: missing")
    digest = _sha256(onnx_path)
    if digest != expected:
        raise BundleError(f"{onnx_path}: sha256 {digest} does not match manifest.json's {expected}")
    vocab_path = folder / "vocab.txt"
    try:
        words = vocab_path.read_text(encoding="utf-8").split("\n")[:-1]
    except (OSError, UnicodeDecodeError) as e:
        raise BundleError(f"{vocab_path}: cannot read ({e})") from None
    if len(words) != manifest["vocab_size"]:
        raise BundleError(f"{vocab_path}: {len(words)} words, manifest.json says {manifest['vocab_size']}")
    return Bundle(name=folder.name, path=folder, manifest=manifest, words=tuple(words), digest=digest)


def discover(models_dir: Path) -> list[Bundle]:
    """Every sub-folder of models_dir holding a manifest.json, sorted by name."""
    if not models_dir.is_dir():
        raise BundleError(f"{models_dir}: models folder not found")
    bundles = [load_bundle(p) for p in sorted(models_dir.iterdir()) if (p / "manifest.json").is_file()]
    if not bundles:
        raise BundleError(f"{models_dir}: no bundle (a folder with manifest.json) found")
    return bundles
