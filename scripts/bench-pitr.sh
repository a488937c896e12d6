#!/usr/bin/env bash
# make bench: point-in-time restore, end to end, on loopback.
#   1. etcd with a Kubernetes-shaped keyspace (BENCH_PITR_DB_SIZE), a local S3 server (versitygw);
#   2. `etcdguard daemon --delta --delta-flush BENCH_PITR_FLUSH` takes the full snapshot and captures deltas;
#   3. a steady churn of BENCH_PITR_RATE writes/s for BENCH_PITR_DURATION, while the daemon's
#      etcdguard_delta_lag_seconds (the RPO) is sampled every 0.2 s: p50, p99, max (target p99 <= 2 s);
#   4. restore of the snapshot alone vs restore --revision to a point in the last delta segment
#      (target: at most 2x the plain restore), each under runstat (wall time, peak RSS), best of BENCH_RUNS;
#   5. the PITR member is started and checked against the source etcd read at that revision.
# Quick run: BENCH_PITR_DURATION=30s BENCH_PITR_DB_SIZE=16MiB scripts/bench-pitr.sh
set -euo pipefail

size="${BENCH_PITR_DB_SIZE:-64MiB}"
rate="${BENCH_PITR_RATE:-1000}"
duration="${BENCH_PITR_DURATION:-10m}"
flush="${BENCH_PITR_FLUSH:-1s}"
runs="${BENCH_RUNS:-1}"
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="$root/bin"
work="$root/build/bench-pitr"
rm -rf "$work"
mkdir -p "$work"

# shellcheck source=scripts/lib.sh
source "$root/scripts/lib.sh"
pids=()
etcd_pid=
daemon_pid=
sampler_pid=
check_pid=
cleanup() {
	local p
	for p in $sampler_pid $daemon_pid $check_pid "${pids[@]}" $etcd_pid; do kill "$p" 2>/dev/null || true; done
	wait 2>/dev/null || true
	rm -rf "$work/etcd" "$work/s3" "$work"/restored-* "$work/curl.cfg" "$work/stat" "$work/last.err" "$work/lag.sorted"
}
trap cleanup EXIT

start_etcd "$work/etcd" "$work/etcd.log" --quota-backend-bytes $((16 << 30))
endpoint="$etcd_endpoint"

start_versitygw "$work/s3" "$work/versitygw.log" pitr
pids+=("$versitygw_pid")

echo "loading $size into etcd..."
"$bin/loadgen" -endpoints "$endpoint" -size "$size"

export ETCDGUARD_S3_ENDPOINT="$s3url" ETCDGUARD_S3_PATH_STYLE=true
store=s3://pitr/etcd
eg=("$bin/etcdguard" --store "$store" --cluster bench --log-level warn)

# jfield FILE INDENT KEY: the values of "KEY" at exactly INDENT spaces in etcdguard's
# indented JSON (one field per line), without quotes.
jfield() {
	sed -n "s/^$(printf '%*s' "$2" '')\"$3\": \"\{0,1\}\([^\",]*\)\"\{0,1\},\{0,1\}\$/\1/p" "$1"
}
# revision ENDPOINT [ETCDCTL ARGS]: etcd's revision, and the key count with --count-only.
fields() { "$bin/etcdctl" --endpoints "$1" --command-timeout 10m get "" --prefix --count-only -w fields "${@:2}"; }
revision() { fields "$@" | awk '/"Revision"/ {print $3}'; }
count() { fields "$@" | awk '/"Count"/ {print $3}'; }
# metric NAME: the daemon's gauge, as an integer-safe number.
metric() { curl -s -m 2 "$metrics" | awk -v n="$1" '$1 == n || index($1, n "{") == 1 {printf "%.3f\n", $2}'; }

mport=$(free_port)
metrics="http://127.0.0.1:$mport/metrics"
echo "starting etcdguard daemon --delta --delta-flush $flush"
"$bin/etcdguard" daemon --cluster bench --store "$store" --endpoints "$endpoint" --schedule '@every 24h' \
	--election-ttl 5s --listen "127.0.0.1:$mport" --delta --delta-flush "$flush" >"$work/daemon.log" 2>&1 &
daemon_pid=$!
snap=
for _ in $(seq 600); do
	"${eg[@]}" snapshot list -o json >"$work/snapshots.json" 2>/dev/null || true
	snap=$(jfield "$work/snapshots.json" 4 id | awk 'NR == 1')
	[[ -n "$snap" ]] && break
	kill -0 "$daemon_pid" 2>/dev/null || break
	sleep 0.2
done
[[ -n "$snap" ]] || { echo "the daemon took no snapshot; its log:" >&2; tail -n 20 "$work/daemon.log" >&2; exit 1; }
snaprev=$(jfield "$work/snapshots.json" 4 revision | awk 'NR == 1')
echo "full snapshot $snap at revision $snaprev"

