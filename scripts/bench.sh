#!/usr/bin/env bash
# make bench: on one generated etcd DB, in one run, compare
#   etcdctl snapshot save to local disk            (the baseline)
#   etcdguard snapshot save to the file:// store
#   etcdguard snapshot save to a local S3 server   (versitygw)
#   naive: etcdctl snapshot save + zstd + upload   (what a cron script does)
# and print wall times, ratios and peak RSS. BENCH_DB_SIZE=1GiB for the large run,
# BENCH_RUNS=N repetitions (best wall time, worst RSS are reported).
set -euo pipefail

size="${BENCH_DB_SIZE:-256MiB}"
runs="${BENCH_RUNS:-2}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="$root/bin"
work="$root/build/bench"
rm -rf "$work"
mkdir -p "$work"

# shellcheck source=scripts/lib.sh
source "$root/scripts/lib.sh"
pids=()
cleanup() {
	for p in "${pids[@]}" ${etcd_pid:-}; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$work/etcd" "$work/s3" "$work"/*.db "$work"/*.zst "$work/store"
}
trap cleanup EXIT

start_etcd "$work/etcd" "$work/etcd.log" --quota-backend-bytes $((16 << 30))
endpoint="$etcd_endpoint"
start_versitygw "$work/s3" "$work/versitygw.log" bench
pids+=("$versitygw_pid")

echo "loading $size into etcd..."
"$bin/loadgen" -endpoints "$endpoint" -size "$size" -value-size 4KiB
"$bin/etcdctl" --endpoints "$endpoint" endpoint status -w table

export ETCDGUARD_ENDPOINTS="$endpoint" ETCDGUARD_CLUSTER=bench ETCDGUARD_LOG_LEVEL=warn
export ETCDGUARD_S3_ENDPOINT="$s3url" ETCDGUARD_S3_PATH_STYLE=true

# measure NAME CMD...: run CMD $runs times; keep the best wall time and the worst RSS.
declare -A wall rss cpu anon
measure() {
	local name="$1" i w r c a
	shift
	for i in $(seq "$runs"); do
		"$bin/runstat" "$work/stat" -- "$@" >/dev/null 2>"$work/last.err" || { cat "$work/last.err" >&2; exit 1; }
		read -r w r _ c a <"$work/stat"
		if [[ -z "${wall[$name]:-}" ]] || awk "BEGIN{exit !($w < ${wall[$name]})}"; then wall[$name]=$w cpu[$name]=$c; fi
		if [[ -z "${rss[$name]:-}" ]] || ((r > ${rss[$name]})); then rss[$name]=$r; fi
		if [[ -z "${anon[$name]:-}" ]] || ((a > ${anon[$name]})); then anon[$name]=$a; fi
		rm -rf "$work"/*.db "$work"/*.zst "$work"/restored-*
	done
}
naive() {
	"$bin/etcdctl" --endpoints "$endpoint" snapshot save "$work/naive.db" >/dev/null 2>&1
	zstd -q -T0 "$work/naive.db" -o "$work/naive.db.zst"
	curl -K "$curlcfg" -T "$work/naive.db.zst" "$s3url/bench/naive/naive.db.zst"
}

measure "etcdctl snapshot save (disk)" "$bin/etcdctl" --endpoints "$endpoint" snapshot save "$work/etcdctl.db"
measure "etcdguard -> file, zstd" "$bin/etcdguard" snapshot save --store "file://$work/store"
measure "etcdguard -> file, none" "$bin/etcdguard" snapshot save --store "file://$work/store" --compression none
measure "etcdguard -> S3, zstd" "$bin/etcdguard" snapshot save --store s3://bench/etcd
measure "etcdguard -> S3, none" "$bin/etcdguard" snapshot save --store s3://bench/etcd --compression none
measure "etcdguard -> S3, zstd default" "$bin/etcdguard" snapshot save --store s3://bench/etcd --level default
if command -v zstd >/dev/null; then
	export -f naive
	export bin endpoint work curlcfg s3url
	measure "naive: etcdctl + zstd + upload" bash -c naive
else
	echo "zstd not installed (apt-get install zstd): skipping the naive pipeline"
fi

# Restore: etcdguard from the S3 server (download, decompress, verify, etcd's restore
# library) against etcdutl restoring the same data from a file already on local disk.
"$bin/etcdctl" --endpoints "$endpoint" snapshot save "$work/local.snap" >/dev/null 2>&1
member=(--name r0 --initial-cluster r0=http://127.0.0.1:2380)
measure "etcdutl snapshot restore (disk)" "$bin/etcdutl" snapshot restore "$work/local.snap" "${member[@]}" \
	--initial-advertise-peer-urls http://127.0.0.1:2380 --data-dir "$work/restored-etcdutl"
measure "etcdguard restore (S3, zstd)" "$bin/etcdguard" restore --store s3://bench/etcd --snapshot latest "${member[@]}" \
	--data-dir "$work/restored-etcdguard"
rm -f "$work/local.snap"

dbsize=$("$bin/etcdguard" snapshot list --store s3://bench/etcd -o json | sed -n 's/.*"db_size": \([0-9]*\).*/\1/p' | awk 'NR == 1')
base=${wall["etcdctl snapshot save (disk)"]}
printf '\nDB %s (%d MiB raw), %s run(s) each, 2 cores; S3 part size 16 MiB, concurrency 2\n' "$size" $((dbsize >> 20)) "$runs"
printf '%-34s %8s %8s %10s %13s %13s\n' "pipeline (client process)" "wall s" "MiB/s" "x etcdctl" "peak RSS MiB" "client CPU s"
for name in "etcdctl snapshot save (disk)" "etcdguard -> file, zstd" "etcdguard -> file, none" "etcdguard -> S3, zstd" \
	"etcdguard -> S3, none" "etcdguard -> S3, zstd default" "naive: etcdctl + zstd + upload"; do
	[[ -n "${wall[$name]:-}" ]] || continue
	awk -v n="$name" -v w="${wall[$name]}" -v b="$base" -v r="${rss[$name]}" -v s="$dbsize" -v c="${cpu[$name]}" \
		'BEGIN{printf "%-34s %8.2f %8.1f %10.2f %13.1f %13.2f\n", n, w, s/1048576/w, w/b, r/1024, c}'
done
echo "(zstd is --level fastest, etcdguard's default; etcd and versitygw run on the same 2 cores)"
printf '\n%-34s %8s %10s %13s %13s %10s\n' "restore (one member)" "wall s" "x etcdutl" "peak RSS MiB" "anon MiB" "CPU s"
rbase=${wall["etcdutl snapshot restore (disk)"]}
for name in "etcdutl snapshot restore (disk)" "etcdguard restore (S3, zstd)"; do
	awk -v n="$name" -v w="${wall[$name]}" -v b="$rbase" -v r="${rss[$name]}" -v c="${cpu[$name]}" -v a="${anon[$name]}" \
		'BEGIN{printf "%-34s %8.2f %10.2f %13.1f %13.1f %10.2f\n", n, w, w/b, r/1024, a/1024, c}'
done
echo "(peak RSS counts the DB pages etcd's restore library maps; anon is the memory the process allocates)"
