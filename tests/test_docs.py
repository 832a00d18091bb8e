"""The repository's documents point only at what it contains: every "docs/METHOD.md §N" citation names a
section that exists, and nothing cites the design notes that lived outside the repository."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
METHOD = ROOT / "docs" / "METHOD.md"
SCANNED = ("tipcore", "app", "tests", "bench", "examples", "docs", "scripts")
TOP_LEVEL = ("README.md", "BENCHMARKS.md", "requirements.txt", "pyproject.toml", "Dockerfile")
# Built from parts so that this file does not match its own search.
OUTSIDE = ("TIP-" + "SPEC", "../" + "shared/")
CITATION = re.compile(r"METHOD\.md (§[\d.]+(?:(?:,| and|-)\s*§?[\d.]+)*)")


def text_files() -> list[Path]:
    files = [ROOT / name for name in TOP_LEVEL if (ROOT / name).is_file()]
    for folder in SCANNED:
        base = ROOT / folder
        if base.is_dir():
            files += [p for p in base.rglob("*") if p.is_file() and p.suffix in (".py", ".md", ".txt", ".toml")
                      and "__pycache__" not in p.parts]
    return files


def method_sections() -> set[str]:
    return {m.group(1) for m in re.finditer(r"^#{2,3} (\d+(?:\.\d+)?)\.? ", METHOD.read_text(), flags=re.M)}


def cited_sections(text: str) -> list[str]:
    cited = []
    for match in CITATION.finditer(text):
        cited += [n.rstrip(".") for n in re.findall(r"\d+(?:\.\d+)?\.?", match.group(1))]
    return cited


def test_the_citation_reader_finds_every_form():
    text = "see docs/METHOD.md §3.5 and §3.6; docs/METHOD.md §3.3, §3.4. docs/METHOD.md §8: 11.2M, METHOD.md §3."
    assert cited_sections(text) == ["3.5", "3.6", "3.3", "3.4", "8", "3"]


def test_method_has_numbered_sections():
    sections = method_sections()
    assert {"1", "2", "3", "3.1", "3.5", "4", "5", "6", "7"} <= sections, sorted(sections)


def test_every_method_citation_names_an_existing_section():
    sections = method_sections()
    broken = {}
    for path in text_files():
        missing = [s for s in cited_sections(path.read_text(errors="replace")) if s not in sections]
        if missing:
            broken[str(path.relative_to(ROOT))] = missing
    assert not broken, f"citations of docs/METHOD.md sections that do not exist: {broken}"


def test_nothing_cites_documents_outside_the_repository():
    hits = [f"{p.relative_to(ROOT)}: {needle}" for p in text_files() if p != Path(__file__).resolve()
            for needle in OUTSIDE if needle in p.read_text(errors="replace")]
    assert not hits, hits
