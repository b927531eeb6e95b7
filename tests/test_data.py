"""apr data: code-instruct extraction per language, determinism, held-out files, CLI errors, real runs."""

import ast
import io
import json
import tarfile
import textwrap
from pathlib import Path

import pytest

from apr_core import codesources
from apr_core.corpora import EVAL_CODE_FILES, load_corpus
from apr_core.errors import AprError
from apr_data import instruct, python_code, rust_code, typescript_code
from apr_data.install import integrity_of, unpack
from apr_data.lexing import LexError
from helpers import one_error_line, run_apr, run_without_heavy_imports


def _by_name(functions):
    return {f.name: f for f in functions}


# --------------------------------------------------------------------------- Python

PY = '''
import functools


def plain(a, b):
    """Add two numbers."""
    total = a + b
    # a comment in the body
    return total


def undocumented(x):
    y = x + 1
    return y


def only_doc():
    """Nothing else."""


class Shape:
    """A shape."""

    @functools.lru_cache(
        maxsize=None,
    )
    def area(self, scale=1):
        """The area, scaled.

        Longer text.
        """

        s = scale * scale
        text = """not
a docstring"""
        return s * len(text)

    async def fetch(self):
        """Fetch it later."""
        await self.wait()
        return 1

    def outer(self):
        """Has a nested helper."""
        def helper(v):
            """Double v."""
            return v * 2
        return helper(3)
'''


def test_python_functions_methods_decorators_and_nesting():
    found = _by_name(python_code.extract(PY))
    assert set(found) == {"plain", "area", "fetch", "outer", "helper"}
    assert found["plain"].owner is None and found["plain"].line == 5
    assert found["plain"].input == 'def plain(a, b):\n    """Add two numbers."""'
    assert found["plain"].output == "    total = a + b\n    # a comment in the body\n    return total"
    area = found["area"]
    assert area.owner == "class Shape"
    assert area.input.startswith("@functools.lru_cache(\n    maxsize=None,\n)\ndef area(self, scale=1):")
    assert area.input.endswith('    Longer text.\n    """')
    assert area.output.startswith("    s = scale * scale")  # blank line after the docstring dropped
    assert '"""not\na docstring"""' in area.output  # a multi-line literal keeps its own text
    assert found["fetch"].input.startswith("async def fetch(self):") and found["fetch"].owner == "class Shape"
    assert found["helper"].owner is None and found["helper"].output == "    return v * 2"
    for fn in found.values():
        ast.parse(fn.input + "\n" + fn.output)  # the two halves make the function again
    assert found["plain"].body_lines() == 3


def test_python_syntax_error_is_a_lex_error():
    with pytest.raises(LexError, match="not valid Python"):
        python_code.extract("def broken(:\n    pass\n")


# --------------------------------------------------------------------------- Rust

RUST = r'''
//! Crate docs are not an item's docs.
use std::fmt;

/// Formats a value with braces.
///
/// # Examples
/// ```
/// assert_eq!(braces(1), "{1}");
/// ```
#[inline]
#[must_use]
pub fn braces<T: fmt::Display + Into<String>>(value: T) -> String
where
    T: Clone,
{
    let open = '{';
    let close = '}';
    let quote = '\'';
    let raw = r#"a "}" inside"#;
    let bytes = b"}}";
    /* a /* nested } */ comment { */
    let s = format!("{}{}{}", open, value, close); // a } in a comment
    let _ = (quote, raw, bytes, |x: u8| { x + 1 });
    s
}

fn undocumented() -> u8 {
    1
}

/// A wrapper.
pub struct Wrap<'a, T> {
    inner: &'a T,
}

impl<'a, T: Clone> Wrap<'a, T> {
    /// The inner value, cloned.
    pub(crate) fn get(&self) -> Option<T> {
        let v: &'a T = self.inner;
        let c = v.clone();
        Some(c)
    }
}

/// Things that count.
pub trait Count {
    /// Required, no body.
    fn count(&self) -> usize;

    /// Twice the count.
    fn twice(&self) -> usize {
        let n = self.count();
        let m = n * 2;
        m
    }
}

macro_rules! make {
    ($name:ident) => {
        /// Made by a macro.
        fn $name() -> u8 {
            let x = 1;
            x
        }
    };
}

extern "C" {
    /// Declared elsewhere.
    fn ext(x: i32) -> i32;
}

/// Unsafe and extern.
pub unsafe extern "C" fn callback(p: *const u8) -> u8 {
    let v = *p;
    let w = v + 1;
    w
}
'''


