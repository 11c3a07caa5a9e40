#!/usr/bin/env bash
# Tests for scripts/tune: shellcheck, `check` on this host, and apply / verify / revert for real
# inside a private network namespace (net.* keys are per namespace) plus a fake SYSCTL_ROOT for the
# fs.* and host-global net.* keys. The host's own sysctls are never written: they are read before
# and after and must be identical.
#   scripts/tune-test.sh
set -euo pipefail
cd "$(dirname "$0")/.."
tune="$PWD/scripts/tune"
profiles="$PWD/sysctl/profiles"

# shellcheck source=scripts/testlib.sh
. scripts/testlib.sh
# run CMD...: run it, keep stdout+stderr in $out and the exit status in $rc.
run() {
    set +e
    out="$("$@" 2>&1)"
    rc=$?
    set -e
}
expect() { # expect RC REGEX WHAT
    [ "$rc" -eq "$1" ] || die "$3: exit $rc, expected $1; output:"$'\n'"$out"
    grep -qE -- "$2" <<<"$out" || die "$3: output lacks /$2/:"$'\n'"$out"
    ok "$3"
}

# Keys of a profile, without the optional marker.
profile_keys() { sed -nE 's/^-?([a-z0-9_.-]+)[[:space:]]*=.*/\1/p' "$profiles/$1.conf"; }
# snapshot ROOT: "key=value" for every key of both profiles under ROOT ("<absent>" if missing).
snapshot() {
    local key path
    for key in $( (profile_keys default && profile_keys c1m) | sort -u); do
        path="$1/${key//.//}"
        if [ -e "$path" ]; then printf '%s=%s\n' "$key" "$(tr -s '[:space:]' ' ' <"$path")"; else printf '%s=<absent>\n' "$key"; fi
    done
}

