#!/usr/bin/env bash
# Puts promtool (Prometheus's linter, `promtool check metrics`) at target/tools/promtool for
# engine/tests/prometheus.rs. It comes from Debian's `prometheus` package, downloaded with apt
# and unpacked here rather than installed: installing it would also start a Prometheus server
# (on port 9090, shardcast's default admin port). The official release tarball has the same
# binary, but this machine class reaches package registries, not GitHub releases.
#   scripts/fetch-promtool.sh        # no-op when target/tools/promtool already runs
set -euo pipefail
cd "$(dirname "$0")/.."
dest="${CARGO_TARGET_DIR:-target}/tools"
if [ -x "$dest/promtool" ] && "$dest/promtool" --version >/dev/null 2>&1; then
    exit 0
fi
work="$(mktemp -d)"
trap 'rm -rf "$work"' EXIT
cd "$work"
# apt's download sandbox user cannot write to a root-owned mktemp dir; let it.
chmod 0777 "$work"
apt-get download prometheus || { apt-get update >/dev/null && apt-get download prometheus; }
dpkg-deb -x prometheus_*.deb root
cd - >/dev/null
mkdir -p "$dest"
install -m 0755 "$work/root/usr/bin/promtool" "$dest/promtool"
"$dest/promtool" --version | head -1
