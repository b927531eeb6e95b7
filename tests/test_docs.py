"""Docs that cannot drift: generated reference pages match the code, README commands are real."""

from pathlib import Path

from apr_core import docgen

ROOT = Path(__file__).resolve().parent.parent


def test_generated_reference_pages_are_current():
    for name, text in docgen.render().items():
        path = ROOT / "docs" / "reference" / name
        assert path.is_file() and path.read_text() == text, \
            f"docs/reference/{name} is stale: run python -m apr_core.docgen"


def test_readme_starts_with_the_two_commands():
    lines = [ln for ln in (ROOT / "README.md").read_text().splitlines() if ln.startswith("python3 ")]
    assert lines[:2] == ["python3 scripts/bootstrap.py demo", "python3 scripts/bootstrap.py test"]
    ci = (ROOT / ".ci" / "run").read_text()
    assert "python3 scripts/bootstrap.py test" in ci


def test_every_doc_page_the_readme_and_docs_name_exists():
    """A docs/X.md named in README.md or in a docs page is a file (docs/performance.md among them)."""
    import re

    root = Path(__file__).resolve().parent.parent
    texts = [root / "README.md", *sorted((root / "docs").glob("*.md"))]
    named = {m for p in texts for m in re.findall(r"docs/[\w./-]+\.md", p.read_text())}
    assert "docs/performance.md" in named
    missing = sorted(n for n in named if not (root / n).is_file())
    assert not missing, missing
