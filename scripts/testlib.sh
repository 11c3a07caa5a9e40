# Helpers for the shell test scripts (sourced by scripts/tune-test.sh and scripts/package-test.sh):
# `ok WHAT` counts and prints a passed check, `die WHAT` prints a failure and exits 1.
# shellcheck shell=bash
passed=0
ok() {
    passed=$((passed + 1))
    printf '  ok   %s\n' "$*"
}
die() {
    printf '  FAIL %s\n' "$*" >&2
    exit 1
}
