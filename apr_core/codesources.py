"""Where local source code lives per language, and which of its files are held out for evaluation.

Three languages are read offline: Python from the running interpreter's standard library, Rust
from the crate sources Debian's ``librust-*-dev`` packages install under
``/usr/share/cargo/registry``, TypeScript from pinned npm packages that ship their ``.ts``
sources, unpacked into apr's cache by ``apr data sources --install typescript``. Each language has a fixed
list of held-out files: they are the evaluation text of the built-in corpora (``stdlib-code``,
``rust-code``, ``typescript-code``) and are never used for training data (``apr data
code-instruct``). The lists live here, in the core, so the corpora and the dataset builder cannot
disagree about them.

A held-out entry is a path whose parts must match the last parts of a file's path. For Rust and
TypeScript its first part names a package directory without its version (``regex`` matches
``regex-1.7.1``), so an entry holds out that file in every installed version of the package.
"""

from __future__ import annotations

import os
import re
import sysconfig
from dataclasses import dataclass
from pathlib import Path, PurePath

from .errors import AprError

CARGO_REGISTRY = Path("/usr/share/cargo/registry")

# Debian bookworm packages whose crates (and their dependencies) make the Rust corpus.
RUST_PACKAGES = ("librust-regex-dev", "librust-itertools-dev", "librust-serde-json-dev",
                 "librust-either-dev", "librust-smallvec-dev")


@dataclass(frozen=True)
class NpmPackage:
    """An npm package pinned by version and by the registry's sha512 integrity of its tarball."""

    name: str
    version: str
    integrity: str

    @property
    def spec(self) -> str:
        return f"{self.name}@{self.version}"

    @property
    def dirname(self) -> str:
        """``@tanstack/query-core`` 5.108.0 -> ``tanstack-query-core-5.108.0``."""
        return f"{self.name.lstrip('@').replace('/', '-')}-{self.version}"


# Packages that ship their implementation as .ts files (src/), most functions with JSDoc.
NPM_PACKAGES = (
    NpmPackage("rxjs", "7.8.1",
               "sha512-AA3TVj+0A2iuIoQkWEK/tqFjBq2j+6PO6Y0zJcvzLAFhEFIO3HL0vls9hWLncZbAAbK0mar7oZ4V079I/qPMxg=="),
    NpmPackage("@tanstack/query-core", "5.108.0",
               "sha512-X9zJUtEV/0D2q9pmGS/Bza8S4bNovSBhZOtdhtu0fzsHwizC6C+Eh/q5CX3MQBchsRMrirWVQmv7Fp4OStzV9g=="),
    NpmPackage("@reduxjs/toolkit", "2.14.0",
               "sha512-m/PxMwRe0xLL6XUsAgy0YjInklHcfi9uMwFhJk+QINqjxqPvyc89T5cMjszA5bDmTE0gwGc7zr9LRO4gL+mhaw=="),
    NpmPackage("mobx", "7.1.3",
               "sha512-H2NcS5ylMsqYn7v4WpSdzv5YWPmw5XTV6pG2NvY0qYbh95FXbswZJ7pn7wU0rOtUvRzk+3t4AOX2eircoN+vBg=="),
)

# Python's held-out files are the stdlib-code corpus of apr_core.corpora (EVAL_CODE_FILES).
RUST_HELDOUT = ("regex/src/re_bytes.rs", "itertools/src/adaptors/mod.rs", "serde_json/src/map.rs",
                "serde_json/src/value/mod.rs", "either/src/lib.rs")
TYPESCRIPT_HELDOUT = ("rxjs/src/internal/Observable.ts", "rxjs/src/internal/Subscriber.ts",
                      "rxjs/src/internal/Subject.ts", "rxjs/src/internal/operators/mergeInternals.ts",
                      "rxjs/src/internal/operators/timeout.ts", "rxjs/src/internal/observable/dom/WebSocketSubject.ts",
                      "rxjs/src/internal/testing/TestScheduler.ts", "tanstack-query-core/src/mutation.ts")

_VERSIONED = re.compile(r"^(.+?)-(\d+\.\d+[^/]*)$")


def package_name(dirname: str) -> str:
    """``regex-1.7.1`` -> ``regex``, ``sval-1.0.0-alpha.5`` -> ``sval``; other names unchanged."""
    m = _VERSIONED.match(dirname)
    return m.group(1) if m else dirname


