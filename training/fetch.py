"""`python -m training data --out DIR`: puts WikiText-2 (v1, tokenized) in DIR, each file checked against its sha256.
Knows the corpus's public home and checksums; nothing of torch, models or training.

The files come from the pytorch/examples repository on GitHub (`word_language_model/data/wikitext-2/`, pinned to one
commit), byte-identical to the release's `wiki.{train,valid,test}.tokens` (Merity et al. 2016, CC BY-SA). A file
already in DIR with the right checksum is kept; one with another checksum is an error, never overwritten. A download
goes to `NAME.part` and is renamed only once its checksum matches. `--base-url` fetches from elsewhere (a mirror,
a file:// folder); offline, the error says which files to copy where. Standard library only.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import shutil
import urllib.error
import urllib.request
from pathlib import Path

from training.errors import TrainingError

# pytorch/examples at 77f55b9 (2025-08-25); the files last changed in d5678bc ("Replace WikiText-2 files with correct
# dataset", 2017-12-05)
BASE_URL = ("https://raw.githubusercontent.com/pytorch/examples/77f55b912142e11fcfdf5b530231fb9c52f181e8/"
            "word_language_model/data/wikitext-2")
SHA256 = {
    "train.txt": "9e9fa1ad55b1c2c95b08e37dd8e653f638fac2c6de904b79e813611eefbc985f",  # 10 797 148 bytes
    "valid.txt": "f0737ed31fc1329026e95cb8b98e19c2a182c39c240ab909dc31abf2f8af58e8",  # 1 121 681 bytes
    "test.txt": "d790b833ef8cf03a90db7bf1271b7520b83c45ce07ba3c1a9699df81e239eca0",  # 1 256 449 bytes
}
TIMEOUT_S = 60  # per connection attempt and read; the largest file is 10.8 MB


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def _offline_hint(out: Path) -> str:
    return (f"offline: copy WikiText-2's train.txt, valid.txt and test.txt (v1, tokenized) into {out}, or point "
            f"DATA=... (make) / --data (python -m training) at a folder holding them (docs/training.md, \"Data\")")


def fetch(out: str | Path, base_url: str = BASE_URL, checksums: dict[str, str] = SHA256) -> dict:
    """Ensures the files of `checksums` are in `out` with those sha256s; returns what was done per file."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    done = {}
    for name, expected in checksums.items():
        path = out / name
        if path.exists():
            got = _sha256(path)
            if got != expected:
                raise TrainingError(f"{path} is there but is not WikiText-2's {name} (sha256 {got[:12]}…, expected "
                                    f"{expected[:12]}…); remove it, or point DATA elsewhere")
            done[name] = "present, checksum ok"
            continue
        url = f"{base_url.rstrip('/')}/{name}"
        part = path.with_name(name + ".part")
        try:
            with urllib.request.urlopen(url, timeout=TIMEOUT_S) as answer, part.open("wb") as f:
                shutil.copyfileobj(answer, f)
        except (urllib.error.URLError, OSError) as e:
            part.unlink(missing_ok=True)
            reason = getattr(e, "reason", None) or e
            raise TrainingError(f"cannot download {url} ({reason}); {_offline_hint(out)}") from None
        got = _sha256(part)
        if got != expected:
            part.unlink()
            raise TrainingError(f"{url} did not give WikiText-2's {name} (sha256 {got[:12]}…, expected "
                                f"{expected[:12]}…); nothing was kept. Try again, or {_offline_hint(out)}")
        os.replace(part, path)
        done[name] = f"downloaded from {url}, checksum ok"
    return {"data": str(out), "files": done}


def add_parser(sub) -> None:
    p = sub.add_parser("data", help="download WikiText-2 into a folder, checked against its sha256 (no torch)",
                       description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", required=True, help="folder for train.txt, valid.txt and test.txt")
    p.add_argument("--base-url", default=BASE_URL, help="where the three files are (default: %(default)s)")
    p.set_defaults(run=lambda args, _command: fetch(args.out, args.base_url))
