#!/usr/bin/env bash
# Install the code sources that `apr data code-instruct` reads (docs/data.md): the crate sources of
# Debian's librust-*-dev packages (apt-get, as root) and the pinned npm packages that ship
# TypeScript sources (npm pack, checked against their pinned integrity, into apr's cache).
# Python's standard library needs nothing. Idempotent: what is installed is left alone.
# Exits non-zero when a language could not be installed; the tests that need it then skip.
set -uo pipefail
cd "$(dirname "$0")/.."
python3 scripts/bootstrap.py setup || exit 1
APR="${APR_VENV:-.venv}/bin/apr"
status=0
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null 2>&1; then
    "$APR" data sources --install rust || status=1
else
    echo "install-code-sources: the Rust crate sources need root and apt-get; as root run:" \
         "scripts/install-code-sources.sh (or: $APR data sources, which names the packages)" >&2
    status=1
fi
if command -v npm >/dev/null 2>&1; then
    "$APR" data sources --install typescript || status=1
else
    echo "install-code-sources: the TypeScript sources need npm (Node.js); install it and run this again" >&2
    status=1
fi
"$APR" data sources
exit "$status"