# The sampler: every 0.2 s on the clock (each scrape in the background, so a slow one
# does not stretch the interval), wall time, lag seconds, last stored revision, daemon RSS.
sample() {
	curl -s -m 1 "$metrics" | awk -v t="$EPOCHREALTIME" '
		index($1, "etcdguard_delta_lag_seconds{") == 1 {lag=$2}
		index($1, "etcdguard_delta_last_revision{") == 1 {rev=$2}
		$1 == "process_resident_memory_bytes" {rss=$2}
		END {if (lag != "") printf "%s %.6f %.0f %.0f\n", t, lag, rev, rss}'
}
usec() { echo "${EPOCHREALTIME//[^0-9]/}"; }
sampler() {
	local next d
	next=$(usec)
	while :; do
		sample &
		next=$((next + 200000))
		d=$((next - $(usec)))
		((d > 0)) && sleep "$(printf '0.%06d' "$d")"
	done
}
sampler >"$work/lag.txt" &
sampler_pid=$!

echo "churn: $rate writes/s for $duration"
"$bin/loadgen" -endpoints "$endpoint" -rate "$rate" -duration "$duration" | tee "$work/churn.txt"
kill "$sampler_pid" 2>/dev/null || true
wait "$sampler_pid" 2>/dev/null || true
sampler_pid=

# The writer is done: wait until the daemon has stored every revision.
etcdrev=$(revision "$endpoint")
echo "waiting for the daemon to store revision $etcdrev..."
t0=$(usec)
stored=0
while (($(usec) - t0 < 600000000)); do
	stored=$(metric etcdguard_delta_last_revision)
	stored=${stored%.*}
	[[ "${stored:-0}" -ge "$etcdrev" ]] && break
	kill -0 "$daemon_pid" 2>/dev/null || { echo "the daemon died; its log:" >&2; tail -n 20 "$work/daemon.log" >&2; exit 1; }
	sleep 0.2
done
drain=$(awk -v d="$(($(usec) - t0))" 'BEGIN{printf "%.1f", d/1e6}')
[[ "${stored:-0}" -ge "$etcdrev" ]] || { echo "the daemon stored revision ${stored:-none} of $etcdrev after ${drain}s" >&2; exit 1; }
daemon_cpu=$(metric process_cpu_seconds_total)
kill -TERM "$daemon_pid"
wait "$daemon_pid" || true
daemon_pid=

