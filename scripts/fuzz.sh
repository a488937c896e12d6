#!/usr/bin/env bash
# Runs each fuzz target for FUZZTIME: scripts/fuzz.sh FUZZTIME PKG:Target...
# Every target runs, even after one fails; the script fails if any did, and prints each
# input a failing run wrote to the package's testdata/fuzz/Target/ (go test only names the
# file), so the input is in the log of a CI run whose checkout is gone: commit it there and
# `go test` replays it from then on.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
fuzztime=$1
shift
# How long go test minimizes each new input, interesting or failing: by default up to 60s
# each, which for a target that runs etcd (FuzzPlan: a plan made and confirmed per execution)
# is most of a brief run; a count, as for -fuzztime.
minimize=${FUZZ_MINIMIZE:-200x}
failed=()
for target in "$@"; do
	pkg=${target%%:*} name=${target##*:}
	dir="$pkg/testdata/fuzz/$name"
	before=$(ls "$dir" 2>/dev/null)
	start=$(date +%s)
	if go test -run '^$' -fuzz "^$name\$" -fuzztime "$fuzztime" -fuzzminimizetime "$minimize" "./$pkg/"; then
		echo "fuzz $name: $fuzztime in $(($(date +%s) - start))s"
		continue
	fi
	failed+=("$name")
	for f in "$dir"/*; do
		[ -f "$f" ] || continue
		if ! grep -qxF "$(basename "$f")" <<<"$before"; then
			echo "--- new failing input for $name, $f:"
			cat "$f"
		fi
	done
done
if [ ${#failed[@]} -gt 0 ]; then
	echo "fuzzing failed: ${failed[*]}" >&2
	exit 1
fi
