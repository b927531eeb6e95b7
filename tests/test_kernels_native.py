"""The C kernels for CPUs (apr_core/kernels/native.py): the same bits as their references, and a
build that falls back cleanly and leaves nothing half-written."""

import pytest

from apr_core.kernels import native

needs_cc = pytest.mark.skipif(native.compiler() is None, reason="no C compiler on this machine")


@needs_cc
def test_build_is_cached_per_source_and_a_failed_build_leaves_nothing(monkeypatch, tmp_path):
    monkeypatch.setenv("APR_CACHE", str(tmp_path))
    monkeypatch.setattr(native, "_loaded", {})
    src = tmp_path / "k.c"
    src.write_text("int apr_answer(void) { return 42; }\n")
    lib = native.library(src)
    assert lib is not None and lib.apr_answer() == 42
    assert native.library(src) is lib
    built = sorted(p.name for p in (tmp_path / "native").iterdir())
    assert len(built) == 1 and built[0].startswith("k-") and built[0].endswith(".so")

    monkeypatch.setattr(native, "_loaded", {})
    src.write_text("int apr_answer(void) { return 43; }\n")
    assert native.library(src).apr_answer() == 43  # a changed source is a new build
    assert len(list((tmp_path / "native").iterdir())) == 2

    monkeypatch.setattr(native, "_loaded", {})
    src.write_text("int apr_answer(void) { return }\n")
    assert native.library(src) is None
    assert len(list((tmp_path / "native").iterdir())) == 2  # no temporary left behind

    monkeypatch.setattr(native, "_loaded", {})
    monkeypatch.setenv("CC", "no-such-compiler-anywhere")
    src.write_text("int apr_answer(void) { return 44; }\n")
    assert native.compiler() is None and native.library(src) is None