"${eg[@]}" timeline -o json >"$work/timeline.json"
"${eg[@]}" snapshot list -o json >"$work/snapshots.json"
read -r segments gaps < <(awk '
	/^      "kind"/ {k=$2}
	/^      "detail"/ {d=$2}
	/^    }/ {if (k ~ /deltas/) {gsub(/"/, "", d); s += d}; if (k ~ /gap/) g++; k=""; d=""}
	END {print s+0, g+0}' "$work/timeline.json")
lastrev=$(jfield "$work/timeline.json" 6 last_rev | tail -n 1)
[[ -n "$lastrev" ]] || { echo "timeline shows no restorable window:" >&2; cat "$work/timeline.json" >&2; exit 1; }
target=$((lastrev - 1))
echo "timeline: snapshot at $snaprev, deltas to $lastrev in $segments segment(s), $gaps gap(s); target revision $target"

# measure NAME CMD...: run CMD $runs times into a fresh data dir; keep the best wall
# time, the worst RSS, and the last run's JSON output and data dir.
declare -A wall rss cpu anon
measure() {
	local name="$1" dir="$2" i w r c a
	shift 2
	for i in $(seq "$runs"); do
		rm -rf "$dir"
		"$bin/runstat" "$work/stat" -- "$@" --data-dir "$dir" >"$work/$name.json" 2>"$work/last.err" ||
			{ echo "$name failed:" >&2; cat "$work/last.err" >&2; exit 1; }
		read -r w r _ c a <"$work/stat"
		if [[ -z "${wall[$name]:-}" ]] || awk "BEGIN{exit !($w < ${wall[$name]})}"; then wall[$name]=$w cpu[$name]=$c; fi
		if [[ -z "${rss[$name]:-}" ]] || ((r > ${rss[$name]})); then rss[$name]=$r; fi
		if [[ -z "${anon[$name]:-}" ]] || ((a > ${anon[$name]})); then anon[$name]=$a; fi
	done
}
pport=$(free_port)
member=(--name m1 --initial-cluster "m1=http://127.0.0.1:$pport" --initial-advertise-peer-urls "http://127.0.0.1:$pport" -o json)
echo "restoring: the snapshot alone, then to revision $target"
measure plain "$work/restored-plain" "${eg[@]}" restore --snapshot "$snap" "${member[@]}"
rm -rf "$work/restored-plain"
measure pitr "$work/restored-pitr" "${eg[@]}" restore --revision "$target" "${member[@]}"
replayed_revs=$(jfield "$work/pitr.json" 4 revisions_replayed)
replayed_events=$(jfield "$work/pitr.json" 4 events_replayed)
restored_rev=$(jfield "$work/pitr.json" 2 revision)
echo "PITR restore: replayed ${replayed_revs:-?} revisions (${replayed_events:-?} events) onto snapshot revision $snaprev: revision ${restored_rev:-?}"

# Start the PITR member and compare it with the source read at the target revision.
cport=$(free_port)
check="http://127.0.0.1:$cport"
"$bin/etcd" --name m1 --data-dir "$work/restored-pitr" --log-level error \
	--listen-client-urls "$check" --advertise-client-urls "$check" \
	--listen-peer-urls "http://127.0.0.1:$pport" --initial-advertise-peer-urls "http://127.0.0.1:$pport" \
	--initial-cluster "m1=http://127.0.0.1:$pport" >"$work/check-etcd.log" 2>&1 &
check_pid=$!
for _ in $(seq 300); do
	"$bin/etcdctl" --endpoints "$check" endpoint health >/dev/null 2>&1 && break
	kill -0 "$check_pid" 2>/dev/null || break
	sleep 0.2
done
# The revision first: a restored lease (the daemon's 5s election lease) that expires
# adds one. Keys and values are read at the target revision on both sides.
dst_rev=$(revision "$check" || true)
# kvs: every key, value, create and mod revision, version and lease id, as a digest.
kvs() {
	# -w fields is line by line, so this streams (a 1 GiB keyspace is one 1.5 GB line as JSON)
	"$bin/etcdctl" --endpoints "$1" --command-timeout 10m get "" --prefix -w fields --rev "$target" |
		grep -E '^"(Key|CreateRevision|ModRevision|Version|Value|Lease)"' | sha256sum | cut -c1-16
}
src_count=$(count "$endpoint" --rev "$target")
dst_count=$(count "$check" --rev "$target" || true)
src_kvs=$(kvs "$endpoint")
dst_kvs=$(kvs "$check" || true)
kill "$check_pid" 2>/dev/null || true
wait "$check_pid" 2>/dev/null || true
check_pid=
verdict=OK
[[ "$src_count" == "$dst_count" && "$dst_rev" == "$target" && "$src_kvs" == "$dst_kvs" ]] || verdict=MISMATCH

# The summary.
sort -g -k2 "$work/lag.txt" | awk '{print $2}' >"$work/lag.sorted"
nsamples=$(wc -l <"$work/lag.sorted")
q() { awk -v p="$1" -v n="$nsamples" 'NR == (int(p*n) == p*n ? p*n : int(p*n)+1) {printf "%.3f", $1}' "$work/lag.sorted"; }
lag50=$(q 0.5) lag99=$(q 0.99) lagmax=$(q 1)
daemon_rss=$(awk '$4 > m {m = $4} END {printf "%.1f", m/1048576}' "$work/lag.txt")
writes=$(sed -n 's/.*: \([0-9]*\) writes in.*/\1/p' "$work/churn.txt")
wrate=$(sed -n 's/.* \([0-9.]*\) writes\/s.*/\1/p' "$work/churn.txt")
errors=$(sed -n 's/.*; \([0-9]*\) errors.*/\1/p' "$work/churn.txt")
ratio=$(awk -v a="${wall[pitr]}" -v b="${wall[plain]}" 'BEGIN{printf "%.2f", a/b}')
pass() { awk -v v="$1" -v t="$2" 'BEGIN{print (v <= t ? "ok" : "MISSED")}'; }

printf '\nPITR: DB %s initial + churn at %s writes/s for %s, --delta-flush %s, %s run(s) each, %s cores\n' \
	"$size" "$rate" "$duration" "$flush" "$runs" "$(nproc)"
printf '%-36s %s\n' "writes achieved" "$wrate writes/s ($writes writes, $errors errors)"
printf '%-36s %s\n' "revisions captured" "$((lastrev - snaprev)) (revisions $((snaprev + 1))..$lastrev) in $segments segment(s), $gaps gap(s)"
printf '%-36s %s\n' "delta lag (RPO), $nsamples x 0.2s" "p50 ${lag50}s  p99 ${lag99}s  max ${lagmax}s  (target p99 <= 2s: $(pass "$lag99" 2))"
printf '%-36s %s\n' "daemon" "peak RSS ${daemon_rss} MiB, ${daemon_cpu:-?} CPU s; stored the last revision ${drain}s after the writer stopped"
printf '\n%-36s %8s %13s %10s %8s\n' "restore (one member, from S3)" "wall s" "peak RSS MiB" "anon MiB" "CPU s"
for name in plain pitr; do
	label="snapshot $snap"
	[[ $name == pitr ]] && label="--revision $target (+$((target - snaprev)) revs)"
	awk -v n="$label" -v w="${wall[$name]}" -v r="${rss[$name]}" -v c="${cpu[$name]}" -v a="${anon[$name]}" \
		'BEGIN{printf "%-36s %8.2f %13.1f %10.1f %8.2f\n", n, w, r/1024, a/1024, c}'
done
printf '%-36s %s\n' "PITR / plain" "${ratio}x (target <= 2: $(pass "$ratio" 2))"
printf '%-36s %s\n' "replayed" "${replayed_revs:-?} revisions, ${replayed_events:-?} events"
printf '\ncheck: PITR member at revision %s with %s keys (digest %s); source at revision %s: %s keys (digest %s): %s\n' \
	"${dst_rev:-?}" "${dst_count:-?}" "${dst_kvs:-?}" "$target" "$src_count" "$src_kvs" "$verdict"
[[ $verdict == OK ]]
