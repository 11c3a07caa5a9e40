#!/usr/bin/env bash
# Tests the Debian package and the systemd unit, never touching the host:
#   - the unit: `systemd-analyze security --offline=true` rates it OK or better; LimitNOFILE fits
#     every sysctl profile's fs.nr_open (and limits.conf agrees); `systemd-analyze verify`
#     accepts it in the installed tree;
#   - the package (scripts/package-deb.sh, one release build): it holds the binary, the unit,
#     the sysusers entry, the sysctl profiles, the tune script, the example config and the
#     Grafana dashboard; `dpkg -i` installs it into a throwaway root (dpkg --root with
#     --force-script-chrootless: the maintainer scripts honour DPKG_ROOT), creating the user
#     there and making the config root:shardcast 0640; the installed binary's --print-config
#     with the installed config equals its defaults; the installed shardcast-tune finds its
#     profiles; `dpkg -r` keeps the config, `dpkg -P` removes everything.
# The unit's system call filter is tested against the running server by engine/tests/sandbox.rs.
#   scripts/package-test.sh              # builds the release binary, packages, tests
#   scripts/package-test.sh --no-build   # packages the existing target/release/shardcast
set -euo pipefail
cd "$(dirname "$0")/.."
export LC_ALL=C

# shellcheck source=scripts/testlib.sh
. scripts/testlib.sh

unit=sysctl/shardcast.service

# --- the unit ---------------------------------------------------------------------------------
security="$(systemd-analyze security --offline=true "$unit" 2>&1)" || die "systemd-analyze security failed: $security"
overall="$(grep -E 'Overall exposure level' <<<"$security")" || die "no overall exposure in: $security"
level="$(sed -E 's/.*: ([0-9.]+) ([A-Z]+).*/\1 \2/' <<<"$overall")"
case "${level#* }" in
PERFECT | SAFE | OK) ok "systemd-analyze security: exposure $level" ;;
*) die "systemd-analyze security rates the unit $level (want OK or better):"$'\n'"$security" ;;
esac