# --- inside the private network namespace (re-invoked by the main part below) -----------------
if [ "${1:-}" = --in-netns ]; then
    work=$2
    # Per-namespace keys link to the namespace's real /proc/sys; global ones are plain files.
    make_tree() {
        local root=$1 key
        for key in net.core.somaxconn net.ipv4.tcp_max_syn_backlog net.ipv4.ip_local_port_range \
            net.ipv4.tcp_tw_reuse net.ipv4.tcp_fin_timeout net.ipv4.tcp_rmem net.ipv4.tcp_wmem; do
            mkdir -p "$(dirname "$root/${key//.//}")"
            ln -s "/proc/sys/${key//.//}" "$root/${key//.//}"
        done
        mkdir -p "$root/fs" "$root/net/core"
        echo 100000 >"$root/fs/file-max"
        echo 1048576 >"$root/fs/nr_open"
        echo 1000 >"$root/net/core/netdev_max_backlog"
        echo 212992 >"$root/net/core/rmem_max"
        echo 212992 >"$root/net/core/wmem_max"
        printf '100\t200\t300\n' >"$root/net/ipv4/tcp_mem"
    }
    # This namespace starts from kernel defaults; make a few per-namespace keys short of the profile.
    echo 60 >/proc/sys/net/ipv4/tcp_fin_timeout
    echo 2 >/proc/sys/net/ipv4/tcp_tw_reuse
    printf '32768\t60999\n' >/proc/sys/net/ipv4/ip_local_port_range
    printf '4096\t16384\t4194304\n' >/proc/sys/net/ipv4/tcp_wmem

    root="$work/root" backups="$work/backups"
    make_tree "$root"
    export SYSCTL_ROOT=$root
    before="$(snapshot "$root")"

    run "$tune" apply --dry-run --backup-dir "$backups"
    expect 0 "^would write '15' to $root/net/ipv4/tcp_fin_timeout \(net.ipv4.tcp_fin_timeout, now '60'\)" \
        "netns: apply --dry-run prints each write"
    grep -q "would write '1' to .*tcp_tw_reuse" <<<"$out" || die "dry run lacks tcp_tw_reuse"
    grep -q "skip net.netfilter.nf_conntrack_max: not present" <<<"$out" || die "dry run lacks conntrack skip"
    [ "$(snapshot "$root")" = "$before" ] || die "dry run changed a value"
    [ ! -d "$backups" ] || die "dry run wrote a backup"
    ok "netns: dry run wrote nothing"

    run "$tune" apply --backup-dir "$backups"
    expect 0 "applied 10 keys of profile default, verified by reading back" "netns: apply default profile"
    [ "$(cat /proc/sys/net/ipv4/tcp_fin_timeout)" = 15 ] || die "tcp_fin_timeout not applied"
    [ "$(cat /proc/sys/net/ipv4/tcp_tw_reuse)" = 1 ] || die "tcp_tw_reuse not applied"
    [ "$(tr -s '\t' ' ' </proc/sys/net/ipv4/ip_local_port_range)" = "10240 65535" ] || die "port range not applied"
    [ "$(tr -s '\t' ' ' </proc/sys/net/ipv4/tcp_wmem)" = "4096 65536 16777216" ] || die "tcp_wmem not applied"
    [ "$(cat "$root/fs/file-max")" = 2097152 ] || die "fs.file-max not applied"
    [ "$(tr -s '\t' ' ' <"$root/net/ipv4/tcp_mem")" = "196608 262144 393216" ] || die "tcp_mem not applied"
    ok "netns: values read back after apply"
    mapfile -t made < <(find "$backups" -name 'tune-backup-*.conf')
    [ "${#made[@]}" -eq 1 ] || die "expected one backup, found ${#made[@]}"
    grep -qx 'net.ipv4.tcp_fin_timeout = 60' "${made[0]}" || die "backup lacks the old tcp_fin_timeout"
    ok "netns: backup holds the old values"
    after="$(snapshot "$root")"

    run "$tune" check
    expect 0 "profile default: 13 ok, 0 below, 0 missing, 1 skipped" "netns: check passes after apply"

    run "$tune" apply --backup-dir "$backups"
    expect 0 "nothing to do: all 13 keys of profile default already meet it" "netns: second apply is a no-op"
    [ "$(find "$backups" -name 'tune-backup-*.conf' | wc -l)" -eq 1 ] || die "second apply wrote a backup"
    [ "$(snapshot "$root")" = "$after" ] || die "second apply changed a value"

    run "$tune" revert --dry-run --backup-dir "$backups"
    expect 0 "would write '60' to $root/net/ipv4/tcp_fin_timeout" "netns: revert --dry-run prints each write"
    [ "$(snapshot "$root")" = "$after" ] || die "revert dry run changed a value"

    run "$tune" revert --backup-dir "$backups"
    expect 0 "restored 10 keys from ${made[0]}, verified" "netns: revert restores the latest backup"
    [ "$(snapshot "$root")" = "$before" ] || die "revert did not restore every value:"$'\n'"$(diff <(echo "$before") <(snapshot "$root"))"
    [ "$(cat /proc/sys/net/ipv4/tcp_fin_timeout)" = 60 ] || die "tcp_fin_timeout not reverted"
    ok "netns: every value back to its original"
    run "$tune" revert --backup-dir "$backups"
    expect 0 "nothing to do: all 10 keys already have their values" "netns: second revert is a no-op"

    # c1m on top of default, then revert each backup explicitly.
    run "$tune" apply --backup-dir "$backups"
    expect 0 "applied 10 keys" "netns: apply default again"
    first="$(find "$backups" -name 'tune-backup-*.conf' | sort | tail -n 1)"
    run "$tune" apply --profile c1m --backup-dir "$backups"
    expect 0 "applied [0-9]+ keys of profile c1m" "netns: apply c1m on top of default"
    [ "$(cat /proc/sys/net/core/somaxconn)" = 65535 ] || die "c1m somaxconn not applied"
    run "$tune" revert --backup-dir "$backups"
    expect 0 "restored" "netns: revert c1m"
    [ "$(snapshot "$root")" = "$after" ] || die "revert of c1m did not return to the default profile"
    run "$tune" revert --backup "$first"
    expect 0 "restored 10 keys from $first" "netns: revert --backup FILE"
    [ "$(snapshot "$root")" = "$before" ] || die "revert --backup did not restore the originals"

    # A write the kernel rejects after other writes succeeded: everything written is rolled back.
    # tcp_mem links to tcp_tw_reuse here, which refuses a three-number value with EINVAL.
    bad="$work/bad"
    make_tree "$bad"
    rm "$bad/net/ipv4/tcp_mem"
    ln -s /proc/sys/net/ipv4/tcp_tw_reuse "$bad/net/ipv4/tcp_mem"
    bad_before="$(snapshot "$bad")"
    SYSCTL_ROOT=$bad run "$tune" apply --backup-dir "$work/bad-backups"
    expect 1 "every written key was rolled back, host unchanged" "netns: failed write rolls back"
    grep -q "writing '196608 262144 393216' to net.ipv4.tcp_mem failed" <<<"$out" || die "no write error: $out"
    grep -q "rolled back net.ipv4.tcp_fin_timeout = 60" <<<"$out" || die "no rollback line: $out"
    [ "$(snapshot "$bad")" = "$bad_before" ] || die "rollback left changes:"$'\n'"$(diff <(echo "$bad_before") <(snapshot "$bad"))"
    [ -z "$(find "$work/bad-backups" -name '*.conf' 2>/dev/null)" ] || die "failed apply left a backup"
    ok "netns: values unchanged and no backup after rollback"
    echo "$passed"
    exit 0
fi

# --- main -------------------------------------------------------------------------------------
work="$(mktemp -d)"
chmod 755 "$work" # the non-root runs below read the fake tree
trap 'rm -rf "$work"' EXIT
host_before="$(snapshot /proc/sys)"

echo "shellcheck"
if ! command -v shellcheck >/dev/null; then
    if [ "$EUID" -eq 0 ]; then
        apt-get install -y shellcheck >/dev/null 2>&1 ||
            { apt-get update >/dev/null && apt-get install -y shellcheck >/dev/null; }
    else
        printf '\n  !!! SKIPPING SHELLCHECK: not installed and not root (apt-get install shellcheck) !!!\n\n' >&2
    fi
fi
if command -v shellcheck >/dev/null; then
    shellcheck scripts/*.sh scripts/tune
    ok "shellcheck scripts/*.sh scripts/tune"
fi

echo "check on this host"
line_re='^(ok|below|missing|skip) +[a-z0-9_.-]+ +(-|[0-9][0-9 ]*) +(>=|<=|==|covers) +[0-9][0-9 ]*$'
for p in default c1m; do
    run "$tune" check --profile "$p"
    [ "$rc" -eq 0 ] || [ "$rc" -eq 1 ] || die "check --profile $p: exit $rc"$'\n'"$out"
    head -n 1 <<<"$out" | grep -qE '^STATUS +KEY +CURRENT +RULE +RECOMMENDED$' || die "check header: $out"
    body="$(sed -n '2,$p' <<<"$out" | grep -v '^tune: ')"
    [ "$(wc -l <<<"$body")" -eq "$(profile_keys "$p" | wc -l)" ] || die "check $p: one line per key expected"
    while IFS= read -r l; do [[ $l =~ $line_re ]] || die "check $p: bad line '$l'"; done <<<"$body"
    short="$(grep -cE '^(below|missing) ' <<<"$body" || true)"
    if [ "$short" -gt 0 ]; then [ "$rc" -eq 1 ] || die "check $p: $short short but exit 0"; else [ "$rc" -eq 0 ] || die "check $p: exit 1 with nothing short"; fi
    grep -qE "^tune: profile $p: [0-9]+ ok, $short below" <<<"$out" || die "check $p: summary"
    ok "check --profile $p: format, one line per key, exit $rc with $short short"
done

echo "errors"
run "$tune" check --profile nope
expect 2 "unknown profile 'nope' \(available: c1m default\)" "unknown profile is a usage error"
run "$tune" apply --profile ../sysctl/shardcast
expect 2 "unknown profile '../sysctl/shardcast'" "profile names cannot be paths"
run "$tune" frobnicate
expect 2 "unknown argument 'frobnicate'" "unknown argument"
run "$tune" check --dry-run
expect 2 "--dry-run applies to apply and revert only" "check has no --dry-run"

fake="$work/fake"
mkdir -p "$fake/fs" "$fake/net/core" "$fake/net/ipv4"
for key in $(profile_keys default); do
    [[ $key == net.netfilter.* ]] || echo 1 >"$fake/${key//.//}"
done
printf '1 2\n' >"$fake/net/ipv4/ip_local_port_range"
printf '1 2 3\n' | tee "$fake/net/ipv4/tcp_rmem" "$fake/net/ipv4/tcp_wmem" "$fake/net/ipv4/tcp_mem" >/dev/null
rm "$fake/net/core/rmem_max"
fake_before="$(snapshot "$fake")"
SYSCTL_ROOT=$fake run "$tune" apply --backup-dir "$work/fake-backups"
expect 1 "key does not exist under $fake, nothing was written: net.core.rmem_max" "missing required key fails before any write"
if [ "$(snapshot "$fake")" != "$fake_before" ] || [ -e "$work/fake-backups" ]; then die "missing key: something was written"; fi
SYSCTL_ROOT=$fake run "$tune" check
expect 1 "^missing +net.core.rmem_max +- " "check reports the missing key"

# A key that exists but is read-only (fs.file-nr is always 0444): refused before any write.
echo 1 >"$fake/net/core/rmem_max"
rm "$fake/fs/file-max"
ln -s /proc/sys/fs/file-nr "$fake/fs/file-max"
# (fs.file-nr itself changes as files open and close, so it is left out of the comparison.)
fake_before="$(snapshot "$fake" | grep -v '^fs.file-max=')"
SYSCTL_ROOT=$fake run "$tune" apply --backup-dir "$work/fake-backups"
expect 1 "not writable, nothing was written: fs.file-max \($fake/fs/file-max\)" "read-only key fails before any write"
if [ "$(snapshot "$fake" | grep -v '^fs.file-max=')" != "$fake_before" ] || [ -e "$work/fake-backups" ]; then die "read-only key: something was written"; fi

if [ "$EUID" -eq 0 ]; then
    nobody=(setpriv --reuid=65534 --regid=65534 --clear-groups)
    run "${nobody[@]}" "$tune" apply
    expect 3 "apply must run as root \(running as uid 65534\)" "apply as non-root is refused"
    run "${nobody[@]}" "$tune" revert
    expect 3 "revert must run as root" "revert as non-root is refused"
    run "${nobody[@]}" "$tune" check
    if [ "$rc" -gt 1 ] || ! grep -q '^STATUS' <<<"$out"; then die "check as non-root: exit $rc: $out"; fi
    ok "check works as non-root"
    SYSCTL_ROOT=$fake run "${nobody[@]}" "$tune" apply --dry-run
    expect 0 "would write" "apply --dry-run works as non-root"

    echo "apply / revert in a private network namespace"
    n="$(unshare -n "$0" --in-netns "$work" | tee /dev/stderr | tail -n 1)"
    passed=$((passed + n))
else
    printf '\n  !!! SKIPPING non-root and network-namespace tests: they need root !!!\n\n' >&2
fi

[ "$(snapshot /proc/sys)" = "$host_before" ] || die "host sysctls changed:"$'\n'"$(diff <(echo "$host_before") <(snapshot /proc/sys))"
ok "host sysctls unchanged"
echo "tune tests: $passed passed"
