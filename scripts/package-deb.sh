#!/usr/bin/env bash
# Builds the Debian package target/debian/shardcast_<version>_<arch>.deb with dpkg-deb:
#   /usr/bin/shardcast                            the server (release build, debug info stripped)
#   /etc/shardcast/shardcast.toml                 example config, every option at its default
#                                                 (conffile; root:shardcast 0640 after install)
#   /lib/systemd/system/shardcast.service         the hardened unit (not enabled by the package)
#   /usr/lib/sysusers.d/shardcast.conf            the `shardcast` system user
#   /usr/share/shardcast/sysctl/profiles/*.conf   host tuning profiles (default, c1m)
#   /usr/share/shardcast/limits.conf              nofile for PAM starts (limits.d example)
#   /usr/sbin/shardcast-tune                      scripts/tune: check / apply / revert a profile
#   /usr/share/shardcast/grafana/shardcast.json   Grafana dashboard for /metrics
#   /usr/share/doc/shardcast/                     README, TUNING, copyright
# Why dpkg-deb and not cargo-deb: the package is a handful of files, and building cargo-deb
# itself took 6 min here (1.6 min of CPU) on every clean CI machine; dpkg-deb is already there.
#   scripts/package-deb.sh             # cargo build --release, then package
#   scripts/package-deb.sh --no-build  # package the existing target/release/shardcast
# Prints the path of the .deb on its last line.
set -euo pipefail
cd "$(dirname "$0")/.."
export LC_ALL=C
target="${CARGO_TARGET_DIR:-target}"
if [ "${1:-}" != --no-build ]; then
    cargo build --release -p shardcast >&2
fi
bin="$target/release/shardcast"
[ -x "$bin" ] || { echo "package-deb: $bin is missing (build it, or drop --no-build)" >&2; exit 1; }

