"""docs/api.md as a newcomer uses it: every `sh` block, top to bottom, in one shell against a live server on the
shipped models, each answer checked against the output block shown under it (status and JSON shape; values that
depend on the moment or the machine, such as ids, times and probabilities, are not compared).

An output block is ```json (one JSON value per answer, compared by shape: every key shown is there with a value of
the same type; `code`, `model`, `object` and `finish_reason` by value) or ```text (an SSE stream: tokens then
`done`; anything else: the same lines). A `sh` block with no output block under it must answer no error.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess

import pytest

from tests.servers import ROOT, ServiceProcess

API_PAGE = ROOT / "docs" / "api.md"
EXACT_KEYS = {"code", "model", "object", "finish_reason"}  # values no seed or CPU changes
FENCE = re.compile(r"^```(\w*)\n(.*?)^```$", re.MULTILINE | re.DOTALL)


def examples() -> list[tuple[str, tuple[str, str] | None]]:
    """(sh block, (kind, expected output) or None) for every sh block of the page, in order."""
    fences = [(m.group(1), m.group(2)) for m in FENCE.finditer(API_PAGE.read_text(encoding="utf-8"))]
    out = []
    for i, (kind, body) in enumerate(fences):
        if kind == "sh":
            after = fences[i + 1] if i + 1 < len(fences) and fences[i + 1][0] in ("json", "text") else None
            out.append((body, after))
    return out


def json_values(text: str) -> list:
    decoder, values, at = json.JSONDecoder(), [], 0
    while at < len(text.rstrip()):
        while text[at].isspace():
            at += 1
        value, at = decoder.raw_decode(text, at)
        values.append(value)
    return values


def same_shape(expected, actual, where: str = "$") -> None:
    if isinstance(expected, dict):
        assert isinstance(actual, dict), f"{where}: expected an object, got {actual!r}"
        for key, value in expected.items():
            assert key in actual, f"{where}: no {key!r} in {sorted(actual)}"
            if key in EXACT_KEYS:
                assert actual[key] == value, f"{where}.{key}: {actual[key]!r}, the page shows {value!r}"
            same_shape(value, actual[key], f"{where}.{key}")
    elif isinstance(expected, list):
        assert isinstance(actual, list), f"{where}: expected a list, got {actual!r}"
        if where.endswith((".predictions", ".results")):
            assert len(actual) == len(expected), f"{where}: {len(actual)} items, the page shows {len(expected)}"
        for i, item in enumerate(actual if expected else []):
            same_shape(expected[min(i, len(expected) - 1)], item, f"{where}[{i}]")
    elif isinstance(expected, bool) or expected is None or isinstance(expected, str):
        assert type(actual) is type(expected), f"{where}: {actual!r} is not like {expected!r}"
    else:  # a number: an integer on the page may be a float in another answer (a probability of exactly 1)
        assert isinstance(actual, (int, float)) and not isinstance(actual, bool), f"{where}: {actual!r} is no number"


def check_stream(text: str) -> None:
    events = [block for block in text.strip().split("\n\n") if block.strip()]
    kinds = [re.search(r"^event: (\w+)$", e, re.MULTILINE).group(1) for e in events]
    assert kinds and kinds[-1] == "done" and set(kinds[:-1]) == {"token"}, kinds
    done = json.loads(events[-1].split("data: ", 1)[1])
    assert done["finish_reason"] in ("stop", "length", "eos") and done["session"]["tokens"] > 0


@pytest.fixture(scope="module")
def server(redis_server, tmp_path_factory):
    """`make serve`'s service on the shipped models (the page's words are theirs), on a free port."""
    with ServiceProcess(ROOT / "models", redis_server.url, tmp_path_factory.mktemp("api-examples"), workers=1,
                        NEXTWORD_DEFAULT_MODEL="") as service:
        yield service


@pytest.mark.slow
def test_the_api_page_runs_top_to_bottom(server, tmp_path):
    if not (shutil.which("curl") and shutil.which("python3")):
        pytest.skip("the page's examples need curl and python3 on PATH (.ci/run installs curl)")
    blocks = examples()
    assert len(blocks) >= 10 and blocks[-1][0].count("DELETE") == 1, "the page ends by deleting its session"
    host = server.url.removeprefix("http://")
    script = ["set -euo pipefail"]
    for i, (code, _) in enumerate(blocks):
        assert "localhost:8000" in code, f"block {i} does not talk to the service:\n{code}"
        script += [f"printf '\\n@@@ block {i}\\n'", code.replace("localhost:8000", host)]
    proc = subprocess.run(["bash", "-c", "\n".join(script)], cwd=tmp_path, capture_output=True, text=True,
                          timeout=120, env={"PATH": os.environ["PATH"], "HOME": str(tmp_path)})
    outputs = re.split(r"^@@@ block \d+\n", proc.stdout, flags=re.MULTILINE)[1:]
    assert proc.returncode == 0 and len(outputs) == len(blocks), (
        f"block {len(outputs) - 1} failed (exit {proc.returncode}):\n{blocks[len(outputs) - 1][0]}\n{proc.stderr}")
    for (code, expected), actual in zip(blocks, outputs):
        where = f"\n{code}\nanswered:\n{actual}"
        if expected is None:
            assert '"error"' not in actual, where
        elif expected[0] == "json":
            shown, got = json_values(expected[1]), json_values(actual)
            assert len(got) == len(shown), f"{len(got)} answers, the page shows {len(shown)}:{where}"
            for one, other in zip(shown, got):
                same_shape(one, other)
        elif "event: " in expected[1]:
            check_stream(actual)
        else:
            assert [line.rstrip() for line in actual.strip().splitlines()] == expected[1].strip().splitlines(), where