def test_rust_functions_impl_blocks_generics_and_literals():
    found = _by_name(rust_code.extract(RUST))
    assert set(found) == {"braces", "get", "twice", "callback"}
    b = found["braces"]
    assert b.owner is None
    assert b.input.startswith("/// Formats a value with braces.") and "#[must_use]" in b.input
    assert b.input.endswith("where\n    T: Clone,\n{")
    assert b.output.startswith("    let open = '{';") and b.output.endswith("    s\n}")
    assert "/* a /* nested } */ comment { */" in b.output
    assert found["get"].owner == "impl<'a, T: Clone> Wrap<'a, T>"
    assert found["get"].input == "/// The inner value, cloned.\npub(crate) fn get(&self) -> Option<T> {"
    assert found["get"].output == "    let v: &'a T = self.inner;\n    let c = v.clone();\n    Some(c)\n}"
    assert found["get"].body_lines() == 3
    assert found["twice"].owner == "trait Count"
    assert found["callback"].input.startswith("/// Unsafe and extern.\npub unsafe extern \"C\" fn callback")


def test_rust_unterminated_literal_is_a_lex_error():
    with pytest.raises(LexError):
        rust_code.extract('/// doc\nfn f() {\n    let s = "never closed;\n}\n')
    with pytest.raises(LexError):
        rust_code.extract("/// doc\nfn f() {\n    /* open /* nested */\n}\n")


# --------------------------------------------------------------------------- TypeScript

TS = r'''
import { Thing } from './thing';

/**
 * Wraps a value; the return type is an object type.
 */
export function wrap<T extends { id: number }>(value: T, label = `{${"}"}`): { value: T; label: string } {
  const re = /\{+[}]/g;
  const s = 'a { b';
  const t = `x ${ { a: `nested ${value.id} }` }.a } y`; // } in a comment
  /* { block comment */
  return { value, label: s + t + re.source };
}

/** Overload, no body. */
export function pick(x: string): string;
/** Overload, no body. */
export function pick(x: number): number;
/**
 * The implementation of pick.
 */
export function pick(x: any): any {
  const y = x;
  const z = y;
  return z;
}

/** Says hello asynchronously. */
export const hello = async <T,>(name: T): Promise<string> => {
  const greeting = 'hello';
  await Promise.resolve();
  return `${greeting} ${name}`;
};

/** Curried. */
export const curried = (a: number) => (b: number): number => {
  const sum = a + b;
  const twice = sum * 2;
  return twice;
};

/** Expression body: not taken. */
export const short = (a: number) => a + 1;

export interface Shape {
  /** Interface member: no body. */
  area(): number;
}

export class Box<T> extends Base implements Shape {
  /** @internal */
  private hidden(): void {
    this.a = 1;
    this.b = 2;
    this.c = 3;
  }

  /**
   * The area of the box.
   */
  @memo()
  public async area(scale?: number): Promise<number> {
    const w = this.w;
    const h = this.h;
    return w * h * (scale ?? 1);
  }

  /** The value, as a getter. */
  get value(): T {
    const v = this.v;
    const w = v;
    return w;
  }

  /** A private method. */
  #secret(n: number) {
    const m = n / 2;
    const k = m / 3;
    return k;
  }

  /** An arrow property. */
  handler = (event: Event): void => {
    const e = event;
    console.log(e);
    this.last = e;
  };
}
'''


def test_typescript_functions_arrows_methods_and_literals():
    found = _by_name(typescript_code.extract(TS))
    assert set(found) == {"wrap", "pick", "hello", "curried", "area", "value", "#secret", "handler"}
    w = found["wrap"]
    assert w.owner is None
    assert w.input.endswith("): { value: T; label: string } {")
    assert w.output.startswith("  const re = /\\{+[}]/g;")
    assert w.output.endswith("  return { value, label: s + t + re.source };\n}")
    assert found["pick"].input.startswith("/**\n * The implementation of pick.")
    assert found["hello"].output.endswith("  return `${greeting} ${name}`;\n}")
    assert found["curried"].output.startswith("  const sum = a + b;")
    area = found["area"]
    assert area.owner == "class Box"
    assert area.input == ("/**\n * The area of the box.\n */\n@memo()\n"
                          "public async area(scale?: number): Promise<number> {")
    assert area.output == ("  const w = this.w;\n  const h = this.h;\n  return w * h * (scale ?? 1);\n}")
    assert found["value"].owner == "class Box" and found["handler"].owner == "class Box"