def _version_key(dirname: str) -> tuple:
    m = _VERSIONED.match(dirname)
    return tuple(int(x) for x in re.findall(r"\d+", m.group(2))) if m else ()


def cache_root() -> Path:
    """apr's cache of downloaded code sources: ``$APR_CODE_SOURCES``, else under ``$XDG_CACHE_HOME``."""
    if os.environ.get("APR_CODE_SOURCES"):
        return Path(os.environ["APR_CODE_SOURCES"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "apr" / "code-sources"


@dataclass(frozen=True)
class CodeSource:
    """One language's files: suffixes, default location, held-out list and how to install it."""

    language: str
    title: str
    corpus: str
    suffixes: tuple[str, ...]
    heldout: tuple[str, ...]
    packaged: bool  # held-out entries start with a package directory name (without version)
    exclude_suffixes: tuple[str, ...] = ()

    def default_root(self) -> Path:
        if self.language == "python":
            return Path(sysconfig.get_paths()["stdlib"])
        if self.language == "rust":
            return CARGO_REGISTRY
        return cache_root() / "typescript"

    def install_hint(self) -> str:
        if self.language == "python":
            return "part of every CPython installation"
        if self.language == "rust":
            return f"as root: apt-get install -y {' '.join(RUST_PACKAGES)} (or apr data sources --install rust)"
        return (f"apr data sources --install typescript (npm pack "
                f"{' '.join(p.spec for p in NPM_PACKAGES)} into {self.default_root()})")

    def is_source_file(self, name: str) -> bool:
        return name.endswith(self.suffixes) and not name.endswith(self.exclude_suffixes)

    def is_heldout(self, path: PurePath | str, extra: tuple[str, ...] = ()) -> bool:
        """Whether the file at ``path`` (any prefix) is one of the held-out files or of ``extra``."""
        parts = PurePath(path).parts
        for entry in (*self.heldout, *extra):
            want = PurePath(entry).parts
            if len(want) > len(parts):
                continue
            tail = parts[len(parts) - len(want):]
            if tail[1:] != want[1:]:
                continue
            if tail[0] == want[0] or (self.packaged and package_name(tail[0]) == want[0]):
                return True
        return False

    def resolve_heldout(self, root: Path | None = None) -> list[tuple[str, Path | None]]:
        """Each held-out entry with its file on this machine (None where it is missing); a package
        installed in several versions gives its highest."""
        root = root or self.default_root()
        found: list[tuple[str, Path | None]] = []
        for entry in self.heldout:
            first, *rest = PurePath(entry).parts
            path: Path | None = root / entry
            if self.packaged:
                dirs = sorted((d for d in root.iterdir() if d.is_dir() and package_name(d.name) == first),
                              key=lambda d: _version_key(d.name)) if root.is_dir() else []
                path = dirs[-1].joinpath(*rest) if dirs else None
            found.append((entry, path if path is not None and path.is_file() else None))
        return found

    def heldout_paths(self, root: Path | None = None) -> list[Path]:
        """The held-out files on this machine, in list order; a missing one is an `AprError`."""
        root = root or self.default_root()
        if not root.is_dir():
            raise AprError(f"{self.corpus}: no {self.title} sources at {root}; install them: {self.install_hint()}")
        paths = []
        for entry, path in self.resolve_heldout(root):
            if path is None:
                raise AprError(f"{self.corpus}: the held-out file {entry} is not in {root}; "
                               f"install the sources: {self.install_hint()}")
            paths.append(path)
        return paths


def _python_heldout() -> tuple[str, ...]:
    from .corpora import EVAL_CODE_FILES

    return EVAL_CODE_FILES


def sources() -> dict[str, CodeSource]:
    """Every language apr reads code of, by name."""
    return {
        "python": CodeSource("python", "Python", "stdlib-code", (".py",), _python_heldout(), packaged=False),
        "rust": CodeSource("rust", "Rust", "rust-code", (".rs",), RUST_HELDOUT, packaged=True),
        "typescript": CodeSource("typescript", "TypeScript", "typescript-code", (".ts", ".mts", ".cts"),
                                 TYPESCRIPT_HELDOUT, packaged=True, exclude_suffixes=(".d.ts", ".d.mts", ".d.cts")),
    }


def get(language: str) -> CodeSource:
    found = sources().get(language)
    if found is None:
        raise AprError(f"unknown language {language!r} (choose from {', '.join(sources())})")
    return found
