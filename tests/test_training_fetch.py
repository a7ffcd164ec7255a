"""`python -m training data` (training/fetch.py): files fetched over HTTP from a local server and checked against
their sha256, a present file kept, a wrong one refused and never kept, and offline one line saying what to do."""

from __future__ import annotations

import functools
import hashlib
import http.server
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from training.errors import TrainingError
from training.fetch import BASE_URL, SHA256, fetch
from tests.servers import free_port

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def corpus_server(tmp_path):
    """(folder, url): a local HTTP server on 127.0.0.1 serving a folder with three small corpus files."""
    folder = tmp_path / "served"
    folder.mkdir()
    for name in SHA256:
        (folder / name).write_text(f" a tiny {name} line \n", encoding="utf-8")
    handler = functools.partial(_QuietHandler, directory=str(folder))
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield folder, f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args) -> None:
        pass


def _sums(folder: Path) -> dict[str, str]:
    return {name: hashlib.sha256((folder / name).read_bytes()).hexdigest() for name in SHA256}


def test_the_public_source_and_checksums_are_wikitext2s():
    assert BASE_URL.startswith("https://raw.githubusercontent.com/pytorch/examples/")
    assert sorted(SHA256) == ["test.txt", "train.txt", "valid.txt"]
    assert SHA256["train.txt"] == "9e9fa1ad55b1c2c95b08e37dd8e653f638fac2c6de904b79e813611eefbc985f"


def test_downloads_check_then_keep_and_a_second_run_downloads_nothing(corpus_server, tmp_path):
    served, url = corpus_server
    out = tmp_path / "data"
    first = fetch(out, url, _sums(served))
    assert all(what.startswith("downloaded") for what in first["files"].values())
    assert _sums(out) == _sums(served) and not list(out.glob("*.part"))
    (served / "train.txt").unlink()  # a second run must not ask the server
    second = fetch(out, url, _sums(out))
    assert set(second["files"].values()) == {"present, checksum ok"}


def test_a_download_with_another_checksum_is_not_kept(corpus_server, tmp_path):
    served, url = corpus_server
    sums = {**_sums(served), "valid.txt": "0" * 64}
    out = tmp_path / "data"
    with pytest.raises(TrainingError, match="did not give WikiText-2's valid.txt"):
        fetch(out, url, sums)
    assert not (out / "valid.txt").exists() and not list(out.glob("*.part"))


def test_a_present_file_with_another_checksum_is_refused_and_left_alone(corpus_server, tmp_path):
    served, url = corpus_server
    out = tmp_path / "data"
    out.mkdir()
    (out / "train.txt").write_text("my own corpus\n")
    with pytest.raises(TrainingError, match="is there but is not WikiText-2's train.txt"):
        fetch(out, url, _sums(served))
    assert (out / "train.txt").read_text() == "my own corpus\n"


def test_offline_is_one_line_saying_what_to_copy_where(tmp_path):
    out = tmp_path / "data"
    proc = subprocess.run([sys.executable, "-m", "training", "data", "--out", str(out), "--base-url",
                           f"http://127.0.0.1:{free_port()}/wikitext-2"], cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert proc.returncode == 2 and proc.stdout == ""
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("error: cannot download http://127.0.0.1:") and "offline: copy" in line
    assert str(out) in line and "DATA=" in line