version="$(sed -nE 's/^version = "([^"]+)"/\1/p' engine/Cargo.toml | head -1)"
arch="$(dpkg --print-architecture)"
stage="$(mktemp -d)"
trap 'rm -rf "$stage"' EXIT

install -D -m 0755 "$bin" "$stage/usr/bin/shardcast"
# Debug info stays in target/release (profile.release has debug = 1), not in the package.
objcopy --strip-debug "$stage/usr/bin/shardcast"
install -D -m 0640 deploy/shardcast.toml "$stage/etc/shardcast/shardcast.toml"
install -D -m 0644 sysctl/shardcast.service "$stage/lib/systemd/system/shardcast.service"
install -D -m 0644 sysctl/sysusers.conf "$stage/usr/lib/sysusers.d/shardcast.conf"
for p in sysctl/profiles/*.conf; do
    install -D -m 0644 "$p" "$stage/usr/share/shardcast/sysctl/profiles/$(basename "$p")"
done
install -D -m 0644 sysctl/limits.conf "$stage/usr/share/shardcast/limits.conf"
# tune finds its profiles at ../sysctl/profiles from its own (resolved) location.
install -D -m 0755 scripts/tune "$stage/usr/share/shardcast/scripts/tune"
mkdir -p "$stage/usr/sbin"
ln -s ../share/shardcast/scripts/tune "$stage/usr/sbin/shardcast-tune"
install -D -m 0644 deploy/grafana/shardcast.json "$stage/usr/share/shardcast/grafana/shardcast.json"
doc="$stage/usr/share/doc/shardcast"
install -D -m 0644 README.md "$doc/README.md"
install -D -m 0644 docs/TUNING.md "$doc/TUNING.md"
cat >"$doc/copyright" <<EOF
Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/
Upstream-Name: shardcast

Files: *
License: $(sed -nE 's/^license = "([^"]+)"/\1/p' Cargo.toml | head -1)
EOF

# The newest glibc symbol version the binary needs is its only dependency (no other shared
# libraries: jemalloc and everything else are linked in).
glibc="$(objdump -T "$stage/usr/bin/shardcast" | grep -oE 'GLIBC_[0-9]+(\.[0-9]+)+' \
    | sed 's/GLIBC_//' | sort -uV | tail -1)"
needed="$(objdump -p "$stage/usr/bin/shardcast" | awk '/NEEDED/ {print $2}' | tr '\n' ' ')"
for lib in $needed; do
    case "$lib" in
    libc.so.* | libm.so.* | libpthread.so.* | libdl.so.* | librt.so.* | libgcc_s.so.* | ld-linux*) ;;
    *) echo "package-deb: unexpected shared library $lib (add its package to Depends)" >&2; exit 1 ;;
    esac
done
depends="libc6 (>= $glibc)"
case " $needed " in *" libgcc_s.so."*) depends="$depends, libgcc-s1" ;; esac

mkdir -p "$stage/DEBIAN"
cat >"$stage/DEBIAN/control" <<EOF
Package: shardcast
Version: $version
Architecture: $arch
Maintainer: shardcast developers <shardcast@localhost>
Installed-Size: $(du -sk --exclude=DEBIAN "$stage" | cut -f1)
Depends: $depends
Section: net
Priority: optional
Description: thread-per-core WebSocket broadcast server
 Fans real-time feeds (market data, prices, game state, notifications) out to
 hundreds of thousands of WebSocket clients per host: one shard per core on
 io_uring (epoll fallback), messages encoded once, every queued byte counted
 against per-connection marks and a process-wide ceiling.
 .
 The service is installed but not enabled: review /etc/shardcast/shardcast.toml,
 check the host with "shardcast-tune check", then
 "systemctl enable --now shardcast".
EOF
echo /etc/shardcast/shardcast.toml >"$stage/DEBIAN/conffiles"

# Maintainer scripts honour DPKG_ROOT (dpkg --root with --force-script-chrootless), so a test
# can install the package into a throwaway root without touching the host.
cat >"$stage/DEBIAN/postinst" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = configure ]; then
    # The account the unit runs as.
    if command -v systemd-sysusers >/dev/null 2>&1; then
        systemd-sysusers ${DPKG_ROOT:+--root="$DPKG_ROOT"} \
            "$DPKG_ROOT/usr/lib/sysusers.d/shardcast.conf"
    elif [ -z "$DPKG_ROOT" ] && ! getent passwd shardcast >/dev/null; then
        adduser --system --group --no-create-home --home /nonexistent shardcast
    fi
    # On first install: the config may hold publish_token, so root and the service only.
    gid="$(awk -F: '$1 == "shardcast" { print $3 }' "$DPKG_ROOT/etc/group" 2>/dev/null || true)"
    if [ -z "$2" ] && [ -n "$gid" ]; then
        chown "0:$gid" "$DPKG_ROOT/etc/shardcast/shardcast.toml"
        chmod 0640 "$DPKG_ROOT/etc/shardcast/shardcast.toml"
    fi
    if [ -z "$DPKG_ROOT" ] && [ -d /run/systemd/system ]; then
        systemctl daemon-reload || true
        # An upgrade restarts a running server; a first install leaves it to the operator.
        if [ -n "$2" ] && systemctl is-active --quiet shardcast.service; then
            systemctl restart shardcast.service || true
        fi
    fi
fi
exit 0
EOF
cat >"$stage/DEBIAN/prerm" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = remove ] && [ -z "$DPKG_ROOT" ] && [ -d /run/systemd/system ]; then
    systemctl stop shardcast.service || true
    systemctl disable shardcast.service >/dev/null 2>&1 || true
fi
exit 0
EOF
cat >"$stage/DEBIAN/postrm" <<'EOF'
#!/bin/sh
set -e
if [ "$1" = purge ]; then
    rm -rf "$DPKG_ROOT/var/log/shardcast" "$DPKG_ROOT/var/lib/shardcast"
fi
if [ -z "$DPKG_ROOT" ] && [ -d /run/systemd/system ]; then
    systemctl daemon-reload || true
fi
exit 0
EOF
chmod 0755 "$stage/DEBIAN/postinst" "$stage/DEBIAN/prerm" "$stage/DEBIAN/postrm"

mkdir -p "$target/debian"
deb="$target/debian/shardcast_${version}_${arch}.deb"
dpkg-deb --root-owner-group -Zxz --build "$stage" "$deb" >&2
echo "$deb"
