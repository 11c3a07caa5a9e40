#!/usr/bin/env bash
# Creates target/pyenv, a Python virtual environment with the test peers of
# engine/tests/peers/requirements.txt (Python `websockets`, a client nobody here wrote, used by
# engine/tests/deflate_peers.rs). Idempotent: does nothing when the pinned versions are there.
set -euo pipefail
cd "$(dirname "$0")/.."
req=engine/tests/peers/requirements.txt
venv=target/pyenv
stamp="$venv/.requirements"
if [ -x "$venv/bin/python" ] && [ -f "$stamp" ] && cmp -s "$req" "$stamp"; then
    exit 0
fi
python3 -m venv "$venv" || {
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        DEBIAN_FRONTEND=noninteractive apt-get install -y python3-venv
        python3 -m venv "$venv"
    else
        echo "error: python3 -m venv failed (Debian: apt-get install python3-venv)" >&2
        exit 1
    fi
}
"$venv/bin/python" -m pip install --quiet --disable-pip-version-check -r "$req"
cp "$req" "$stamp"
