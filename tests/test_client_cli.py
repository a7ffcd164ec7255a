"""The `nextword` console script (nextword_client/cli.py), installed by pyproject's [project.scripts],
run as a user runs it against the real service: predict, sessions, generate printing tokens as they
arrive, the URL and API key from flags or the environment, and one-line errors with exit statuses.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import requests

from tests.servers import ROOT, free_port
from tests.test_generate import LONG, PACE_MS, PROMPT, long_seed

NEXTWORD = Path(sys.executable).parent / "nextword"  # the console script `pip install` put beside python
# The script imports nextword_client wherever the venv installed it from; this checkout's comes first.
CHECKOUT = {"PYTHONPATH": str(ROOT / "clients" / "python")}


@pytest.fixture(scope="module")
def service(module_service):
    return module_service(NEXTWORD_BATCH_WAIT_MS=str(PACE_MS))


def nextword(*args: str, url: str | None = None, **env: str) -> subprocess.CompletedProcess:
    environ = {k: v for k, v in os.environ.items() if k not in ("NEXTWORD_URL", "NEXTWORD_API_KEY")}
    if url:
        environ["NEXTWORD_URL"] = url
    return subprocess.run([str(NEXTWORD), *args], capture_output=True, text=True, timeout=60,
                          env={**environ, **CHECKOUT, **env})


def test_the_console_script_is_installed():
    assert NEXTWORD.exists(), "run `make install-dev`: clients/python's [project.scripts] installs `nextword`"
    out = nextword("--help")
    assert out.returncode == 0 and "predict" in out.stdout and "sessions" in out.stdout


def _rows(out: subprocess.CompletedProcess) -> list[tuple[str, float]]:
    assert out.returncode == 0, out.stderr
    return [(w, float(p)) for w, p in (line.split() for line in out.stdout.splitlines())]


def _api(service, **body) -> dict:
    return requests.post(service.url + "/predict", json=body, timeout=30).json()


def test_predict_prints_the_words_and_probabilities_the_api_returns(service):
    api = _api(service, text="the cat eats fish", top_k=4, words_only=True)  # the CLI shows words only
    out = nextword("predict", "the cat eats fish", "--top-k", "4", url=service.url)  # the URL from NEXTWORD_URL
    assert _rows(out) == [(p["word"], round(p["probability"], 4)) for p in api["predictions"]]
    assert f"{api['filter']['matches']} words, together" in out.stderr
    as_json = nextword("--url", service.url, "predict", "the cat eats fish", "--top-k", "4", "--json")
    assert json.loads(as_json.stdout) == api
    raw = _api(service, text="the cat eats fish", top_k=4)
    assert {p["word"] for p in raw["predictions"]} & {".", "<eos>"}  # what --all-tokens brings back
    every = nextword("predict", "the cat eats fish", "--top-k", "4", "--all-tokens", url=service.url)
    assert _rows(every) == [(p["word"], round(p["probability"], 4)) for p in raw["predictions"]]


def test_predict_prefix_and_suggest_complete_the_word_being_typed(service):
    api = _api(service, text="the cat", prefix="F", top_k=2, words_only=True)
    out = nextword("predict", "the cat", "--prefix", "F", "--top-k", "2", url=service.url)
    assert _rows(out) == [(p["word"], round(p["probability"], 4)) for p in api["predictions"]]
    assert "starting with 'F'" in out.stderr
    assert _rows(nextword("suggest", "the cat F", "--top-k", "2", url=service.url)) == _rows(out)
    none = nextword("predict", "the cat", "--prefix", "F", "--case-sensitive", url=service.url)
    assert _rows(none) == [] and "0 words starting with 'F'" in none.stderr and "no suggestion" in none.stderr
    bad = nextword("predict", "the cat", "--prefix", "f f", url=service.url)
    assert bad.returncode == 1 and bad.stderr.startswith("error: invalid_input [400]") and "prefix" in bad.stderr


def test_sessions_create_show_delete(service):
    created = nextword("sessions", "create", "--model", "tiny-rnn", url=service.url)
    assert created.returncode == 0, created.stderr
    sid = created.stdout.strip()
    fed = nextword("predict", "the cat", "--session", sid, url=service.url)
    assert fed.returncode == 0, fed.stderr
    shown = json.loads(nextword("sessions", "show", sid, url=service.url).stdout)
    assert (shown["session_id"], shown["model"], shown["tokens"]) == (sid, "tiny-rnn", 2)
    assert nextword("sessions", "delete", sid, url=service.url).returncode == 0
    gone = nextword("sessions", "show", sid, url=service.url)
    assert gone.returncode == 1 and gone.stdout == ""
    assert gone.stderr.startswith("error: session_not_found [404]") and len(gone.stderr.splitlines()) == 1


def test_a_session_id_that_starts_with_a_dash_is_still_an_id(service):
    """Ids are base64url, so one in 64 begins with `-`, which argparse alone would read as an option."""
    for _ in range(2000):
        sid = requests.post(service.url + "/sessions", timeout=30).json()["session_id"]
        if sid.startswith("-"):
            break
    else:
        pytest.fail("no session id began with '-' in 2000 tries")
    fed = nextword("predict", "the cat", "--session", sid, url=service.url)
    assert fed.returncode == 0, fed.stderr
    assert json.loads(nextword("sessions", "show", sid, url=service.url).stdout)["tokens"] == 2
    generated = nextword("generate", "--session", sid, "--max-tokens", "2", url=service.url)
    assert generated.returncode == 0, generated.stderr
    assert nextword("sessions", "delete", sid, url=service.url).returncode == 0
    assert nextword("sessions", "show", sid, url=service.url).returncode == 1


def test_generate_prints_tokens_as_they_arrive(service, client):
    seed, drained = long_seed(client, LONG)
    sid = nextword("sessions", "create", url=service.url).stdout.strip()
    proc = subprocess.Popen([str(NEXTWORD), "--url", service.url, "generate", "--session", sid, PROMPT,
                             "--max-tokens", str(LONG), "--seed", str(seed)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, bufsize=0, env={**os.environ, **CHECKOUT})  # read(1): one byte
    try:
        first = proc.stdout.read(1)  # blocks until the first word is printed
        # the paced service needs (LONG - 1) more model steps: the program is still streaming
        running = proc.poll() is None
        rest, err = proc.communicate(timeout=60)
    finally:
        proc.kill()
    assert running, "the first word came only when the program ended"
    words = (first + rest).decode().split()
    assert words == [d["word"] for d in drained["token_details"]]
    assert proc.returncode == 0 and b"finish_reason=length" in err


def test_generate_without_a_session_makes_one(service):
    out = nextword("generate", "the cat", "--max-tokens", "3", "--temperature", "0.00001", url=service.url)
    assert out.returncode == 0, out.stderr
    sid = out.stderr.splitlines()[0].removeprefix("session ")
    shown = requests.get(f"{service.url}/sessions/{sid}", timeout=30).json()
    assert shown["tokens"] == 2 + len(out.stdout.split())


def test_the_api_key_comes_from_the_flag_or_the_environment(service_factory):
    proc = service_factory(NEXTWORD_API_KEYS="sesame")
    assert nextword("--api-key", "sesame", "predict", "the cat", url=proc.url).returncode == 0
    assert nextword("predict", "the cat", url=proc.url, NEXTWORD_API_KEY="sesame").returncode == 0
    refused = nextword("predict", "the cat", url=proc.url)
    assert refused.returncode == 1 and refused.stderr.startswith("error: unauthorized [401]")


@pytest.mark.parametrize("args, status, message", [
    (("predict", "the cat", "--top-k", "0"), 1, "error: invalid_input [400]"),
    (("predict", "the cat", "--top-k", "many"), 2, "invalid int value"),
    (("sessions", "rename", "x"), 2, "invalid choice"),
    (("generate", "--session", "nope", "the"), 1, "error: session_not_found [404]"),
])
def test_errors_are_one_line_with_an_exit_status(service, args, status, message):
    out = nextword(*args, url=service.url)
    assert out.returncode == status and message in out.stderr and "Traceback" not in out.stderr


def test_an_unreachable_service_exits_3():
    out = nextword("--timeout", "5", "predict", "the cat", url=f"http://127.0.0.1:{free_port()}")
    assert out.returncode == 3 and out.stderr.startswith("error: ") and "Traceback" not in out.stderr


def test_help_says_each_default_once():
    for args in (("--help",), ("predict", "--help"), ("generate", "--help"), ("sessions", "create", "--help")):
        out = nextword(*args)
        assert out.returncode == 0, out.stderr
        options = re.split(r"\n  (?=-)", out.stdout)  # one chunk per option, its help lines included
        assert len(options) > 2
        for option in options[1:]:
            assert option.count("(default") <= 1, option
        assert "(default: None)" not in out.stdout and "(default: False)" not in out.stdout


def test_a_reader_that_goes_away_is_no_traceback(service):
    """`nextword models | head -c 1`: the pipe closes before the answer is written."""
    proc = subprocess.Popen([str(NEXTWORD), "--url", service.url, "models"], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env={**os.environ, **CHECKOUT})
    proc.stdout.close()  # long before the program has imported httpx and asked the service
    err = proc.communicate(timeout=60)[1].decode()
    assert proc.returncode == 141 and err == "", err
