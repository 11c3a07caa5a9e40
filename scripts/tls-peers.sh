#!/usr/bin/env bash
# Installs the TLS test peers that are not Rust crates (engine/tests/common/tls.rs uses them):
# Python `websockets` in a virtualenv under target/tls-peers, and Debian's openssl for
# `openssl s_client` (chromium is installed by scripts/test.sh). Idempotent and quick when done.
set -euo pipefail
cd "$(dirname "$0")/.."
export DEBIAN_FRONTEND=noninteractive
venv=target/tls-peers/venv
want=17.4
if ! command -v openssl >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get install -y openssl || { apt-get update && apt-get install -y openssl; }
    else
        echo "error: openssl is missing (Debian: apt-get install openssl)" >&2
        exit 1
    fi
fi
if [ -x "$venv/bin/python" ] &&
    "$venv/bin/python" -c "import sys, websockets; sys.exit(websockets.__version__ != '$want')" 2>/dev/null; then
    exit 0
fi
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check "websockets==$want"
echo "tls-peers: websockets $want in $venv"