def test_typescript_unbalanced_file_is_a_lex_error():
    with pytest.raises(LexError):
        typescript_code.extract("/** doc */\nfunction f() {\n  const s = `open ${ x\n}\n")
    with pytest.raises(LexError):
        typescript_code.extract("/** doc */\nfunction f() {\n  return 1;\n")


# --------------------------------------------------------------------------- building

def _tree(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(textwrap.dedent(text))
    return root


def _py_functions(prefix: str, n: int) -> str:
    return "\n".join(f'def {prefix}{i}(x):\n    """Doc {i}."""\n    a = x + {i}\n    b = a * 2\n    return b\n'
                     for i in range(n))


def test_build_is_deterministic_deduplicated_and_seeded(tmp_path):
    root = _tree(tmp_path / "src", {"b/two.py": _py_functions("two", 6), "a/one.py": _py_functions("one", 6),
                                    "a/copy/one.py": _py_functions("one", 6), "a/__pycache__/x.py": _py_functions("c", 3),
                                    "a/tests/test_x.py": _py_functions("t", 3), "broken.py": "def (:\n"})
    first = instruct.build("python", [root], seed=1)
    assert len(first.records) == 12 and first.duplicates == 6
    assert first.unreadable_files == ["broken.py"] and first.files == 4
    assert {r["source"].split(":")[0] for r in first.records} == {"a/one.py", "b/two.py"}
    out1, out2 = tmp_path / "1.jsonl", tmp_path / "2.jsonl"
    sha1 = instruct.write_jsonl(first.records, out1)
    sha2 = instruct.write_jsonl(instruct.build("python", [root], seed=1).records, out2)
    assert sha1 == sha2 and out1.read_bytes() == out2.read_bytes()
    other = instruct.build("python", [root], seed=2).records
    assert other != first.records and sorted(map(json.dumps, other)) == sorted(map(json.dumps, first.records))
    cut = instruct.build("python", [root], seed=1, max_examples=5).records
    assert cut == first.records[:5]
    rec = first.records[0]
    assert list(rec) == ["instruction", "input", "output", "language", "source"]
    assert rec["language"] == "python" and rec["instruction"].startswith("Complete the body of this Python function")


def test_body_length_filters(tmp_path):
    root = _tree(tmp_path, {"m.py": _py_functions("f", 2)})
    assert instruct.build("python", [root], min_body_lines=4).too_short == 2
    assert instruct.build("python", [root], max_body_chars=10).too_long == 2
    assert len(instruct.build("python", [root], min_body_lines=3).records) == 2


def test_heldout_files_are_never_used(tmp_path):
    root = _tree(tmp_path / "lib", {"textwrap.py": _py_functions("held", 3), "mine.py": _py_functions("mine", 2),
                                    "extra/skip.py": _py_functions("skip", 2)})
    result = instruct.build("python", [root], extra_heldout=("extra/skip.py",))
    assert sorted(result.heldout_files) == ["extra/skip.py", "textwrap.py"]
    assert {r["source"].split(":")[0] for r in result.records} == {"mine.py"}
    rust = codesources.get("rust")
    assert rust.is_heldout("/x/registry/regex-9.9.9/src/re_bytes.rs")
    assert rust.is_heldout("regex/src/re_bytes.rs")
    assert not rust.is_heldout("/x/registry/regex-syntax-0.6.27/src/re_bytes.rs")
    assert not rust.is_heldout("/x/registry/regex-1.7.1/src/re_set.rs")
    assert codesources.get("typescript").is_heldout("/c/typescript/rxjs-7.8.1/src/internal/Observable.ts")
    assert codesources.package_name("winapi-x86_64-pc-windows-gnu-0.4.0") == "winapi-x86_64-pc-windows-gnu"
    assert codesources.package_name("sval-1.0.0-alpha.5") == "sval"


def test_heldout_corpus_resolves_the_highest_version(tmp_path):
    source = codesources.CodeSource("rust", "Rust", "rust-code", (".rs",), ("demo/src/lib.rs",), packaged=True)
    _tree(tmp_path, {"demo-0.9.0/src/lib.rs": "old", "demo-0.10.1/src/lib.rs": "new", "demo-x-1.0.0/src/lib.rs": "x"})
    assert source.heldout_paths(tmp_path) == [tmp_path / "demo-0.10.1" / "src" / "lib.rs"]
    with pytest.raises(AprError, match="held-out file demo/src/lib.rs is not in"):
        source.heldout_paths(tmp_path / "demo-x-1.0.0")


def test_typescript_skips_declaration_files(tmp_path):
    body = "/** Doc. */\nexport function f(a: number): number {\n  const b = a;\n  const c = b;\n  return c;\n}\n"
    root = _tree(tmp_path, {"pkg/src/f.ts": body, "pkg/src/f.d.ts": body, "pkg/dist/f.ts": body})
    result = instruct.build("typescript", [root])
    assert result.files == 1 and [r["source"] for r in result.records] == ["pkg/src/f.ts:1"]


# --------------------------------------------------------------------------- CLI

@pytest.mark.parametrize("args,needle", [
    (["--language", "go"], "Invalid value for '--language'"),
    (["--language", "python", "--source", "/no/such/dir"], "no such file or directory"),
    (["--language", "rust", "--source", "{py}"], "holds no Rust files"),
    (["--language", "python", "--source", "{bare}"], "no Python functions with a docstring"),
    (["--language", "python", "--source", "{py}", "--min-body-lines", "0"], "--min-body-lines"),
])
def test_cli_errors_are_one_line_and_write_nothing(tmp_path, args, needle):
    _tree(tmp_path / "py", {"m.py": _py_functions("f", 2)})
    _tree(tmp_path / "bare", {"m.py": "def f(x):\n    a = x\n    b = a\n    return b\n"})
    out = tmp_path / "out.jsonl"
    args = [a.format(py=tmp_path / "py", bare=tmp_path / "bare") for a in args]
    proc = run_apr("data", "code-instruct", *args, "-o", str(out))
    assert needle in one_error_line(proc)
    assert not out.exists() and not list(tmp_path.glob(".out.jsonl*"))


def test_cli_writes_jsonl_and_imports_no_torch(tmp_path):
    _tree(tmp_path / "py", {"m.py": _py_functions("f", 3)})
    out = tmp_path / "out.jsonl"
    proc = run_without_heavy_imports(
        ["data", "--help"], ["data", "code-instruct", "--help"], ["data", "sources", "--json"],
        ["data", "code-instruct", "--language", "python", "--source", str(tmp_path / "py"), "-o", str(out),
         "--json", "--seed", "3"])
    summary = json.loads(proc.stdout[proc.stdout.rindex("\n{") + 1:])
    assert summary["examples"] == 3 and summary["seed"] == 3
    lines = out.read_text().splitlines()
    assert len(lines) == 3 and all(json.loads(ln)["language"] == "python" for ln in lines)


def test_heldout_text_is_the_builtin_corpus_and_evaluates_the_same(tmp_path):
    out = tmp_path / "python.txt"
    res = json.loads(run_apr("data", "heldout", "--language", "python", "-o", str(out), "--json", check=True).stdout)
    corpus = load_corpus("stdlib-code")
    assert out.read_text(encoding="utf-8") == corpus.text and res["sha256"] == corpus.sha256
    assert res["files"] == list(EVAL_CODE_FILES)
    from apr_core import pipeline
    from apr_core.testing import tiny_model

    model = tiny_model("llama")
    params = {"max_tokens": "64", "seq_len": "32"}
    by_file = pipeline.evaluate("perplexity", model, {**params, "dataset": str(out)})
    by_name = pipeline.evaluate("perplexity", model, {**params, "dataset": "stdlib-code"})
    assert by_file["value"] == by_name["value"]


def test_sources_reports_every_language():
    rows = json.loads(run_apr("data", "sources", "--json", check=True).stdout)["languages"]
    by = {r["language"]: r for r in rows}
    assert set(by) == {"python", "rust", "typescript"}
    assert by["python"]["installed"] and by["python"]["files"] > 500 and not by["python"]["heldout_missing"]
    assert "apt-get install -y librust-regex-dev" in by["rust"]["install"]
    assert "npm pack rxjs@7.8.1" in by["typescript"]["install"]


def _fake_tarball(path: Path, members: dict[str, bytes]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return path


def test_npm_tarball_is_checked_and_unpacked_safely(tmp_path):
    good = _fake_tarball(tmp_path / "good.tgz", {"package/package.json": b"{}", "package/src/a.ts": b"x"})
    pkg = codesources.NpmPackage("demo", "1.0.0", integrity_of(good))
    unpack(good, pkg, tmp_path / "cache" / pkg.dirname)
    assert (tmp_path / "cache" / "demo-1.0.0" / "src" / "a.ts").read_bytes() == b"x"
    with pytest.raises(AprError, match="is not the pinned"):
        unpack(good, codesources.NpmPackage("demo", "1.0.0", "sha512-AAAA"), tmp_path / "other")
    evil = _fake_tarball(tmp_path / "evil.tgz", {"package/../../escape.ts": b"x"})
    with pytest.raises(AprError, match="unexpected path"):
        unpack(evil, codesources.NpmPackage("evil", "1.0.0", integrity_of(evil)), tmp_path / "evil")
    assert not (tmp_path / "other").exists() and not (tmp_path / "evil").exists()
    assert not (tmp_path.parent / "escape.ts").exists()
    assert codesources.NpmPackage("@tanstack/query-core", "5.108.0", "").dirname == "tanstack-query-core-5.108.0"


# --------------------------------------------------------------------------- real sources

def test_real_run_on_the_standard_library(tmp_path):
    out = tmp_path / "python.jsonl"
    res = json.loads(run_apr("data", "code-instruct", "--language", "python", "-o", str(out), "--json", "-q",
                             check=True).stdout)
    records = [json.loads(ln) for ln in out.read_text().splitlines()]
    assert res["examples"] == len(records) >= 1000
    assert sorted(res["heldout_files"]) == sorted(EVAL_CODE_FILES)
    assert not {r["source"].split(":")[0] for r in records} & set(EVAL_CODE_FILES)
    assert not _heldout_functions(codesources.get("python"), python_code) & {(r["input"], r["output"]) for r in records}
    for r in records[:200]:
        ast.parse(r["input"] + "\n" + r["output"])


def _heldout_functions(source, module) -> set[tuple[str, str]]:
    """(input, output) of every function in the held-out files: none may reach the records."""
    found = {(f.input, f.output) for p in source.heldout_paths() for f in module.extract(p.read_text())}
    assert len(found) > 20
    return found


def _installed(language: str) -> bool:
    source = codesources.get(language)
    return source.default_root().is_dir() and all(p for _, p in source.resolve_heldout())


@pytest.mark.skipif(not _installed("rust"), reason="Rust crate sources not installed "
                    "(scripts/install-code-sources.sh, or apt-get install -y librust-regex-dev ...)")
def test_real_run_on_the_installed_crates(tmp_path):
    source = codesources.get("rust")
    crates = sorted({p.parents[len(Path(e).parts) - 2] for e, p in source.resolve_heldout()})
    result = instruct.build("rust", crates)
    assert len(result.records) >= 300
    assert len(result.heldout_files) == len(codesources.RUST_HELDOUT)
    assert not _heldout_functions(source, rust_code) & {(r["input"], r["output"]) for r in result.records}
    assert load_corpus("rust-code").text.count("fn ") > 100


@pytest.mark.skipif(not _installed("typescript"), reason="TypeScript sources not installed "
                    "(apr data sources --install typescript)")
def test_real_run_on_the_installed_npm_packages(tmp_path):
    source = codesources.get("typescript")
    result = instruct.build("typescript", [source.default_root()])
    assert len(result.records) >= 200
    assert len(result.heldout_files) == len(codesources.TYPESCRIPT_HELDOUT)
    assert not _heldout_functions(source, typescript_code) & {(r["input"], r["output"]) for r in result.records}
    assert all(r["source"].split("/")[0] in {p.dirname for p in codesources.NPM_PACKAGES} for r in result.records)
    assert "export class Observable" in load_corpus("typescript-code").text