nofile="$(sed -nE 's/^LimitNOFILE=([0-9]+)$/\1/p' "$unit")"
[ -n "$nofile" ] || die "$unit has no numeric LimitNOFILE"
for profile in sysctl/profiles/*.conf; do
    nr_open="$(sed -nE 's/^fs\.nr_open[[:space:]]*=[[:space:]]*([0-9]+)/\1/p' "$profile")"
    [ -n "$nr_open" ] || die "$profile sets no fs.nr_open"
    [ "$nofile" -le "$nr_open" ] || die "LimitNOFILE=$nofile exceeds fs.nr_open=$nr_open of $profile"
done
# A million connections (the c1m profile's purpose) fit, with the headroom for 64 shards.
[ "$nofile" -ge $((1000000 + 64 + 8 * 64)) ] || die "LimitNOFILE=$nofile is short of 1,000,000 connections"
while read -r who kind item value; do
    { [ "$item" = nofile ] && [ "$value" = "$nofile" ]; } || die "limits.conf: $who $kind $item $value != LimitNOFILE $nofile"
done < <(grep -vE '^[[:space:]]*(#|$)' sysctl/limits.conf)
ok "LimitNOFILE=$nofile fits every profile's fs.nr_open and matches limits.conf"

# --- build the package --------------------------------------------------------------------------
deb="$(scripts/package-deb.sh "$@" | tail -1)"
[ -f "$deb" ] || die "no package at $deb"
contents="$(dpkg-deb --contents "$deb")"
for path in ./usr/bin/shardcast ./etc/shardcast/shardcast.toml ./lib/systemd/system/shardcast.service \
    ./usr/lib/sysusers.d/shardcast.conf ./usr/share/shardcast/sysctl/profiles/default.conf \
    ./usr/share/shardcast/sysctl/profiles/c1m.conf ./usr/share/shardcast/limits.conf \
    ./usr/share/shardcast/scripts/tune ./usr/sbin/shardcast-tune \
    ./usr/share/shardcast/grafana/shardcast.json ./usr/share/doc/shardcast/README.md; do
    grep -qE " $path( ->|$)" <<<"$contents" || die "$deb lacks $path:"$'\n'"$contents"
done
[ "$(dpkg-deb --field "$deb" Package)" = shardcast ] || die "package name"
dpkg-deb --field "$deb" Depends | grep -qE '^libc6 \(>= 2\.[0-9]+\)' || die "Depends: $(dpkg-deb --field "$deb" Depends)"
ok "$(basename "$deb") ($(du -k "$deb" | cut -f1) KiB) holds binary, unit, user, profiles, tune, config, dashboard"

# --- install into a throwaway root ----------------------------------------------------------------
# What a leaking install would change on the host.
host_state() {
    cat /etc/passwd /etc/group 2>/dev/null | sha256sum
    ls -la /lib/systemd/system/shardcast.service /etc/shardcast /usr/bin/shardcast 2>&1 || true
}
host_before="$(host_state)"
root="$(mktemp -d)"
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/var/lib/dpkg/info" "$root/var/lib/dpkg/updates" "$root/etc"
touch "$root/var/lib/dpkg/status" "$root/var/lib/dpkg/available"
# Root in a user namespace is enough when we are not root (dpkg insists on uid 0).
as_root=()
[ "$(id -u)" = 0 ] || as_root=(unshare --map-root-user)
# --force-depends: libc6 is not registered in the empty root's database.
dpkg_root() {
    "${as_root[@]}" dpkg --root="$root" --log="$root/dpkg.log" --force-script-chrootless \
        --force-depends "$@"
}
out="$(dpkg_root -i "$deb" 2>&1)" || die "dpkg -i failed:"$'\n'"$out"
grep -qE '^Status: install ok installed' "$root/var/lib/dpkg/status" || die "not installed:"$'\n'"$out"
ok "dpkg --root -i installs it into a throwaway root"

if command -v systemd-sysusers >/dev/null; then
    grep -q '^shardcast:' "$root/etc/passwd" || die "no shardcast user in the root's passwd"
    gid="$(awk -F: '$1 == "shardcast" { print $3 }' "$root/etc/group")"
    [ "$(stat -c '%a %u %g' "$root/etc/shardcast/shardcast.toml")" = "640 0 $gid" ] ||
        die "config is $(stat -c '%a %u:%g' "$root/etc/shardcast/shardcast.toml"), want 640 0:$gid"
    ok "postinst created the shardcast user in the root (not the host) and made the config root:shardcast 0640"
fi
[ "$(host_state)" = "$host_before" ] || die "the host's users, groups or units changed"
ok "the host's /etc/passwd, /etc/group and systemd units are untouched"

installed="$root/usr/bin/shardcast"
config="$root/etc/shardcast/shardcast.toml"
with_config="$("$installed" --config "$config" --print-config)" || die "installed binary rejects the installed config"
defaults="$("$installed" --print-config)"
[ "$with_config" = "$defaults" ] || die "installed config is not the defaults:"$'\n'"$(diff <(echo "$defaults") <(echo "$with_config"))"
grep -q '^listen = "0.0.0.0:8080"$' <<<"$with_config" || die "unexpected --print-config:"$'\n'"$with_config"
"$installed" --config "$config" --preflight >/dev/null || die "installed binary: --preflight failed"
ok "installed shardcast --config /etc/shardcast/shardcast.toml --print-config = its defaults; --preflight passes"

set +e
tune_out="$("$root/usr/sbin/shardcast-tune" check 2>&1)"
tune_rc=$?
set -e
{ [ "$tune_rc" -le 1 ] && grep -q 'net.core.somaxconn' <<<"$tune_out"; } || die "installed shardcast-tune check (exit $tune_rc):"$'\n'"$tune_out"
ok "installed shardcast-tune finds its profiles (check exit $tune_rc)"

# verify resolves the unit's default dependencies (sysinit.target, system.slice, ...): give
# the throwaway root the host's targets and slices (plain unit files, gone with the root).
cp -a /lib/systemd/system/*.target /lib/systemd/system/*.slice "$root/lib/systemd/system/" ||
    die "no systemd units on this host to verify against (apt-get install systemd)"
{ verify="$(systemd-analyze verify --root="$root" shardcast.service 2>&1)" && [ -z "$verify" ]; } ||
    die "systemd-analyze verify (ExecStart must exist in the root, every setting must parse):"$'\n'"$verify"
ok "systemd-analyze verify --root accepts the installed unit (settings parse, ExecStart exists)"
rm -f "$root"/lib/systemd/system/*.target "$root"/lib/systemd/system/*.slice

out="$(dpkg_root -r shardcast 2>&1)" || die "dpkg -r failed:"$'\n'"$out"
{ [ ! -e "$installed" ] && [ -f "$config" ]; } || die "remove must delete the binary and keep the config"
out="$(dpkg_root -P shardcast 2>&1)" || die "dpkg -P failed:"$'\n'"$out"
{ [ ! -e "$config" ] && [ ! -e "$root/lib/systemd/system/shardcast.service" ]; } || die "purge left files behind"
ok "dpkg -r keeps the config, dpkg -P removes it"

printf '\npackage tests: %d passed\n' "$passed"
