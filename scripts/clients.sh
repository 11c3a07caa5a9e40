#!/usr/bin/env bash
# Installs the third-party Binance clients that engine/tests/binance.rs runs unmodified against
# shardcast: binance-connector and python-binance (each in its own venv: both install a
# top-level `binance` package) and @binance/spot (npm ci from the committed lock file).
# Everything goes under target/clients/; re-running is a no-op until a pin changes.
#   scripts/clients.sh          # install what is missing
set -euo pipefail
cd "$(dirname "$0")/.."
here=engine/tests/clients
out=target/clients
mkdir -p "$out"

stamp_ok() { [ -f "$1/.stamp" ] && [ "$(cat "$1/.stamp")" = "$2" ]; }

python=${PYTHON:-python3}
for name in connector python-binance; do
    req="$here/requirements-$name.txt"
    venv="$out/$name"
    sum=$(sha256sum "$req" | cut -d' ' -f1)
    if ! stamp_ok "$venv" "$sum"; then
        echo "clients: creating $venv"
        rm -rf "$venv"
        "$python" -m venv "$venv"
        "$venv/bin/pip" install --quiet --disable-pip-version-check -r "$req"
        echo "$sum" > "$venv/.stamp"
    fi
done

node_dir="$out/node"
sum=$(cat "$here/node/package.json" "$here/node/package-lock.json" | sha256sum | cut -d' ' -f1)
if ! stamp_ok "$node_dir" "$sum"; then
    echo "clients: npm ci in $node_dir"
    rm -rf "$node_dir"
    mkdir -p "$node_dir"
    cp "$here/node/package.json" "$here/node/package-lock.json" "$node_dir/"
    (cd "$node_dir" && npm ci --ignore-scripts --no-audit --no-fund --loglevel=error)
    echo "$sum" > "$node_dir/.stamp"
fi
echo "clients: ready in $out"
