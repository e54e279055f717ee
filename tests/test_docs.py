"""The documentation's shape: a short README, each fact in one file, links that lead somewhere."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
from conftest import REPO

DOCS = [REPO / "README.md", REPO / "benchmarks" / "README.md", *sorted((REPO / "docs").glob("*.md"))]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def paragraphs(path: Path) -> list[str]:
    """The prose paragraphs of a markdown file (code blocks, tables, headings and short lines left out)."""
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    found = []
    for block in re.split(r"\n\s*\n", text):
        block = " ".join(block.split())
        if len(block) >= 120 and not block.startswith(("#", "|", "<!--")):
            found.append(block)
    return found


def slug(heading: str) -> str:
    """GitHub's anchor of a heading."""
    text = re.sub(r"[^\w\- ]", "", heading.strip().lower())
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    text = re.sub(r"```.*?```", "", path.read_text(encoding="utf-8"), flags=re.S)
    return {slug(line.lstrip("#")) for line in text.splitlines() if line.startswith("#")}


def test_the_readme_is_short():
    assert len((REPO / "README.md").read_text(encoding="utf-8").splitlines()) <= 250


def test_no_paragraph_is_in_two_files():
    seen: dict[str, Path] = {}
    for path in DOCS:
        for paragraph in paragraphs(path):
            assert paragraph not in seen, (
                f"{path.relative_to(REPO)} repeats a paragraph of {seen[paragraph].relative_to(REPO)}: {paragraph[:80]}")
            seen[paragraph] = path


@pytest.mark.parametrize("path", DOCS, ids=lambda p: str(p.relative_to(REPO)))
def test_relative_links_lead_to_a_file_and_heading(path):
    for target in LINK.findall(path.read_text(encoding="utf-8")):
        if target.startswith(("http://", "https://", "mailto:")):
            continue
        file, _, anchor = target.partition("#")
        linked = (path.parent / file).resolve() if file else path
        where = path.relative_to(REPO)
        assert linked.exists(), f"{where}: link to missing {target}"
        if anchor and linked.suffix == ".md":
            assert anchor in anchors(linked), f"{where}: no heading '#{anchor}' in {target}"
