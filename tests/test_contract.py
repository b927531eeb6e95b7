"""Every registered technique passes the shared contract (apr_core.testing.check_technique)."""

import pytest

from apr_core.plugins import manager
from apr_core.testing import check_technique

TECHNIQUES = sorted(manager()[1].techniques)


@pytest.mark.parametrize("kind,name", TECHNIQUES, ids=[f"{k}-{n}" for k, n in TECHNIQUES])
def test_contract(kind, name, tmp_path):
    check_technique(kind, name, tmp_path)


def test_every_technique_and_hook_is_documented():
    from pathlib import Path

    from apr_core import hookspecs

    docs = Path(__file__).resolve().parent.parent / "docs"
    text = "\n".join(p.read_text() for p in docs.rglob("*.md"))
    hooks = [n for n in dir(hookspecs) if n.startswith("apr_")]
    for hook in hooks:
        assert f"`{hook}`" in text, f"hook {hook} is not documented in docs/"
    for kind, name in TECHNIQUES:
        assert f"`{name}`" in text, f"{kind} technique {name} is not documented in docs/"
