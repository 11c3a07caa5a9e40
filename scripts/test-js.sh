#!/usr/bin/env bash
# Builds and tests the JavaScript client (clients/js): `npm ci` from the committed lock file,
# `tsc`, then `node --test` on the built output (unit tests on a virtual clock, the reconnect
# storm simulation, real-socket tests against a loopback `ws` server, and tests against the
# real shardcast binary, built here: SHARDCAST_BIN).
#   scripts/test-js.sh
set -euo pipefail
cd "$(dirname "$0")/../clients/js"
export DEBIAN_FRONTEND=noninteractive
need=20

if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        apt-get install -y nodejs npm || { apt-get update && apt-get install -y nodejs npm; }
    fi
fi
major=$(node -p 'process.versions.node.split(".")[0]' 2>/dev/null || echo 0)
if [ "$major" -lt "$need" ]; then
    echo "error: clients/js needs Node.js >= $need (found: $(node --version 2>/dev/null || echo none))" >&2
    exit 1
fi

# The real-server tests (test/server.test.ts) run the debug build.
if [ -z "${SHARDCAST_BIN:-}" ]; then
    (cd ../.. && cargo build -p shardcast)
    SHARDCAST_BIN="$(cd ../.. && pwd)/target/debug/shardcast"
fi
export SHARDCAST_BIN

npm ci --no-audit --no-fund
npm test
