#!/usr/bin/env bash
# make bench (guard part): `etcdguard del --dry-run` over BENCH_GUARD_KEYS keys (default
# 1,000,000) against `etcdctl get` of the same range to /dev/null, in one run.
set -euo pipefail

keys="${BENCH_GUARD_KEYS:-1000000}"
runs="${BENCH_RUNS:-2}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="$root/bin"
work="$root/build/bench-guard"
rm -rf "$work"
mkdir -p "$work"
# shellcheck source=scripts/lib.sh
source "$root/scripts/lib.sh"
trap 'kill ${etcd_pid:-} 2>/dev/null || true; wait 2>/dev/null || true; rm -rf "$work/etcd" "$work/store"' EXIT

start_etcd "$work/etcd" "$work/etcd.log" --quota-backend-bytes $((8 << 30))
echo "loading $keys keys..."
"$bin/loadgen" -endpoints "$etcd_endpoint" -keys "$keys" -value-size 128 -concurrency 16

best() { # NAME CMD...: best wall time and worst RSS of $runs runs, printed as a row
	local name="$1" w r bw= br=0
	shift
	for _ in $(seq "$runs"); do
		"$bin/runstat" "$work/stat" -- bash -c '"$@" >/dev/null' _ "$@"
		read -r w r _ <"$work/stat"
		if [[ -z "$bw" ]] || awk "BEGIN{exit !($w < $bw)}"; then bw=$w; fi
		((r > br)) && br=$r
	done
	echo "$name $bw $br"
}
{
	best etcdctl "$bin/etcdctl" --endpoints "$etcd_endpoint" --command-timeout 600s get /registry --prefix
	best dry-run "$bin/etcdguard" --endpoints "$etcd_endpoint" --store "file://$work/store" --log-level warn \
		del /registry --prefix --dry-run -o json
} >"$work/results"
base=$(awk '$1=="etcdctl"{print $2}' "$work/results")
printf '\n%d keys under /registry, %s run(s) each\n%-44s %8s %10s %13s\n' "$keys" "$runs" "" "wall s" "x etcdctl" "peak RSS MiB"
awk -v b="$base" '{n=($1=="etcdctl")?"etcdctl get /registry --prefix":"etcdguard del /registry --prefix --dry-run"; printf "%-44s %8.2f %10.2f %13.1f\n", n, $2, $2/b, $3/1024}' "$work/results"
