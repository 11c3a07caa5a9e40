#!/usr/bin/env bash
# Runs every test of the workspace: formatting, lints, the host-tuning script tests (scripts/tune),
# the whole suite under the io_uring driver and again with io_uring refused (epoll), then a short
# fuzz run of every proto fuzz target.
#   scripts/test.sh                 # everything
#   FUZZ_SECONDS=0 scripts/test.sh  # skip fuzzing (default: 20 s per target)
set -euo pipefail
cd "$(dirname "$0")/.."
# CI has no terminal: packages installed below (chromium, nats-server, shellcheck) must never prompt.
export DEBIAN_FRONTEND=noninteractive

step() { printf '\n==> %s\n' "$*"; }

step "cargo fmt --check"
cargo fmt --all -- --check

step "cargo clippy (all targets, warnings are errors)"
cargo clippy --workspace --all-targets -- -D warnings

step "ops: tune script tests"
scripts/tune-test.sh

# engine/tests/dashboard.rs and clients/js/test/browser.test.ts run a real headless Chromium;
# install it when we can (before the client's tests).
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

step "tests, default driver (io_uring when available)"
cargo test --workspace

# The second pass refuses io_uring the way a seccomp profile does (io_uring_setup fails with
# EPERM), so `--driver auto` falls back to epoll everywhere: the whole suite on the epoll driver.
step "tests, io_uring refused (SHARDCAST_URING_REFUSE=1: auto falls back to epoll)"
SHARDCAST_URING_REFUSE=1 cargo test --workspace

fuzz_seconds="${FUZZ_SECONDS:-20}"
if [ "$fuzz_seconds" != "0" ]; then
    step "fuzz every proto target for ${fuzz_seconds}s"
    scripts/fuzz.sh "$fuzz_seconds"
fi
