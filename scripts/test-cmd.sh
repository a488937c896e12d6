#!/usr/bin/env bash
# make test (cmd/etcdguard part): runs the package's tests in SHARDS processes at once,
# each a share of its top-level tests, round robin in source order. They run etcdguard,
# etcd and S3 servers in subprocesses and mostly wait on them, so on two cores two shards
# take little more than half the time of one process. Each shard's output is printed
# whole when it ends; the script fails if any shard did.
#   scripts/test-cmd.sh SHARDS GO-TEST-FLAGS...   (environment: as for go test;
#   CMD_TESTS=REGEX runs only the top-level tests it matches)
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
shards=$1
shift
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
go test -c -o "$work/cmd.test" ./cmd/etcdguard/ || exit 1
# Each shard's TestMain builds the etcdguard it runs (raced with ETCDGUARD_RACE_BIN=1):
# built once here, the shards' builds come from the cache.
if [ "${ETCDGUARD_RACE_BIN:-}" = 1 ]; then race=-race; else race=; fi
go build $race -o "$work/etcdguard" ./cmd/etcdguard || exit 1
# Listing runs TestMain (it builds etcdguard): a listing that fails or finds nothing must
# fail here, or every shard would pass running no test.
(cd "$root/cmd/etcdguard" && "$work/cmd.test" -test.list '.*') >"$work/list" || { cat "$work/list"; exit 1; }
mapfile -t tests < <(grep -E '^(Test|Fuzz|Example)' "$work/list" | grep -E "${CMD_TESTS:-.}")
if [ ${#tests[@]} -eq 0 ]; then
	echo "scripts/test-cmd.sh: no test of cmd/etcdguard to run (CMD_TESTS=${CMD_TESTS:-})" >&2
	exit 1
fi
# go test flags as the test binary takes them: -count=1 -> -test.count=1 (a -run among them
# is overridden by each shard's; CMD_TESTS chooses tests). -test.paniconexit0, which go
# test adds, makes a test that calls os.Exit(0) fail instead of ending its shard "passed".
flags=(-test.paniconexit0)
for f in "$@"; do
	case $f in -*) flags+=("-test.${f#-}") ;; *) flags+=("$f") ;; esac
done
pids=()
for ((s = 0; s < shards; s++)); do
	names=()
	for ((i = s; i < ${#tests[@]}; i += shards)); do names+=("${tests[i]}"); done
	run="^($(IFS='|'; echo "${names[*]}"))\$"
	(cd "$root/cmd/etcdguard" && "$work/cmd.test" "${flags[@]}" -test.run "$run") >"$work/shard$s.log" 2>&1 &
	pids+=($!)
done
failed=0
for ((s = 0; s < shards; s++)); do
	wait "${pids[s]}" || failed=1
	echo "=== cmd/etcdguard shard $((s + 1))/$shards:"
	cat "$work/shard$s.log"
done
exit $failed
