#!/usr/bin/env bash
# Runs every test of the workspace: formatting, lints, the host-tuning script tests (scripts/tune),
# the Markdown link check, the raw-benchmark-output check, the whole suite under the io_uring
# driver and again with io_uring refused (epoll), the Debian package and systemd unit tests, then
# a short fuzz run of every proto fuzz target.
#   scripts/test.sh                 # everything
#   FUZZ_SECONDS=0 scripts/test.sh  # skip fuzzing (default: 20 s per target)
set -euo pipefail
cd "$(dirname "$0")/.."
# CI has no terminal: packages installed below (chromium, nats-server, shellcheck, strace, systemd)
# must never prompt.
export DEBIAN_FRONTEND=noninteractive

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets -- -D warnings

step "ops: tune script tests"
scripts/tune-test.sh

step "docs: every relative Markdown link resolves"
scripts/check-links.py

step "repository: raw benchmark output stays out of git"
scripts/check-bench-output.sh

# engine/tests/dashboard.rs, browser.rs and clients/js/test/browser.test.ts run a real headless
# Chromium; install it when we can (before the client's tests).
if [ ! -x /usr/bin/chromium ] && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    step "installing chromium for the dashboard test"
    apt-get install -y chromium || { apt-get update && apt-get install -y chromium; } \
        || echo "warning: chromium could not be installed; the browser tests will SKIP"
fi

step "clients/js: npm ci, tsc, node --test"
scripts/test-js.sh

# engine/tests/nats.rs starts a real nats-server; without one those tests fail (they never skip).
if ! command -v nats-server >/dev/null && [ ! -x /usr/sbin/nats-server ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        step "installing nats-server for the NATS bridge tests"
        apt-get install -y nats-server || { apt-get update && apt-get install -y nats-server; }
    else
        echo "error: nats-server is missing (Debian: apt-get install nats-server); engine/tests/nats.rs needs it" >&2
        exit 1
    fi
fi

# install_for CMD PACKAGE WHY: apt-get install PACKAGE when CMD is missing (as root); the tests
# that need it fail without it, they never skip.
install_for() {
    command -v "$1" >/dev/null && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        step "installing $2 for $3"
        apt-get install -y "$2" || { apt-get update && apt-get install -y "$2"; }
    else
        echo "error: $1 is missing (Debian: apt-get install $2); $3 needs it" >&2
        exit 1
    fi
}
# engine/tests/sandbox.rs traces the server's system calls against the unit's filter, which
# systemd-analyze expands; scripts/package-test.sh rates the unit with it too.
install_for strace strace "engine/tests/sandbox.rs"
install_for systemd-analyze systemd "engine/tests/sandbox.rs and scripts/package-test.sh"

# engine/tests/prometheus.rs lints /metrics with promtool; without it that test fails (never skips).
if ! command -v promtool >/dev/null && [ ! -x "${CARGO_TARGET_DIR:-target}/tools/promtool" ]; then
    step "fetching promtool (Debian's prometheus package, unpacked into target/tools)"
    scripts/fetch-promtool.sh
fi

# engine/tests/binance.rs and browser.rs run third-party clients (binance-connector,
# python-binance, @binance/spot, playwright-core) from target/clients: install them once.
step "installing the Binance clients and playwright-core (scripts/clients.sh)"
scripts/clients.sh

# engine/tests/deflate_peers.rs drives Python `websockets` from target/pyenv (pinned versions).
step "python test peers (target/pyenv)"
scripts/pyenv.sh

# engine/tests/tls_*.rs drive Python websockets (a venv under target/) and openssl s_client.
step "TLS test peers (scripts/tls-peers.sh)"
scripts/tls-peers.sh

step "tests, default driver (io_uring when available)"
cargo test --workspace

# The second pass refuses io_uring the way a seccomp profile does (io_uring_setup fails with
# EPERM), so `--driver auto` falls back to epoll everywhere: the whole suite on the epoll driver.
step "tests, io_uring refused (SHARDCAST_URING_REFUSE=1: auto falls back to epoll)"
SHARDCAST_URING_REFUSE=1 cargo test --workspace

step "package: the .deb (one release build), installed into a throwaway root; the unit's hardening"
scripts/package-test.sh

fuzz_seconds="${FUZZ_SECONDS:-20}"
if [ "$fuzz_seconds" != "0" ]; then
    step "fuzz every proto target for ${fuzz_seconds}s"
    scripts/fuzz.sh "$fuzz_seconds"
fi
