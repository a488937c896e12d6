#!/usr/bin/env bash
# make demo: start a real etcd (built from its Go module) on loopback, load a
# Kubernetes-shaped keyspace, save a snapshot into a file:// store under build/demo,
# list, verify and restore it, guard a delete, undo an unguarded one with a
# point-in-time restore, and stop everything it started.
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="$root/bin"
demo="$root/build/demo"
rm -rf "$demo"
mkdir -p "$demo"

# shellcheck source=scripts/lib.sh
source "$root/scripts/lib.sh"
store="file://$demo/store"

etcd_pid=
daemon_pid=
restored_pids=()
cleanup() {
	local p
	[[ -n "$daemon_pid" ]] && kill "$daemon_pid" 2>/dev/null && wait "$daemon_pid" 2>/dev/null
	for p in $etcd_pid "${restored_pids[@]}"; do
		if kill -0 "$p" 2>/dev/null; then
			kill "$p" && wait "$p" 2>/dev/null || true
			echo "==> stopped etcd (pid $p)"
		fi
	done
}
trap cleanup EXIT

step() { printf '\n==> %s\n' "$*"; }
run() { printf '$ %s\n' "$*" | sed "s#$root/##g"; "$@"; }

# No `| head` under pipefail: a reader that exits early kills the writer with SIGPIPE and
# the script with exit 141. awk reads everything and prints what is wanted.
step "starting etcd $("$bin/etcd" --version | awk 'NR == 1 {print $3}') on loopback (data in build/demo/etcd)"
start_etcd "$demo/etcd" "$demo/etcd.log"
endpoint="$etcd_endpoint"
echo "etcd is serving at $endpoint"

step "loading a Kubernetes-shaped keyspace"
run "$bin/loadgen" -endpoints "$endpoint" -keys 5000

export ETCDGUARD_ENDPOINTS="$endpoint" ETCDGUARD_STORE="$store" ETCDGUARD_CLUSTER=demo

step "saving a snapshot (etcd -> sha256 -> zstd -> store, no temp file)"
run "$bin/etcdguard" snapshot save

step "a second snapshot, gzip this time, as JSON"
run "$bin/etcdguard" snapshot save --compression gzip -o json --log-level warn

step "listing snapshots, newest first"
run "$bin/etcdguard" snapshot list

step "verifying the newest: download, decompress, sha256, etcd's trailer, revision"
run "$bin/etcdguard" snapshot verify latest

step "retention: what prune would delete with --keep-last 1 (it never deletes the newest verified snapshot)"
run "$bin/etcdguard" snapshot prune --keep-last 1 --keep-hourly 0 --keep-daily 0 --keep-weekly 0 --dry-run

step "what etcdctl and etcdutl say about the same data"
"$bin/etcdctl" --endpoints "$endpoint" snapshot save "$demo/etcdctl.db" >/dev/null 2>&1
run "$bin/etcdutl" snapshot status "$demo/etcdctl.db" -w table

step "restoring the newest snapshot into a fresh 3-member cluster under build/demo/restored"
declare -a cports pports
ic=""
for i in 0 1 2; do
	cports[i]=$(free_port)
	pports[i]=$(free_port)
	ic+="${ic:+,}r$i=http://127.0.0.1:${pports[i]}"
done
run "$bin/etcdguard" restore --snapshot latest --all-members --data-dir "$demo/restored" \
	--initial-cluster "$ic" --initial-cluster-token etcdguard-demo-restore

step "starting the 3 restored members as real etcd processes"
for i in 0 1 2; do
	"$bin/etcd" --name "r$i" --data-dir "$demo/restored/r$i.etcd" --log-level error \
		--listen-client-urls "http://127.0.0.1:${cports[i]}" --advertise-client-urls "http://127.0.0.1:${cports[i]}" \
		--listen-peer-urls "http://127.0.0.1:${pports[i]}" --initial-advertise-peer-urls "http://127.0.0.1:${pports[i]}" \
		--initial-cluster "$ic" --initial-cluster-token etcdguard-demo-restore --initial-cluster-state new \
		>"$demo/restored/r$i.log" 2>&1 &
	restored_pids+=($!)
done
restored="http://127.0.0.1:${cports[0]},http://127.0.0.1:${cports[1]},http://127.0.0.1:${cports[2]}"
for _ in $(seq 150); do
	"$bin/etcdctl" --endpoints "$restored" endpoint health >/dev/null 2>&1 && break
	sleep 0.2
done
run "$bin/etcdctl" --endpoints "$restored" endpoint status -w table

