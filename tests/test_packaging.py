"""Checks the packaging metadata: the licence, compatible ranges in pyproject.toml with the exact
versions in constraints.txt, and the console scripts. Reads files only; installs nothing.

    .venv/bin/python -m pytest tests/test_packaging.py -q
"""

from __future__ import annotations

import importlib
import re
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
    assert PROJECT["scripts"]["nextword-serve"] == "service.__main__:main"
    assert PROJECT["scripts"]["nextword-train"] == "training.__main__:main"
