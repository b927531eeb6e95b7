"""Installing the code sources, and reporting what is installed where.

Rust crate sources come from Debian packages (``apt-get``, which needs root); TypeScript sources
come from pinned npm packages, fetched with ``npm pack``, checked against the sha512 integrity
pinned in `apr_core.codesources` and unpacked (regular files and directories only, nothing outside
the package) into apr's cache, one directory per package, which appears complete or not at all.
Both are idempotent: what is already there is left alone. Python needs nothing.
"""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import subprocess
import tarfile
import tempfile
from pathlib import Path, PurePosixPath

from apr_core import codesources
from apr_core.atomic import atomic_dir
from apr_core.errors import AprError

from .instruct import source_files


def _last_line(text: str) -> str:
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    return lines[-1] if lines else "no output"


def _dpkg_installed(package: str) -> bool:
    if shutil.which("dpkg-query") is None:
        return False
    proc = subprocess.run(["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True)
    return proc.returncode == 0 and proc.stdout.endswith("installed")


def install_rust() -> str:
    missing = [p for p in codesources.RUST_PACKAGES if not _dpkg_installed(p)]
    if not missing:
        return "rust: already installed"
    if shutil.which("apt-get") is None or os.geteuid() != 0:
        raise AprError(f"installing the Rust sources needs root and apt-get: "
                       f"apt-get install -y {' '.join(missing)}")
    for cmd in (["apt-get", "update", "-qq"], ["apt-get", "install", "-y", "-qq", *missing]):
        proc = subprocess.run(cmd, capture_output=True, text=True,
                              env=dict(os.environ, DEBIAN_FRONTEND="noninteractive"))
        if proc.returncode != 0:
            raise AprError(f"{' '.join(cmd[:2])} failed: {_last_line(proc.stderr or proc.stdout)}")
    return f"rust: installed {' '.join(missing)}"


def integrity_of(path: Path) -> str:
    return "sha512-" + base64.b64encode(hashlib.sha512(path.read_bytes()).digest()).decode()


def unpack(tarball: Path, package: codesources.NpmPackage, dest: Path) -> None:
    """Check ``tarball`` against the package's pinned integrity and unpack its ``package/`` into
    ``dest`` atomically."""
    got = integrity_of(tarball)
    if got != package.integrity:
        raise AprError(f"{package.spec}: the tarball's integrity {got[:22]}... is not the pinned "
                       f"{package.integrity[:22]}...; refusing to unpack it")
    dest.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(tarball, "r:gz") as tar, atomic_dir(dest) as stage:
        for member in tar.getmembers():
            name = PurePosixPath(member.name)
            if not name.parts or name.parts[0] != "package" or name.is_absolute() or ".." in name.parts:
                raise AprError(f"{package.spec}: unexpected path {member.name!r} in the tarball")
            target = stage.joinpath(*name.parts[1:])
            if member.isdir():
                target.mkdir(parents=True, exist_ok=True)
            elif member.isfile():
                target.parent.mkdir(parents=True, exist_ok=True)
                with tar.extractfile(member) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)


def install_typescript() -> str:
    root = codesources.get("typescript").default_root()
    done = []
    for package in codesources.NPM_PACKAGES:
        dest = root / package.dirname
        if (dest / "package.json").is_file():
            continue
        npm = shutil.which("npm")
        if npm is None:
            raise AprError(f"installing the TypeScript sources needs npm (apt-get install -y npm), "
                           f"to fetch {package.spec}")
        with tempfile.TemporaryDirectory(prefix="apr-npm-") as tmp:
            proc = subprocess.run([npm, "pack", package.spec, "--silent", "--pack-destination", tmp],
                                  capture_output=True, text=True, cwd=tmp)
            tarballs = sorted(Path(tmp).glob("*.tgz"))
            if proc.returncode != 0 or len(tarballs) != 1:
                raise AprError(f"npm pack {package.spec} failed: {_last_line(proc.stderr or proc.stdout)}")
            unpack(tarballs[0], package, dest)
        done.append(package.spec)
    return f"typescript: installed {' '.join(done)} into {root}" if done else "typescript: already installed"


INSTALLERS = {"rust": install_rust, "typescript": install_typescript}


def status() -> list[dict]:
    """Per language: where its sources are, how many files, which packages, the held-out files,
    and how to install what is missing."""
    rows = []
    for language, source in codesources.sources().items():
        root = source.default_root()
        row = {"language": language, "root": str(root), "installed": root.is_dir(), "files": 0,
               "packages": [], "corpus": source.corpus, "heldout": list(source.heldout),
               "heldout_missing": [], "install": source.install_hint()}
        if root.is_dir():
            row["files"] = sum(1 for _ in source_files(root, source))
            if source.packaged:
                row["packages"] = sorted(d.name for d in root.iterdir() if d.is_dir())
            row["heldout_missing"] = [entry for entry, path in source.resolve_heldout(root) if path is None]
        row["installed"] = bool(row["files"]) and not row["heldout_missing"]
        if language == "typescript":
            want = [p.dirname for p in codesources.NPM_PACKAGES]
            row["installed"] = row["installed"] and all(d in row["packages"] for d in want)
        rows.append(row)
    return rows