step "reading the keys back: the restored cluster has what the source had"
count() { "$bin/etcdctl" --endpoints "$1" get /registry --prefix --count-only -w fields | awk '/"Count"/ {print $3}'; }
src_count=$(count "$endpoint")
dst_count=$(count "$restored")
key=$("$bin/etcdctl" --endpoints "$endpoint" get /registry/namespaces --prefix --keys-only --limit 1 | awk 'NR == 1')
echo "source: $src_count keys; restored: $dst_count keys"
if [[ "$src_count" != "$dst_count" ]] || ! cmp -s <("$bin/etcdctl" --endpoints "$endpoint" get "$key") <("$bin/etcdctl" --endpoints "$restored" get "$key"); then
	echo "the restored cluster differs from the source" >&2
	exit 1
fi
echo "$key reads the same on both"

step "the outage's command, guarded: etcdctl reads \`del KEY prefix\` as the range [KEY, \"prefix\")"
"$bin/loadgen" -endpoints "$endpoint" -keys 2000 -prefix /registry-kube-1 >/dev/null
run "$bin/etcdguard" del /registry-kube-1/certificatesigningrequest prefix || true
run "$bin/etcdguard" del /registry-kube-1/certificatesigningrequest prefix --dry-run --log-level warn
echo "(nothing was deleted; the plan and an audit record are in the store under demo/guard/)"

step "point-in-time restore: the daemon captures every change between snapshots (--delta)"
mport=$(free_port)
daemon=("$bin/etcdguard" daemon --schedule "@every 1h" --election-ttl 5s --listen "127.0.0.1:$mport" --delta --delta-flush 500ms --log-level warn)
printf '$ %s &\n' "${daemon[*]}" | sed "s#$root/##g"
"${daemon[@]}" >"$demo/daemon.log" 2>&1 &
daemon_pid=$!
etcd_rev() { "$bin/etcdctl" --endpoints "$endpoint" endpoint status -w json | sed 's/.*"revision":\([0-9]*\).*/\1/'; }
# wait_captured: until the daemon has stored every revision etcd has
wait_captured() {
	local want got
	want=$(etcd_rev)
	for _ in $(seq 150); do
		got=$(curl -s "http://127.0.0.1:$mport/metrics" | awk '/^etcdguard_delta_last_revision/ {printf "%d", $2}')
		[[ "${got:-0}" -ge "$want" ]] && return 0
		sleep 0.2
	done
	echo "the daemon did not capture revision $want; its log:" >&2
	tail -n 20 "$demo/daemon.log" >&2
	return 1
}
run "$bin/loadgen" -endpoints "$endpoint" -rate 300 -duration 3s
wait_captured
sleep 1.1
at=$(date -u +%Y-%m-%dT%H:%M:%SZ)
sleep 1.1
before=$(etcd_rev)
echo "at $at etcd is at revision $before"

step "the outage, unguarded: every pod deleted with etcdctl"
run "$bin/etcdctl" --endpoints "$endpoint" del /registry/pods/ --prefix
wait_captured
kill "$daemon_pid" && wait "$daemon_pid" 2>/dev/null || true
daemon_pid=
run "$bin/etcdguard" timeline

step "restore --at $at: exactly the state before the delete, into a fresh member"
pcport=$(free_port)
ppport=$(free_port)
run "$bin/etcdguard" restore --at "$at" --name pitr --initial-cluster "pitr=http://127.0.0.1:$ppport" --data-dir "$demo/pitr.etcd"
"$bin/etcd" --name pitr --data-dir "$demo/pitr.etcd" --log-level error \
	--listen-client-urls "http://127.0.0.1:$pcport" --advertise-client-urls "http://127.0.0.1:$pcport" \
	--listen-peer-urls "http://127.0.0.1:$ppport" --initial-advertise-peer-urls "http://127.0.0.1:$ppport" \
	--initial-cluster "pitr=http://127.0.0.1:$ppport" --initial-cluster-state new >"$demo/pitr.log" 2>&1 &
restored_pids+=($!)
for _ in $(seq 150); do
	"$bin/etcdctl" --endpoints "http://127.0.0.1:$pcport" endpoint health >/dev/null 2>&1 && break
	sleep 0.2
done
pods() { "$bin/etcdctl" --endpoints "$1" get /registry/pods/ --prefix --count-only -w fields "${@:2}" | awk '/"Count"/ {print $3}'; }
src_pods=$(pods "$endpoint" --rev "$before")
dst_pods=$(pods "http://127.0.0.1:$pcport")
echo "pods in the source at revision $before: $src_pods; now: $(pods "$endpoint"); in the restored member: $dst_pods"
if [[ "$src_pods" != "$dst_pods" || "$dst_pods" -eq 0 ]]; then
	echo "point-in-time restore did not bring the pods back" >&2
	exit 1
fi

step "a bad --store is refused with one line"
"$bin/etcdguard" snapshot list --store "s4://nowhere" || true

step "the store's layout"
(cd "$demo/store" && find . -type f | sort)
printf '\ndemo done: everything is under build/demo; etcd is stopped on exit.\n'
