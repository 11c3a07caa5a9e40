#!/usr/bin/env bash
# Raw benchmark output stays out of git: bench/results/ is git-ignored and holds no tracked file,
# and every benchmark script that writes a results directory defaults to one under it (summaries,
# tables and plots belong in docs/).
#   scripts/check-bench-output.sh
set -euo pipefail
cd "$(dirname "$0")/.."

# shellcheck source=scripts/testlib.sh
. scripts/testlib.sh

git check-ignore -q bench/results/any-run/run.json || die "bench/results/ is not git-ignored"
ok "bench/results/ is git-ignored"
tracked="$(git ls-files bench/results)"
[ -z "$tracked" ] || die "tracked raw output under bench/results/:"$'\n'"$tracked"
ok "no tracked file under bench/results/"
while read -r script; do
    line="$(grep -m1 '^OUT=' "$script")"
    case "$line" in
    *'bench/results/'*) ok "$script writes to bench/results/" ;;
    *) die "$script writes its results elsewhere: $line" ;;
    esac
done < <(grep -l '^OUT=' scripts/*)
echo "bench output: $passed checks passed"
