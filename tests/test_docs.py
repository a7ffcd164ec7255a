"""The README and the pages in docs/: every relative link resolves (to a file, and to a heading where it names
one), and the README stays a front door (short, with a table of contents and links to the rest)."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")  # [text](target) and ![alt](target)
CODE = re.compile(r"^```.*?^```$|`[^`\n]*`", re.MULTILINE | re.DOTALL)  # links inside code are examples


def anchors(page: Path) -> set[str]:
    """GitHub's heading anchors: lower case, punctuation dropped, spaces to hyphens."""
    text = CODE.sub("", page.read_text(encoding="utf-8"))
    slugs = set()
    for heading in re.findall(r"^#{1,6} (.+)$", text, re.MULTILINE):
        slugs.add(re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-"))
    return slugs


def links(page: Path) -> list[str]:
    return LINK.findall(CODE.sub("", page.read_text(encoding="utf-8")))


@pytest.mark.parametrize("page", PAGES, ids=[str(p.relative_to(ROOT)) for p in PAGES])
def test_every_relative_link_resolves(page):
    broken = []
    for target in links(page):
        if re.match(r"^[a-z][a-z0-9+.-]*:", target):  # http:, https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        file = (page.parent / path).resolve() if path else page
        if not file.exists():
            broken.append(f"{target}: no such file")
        elif anchor and file.suffix == ".md" and anchor not in anchors(file):
            broken.append(f"{target}: no heading #{anchor} in {file.relative_to(ROOT)}")
    assert not broken, f"{page.relative_to(ROOT)}: " + "; ".join(broken)


def test_the_readme_is_a_front_door():
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    assert len(text.splitlines()) <= 300, "the README is the front door: keep it under 300 lines, the rest in docs/"
    assert "## Contents" in text
    targets = {t.partition("#")[0] for t in links(ROOT / "README.md")}
    for page in ("api", "client", "configuration", "operations", "training", "benchmarks", "architecture",
                 "typing", "limits"):
        assert f"docs/{page}.md" in targets, f"the README links docs/{page}.md"
    assert "make serve" in text and "make test" in text and "http://127.0.0.1:8000/" in text


def test_docs_hold_pages_and_figures_not_experiment_outputs():
    loose = [p.name for p in (ROOT / "docs").iterdir() if p.suffix not in (".md", ".png", ".svg")]
    assert not loose, f"experiment outputs belong beside their code or under a results folder: {loose}"
