#!/usr/bin/env bash
# make demo: start a real etcd (built from its Go module) on loopback, load a
# Kubernetes-shaped keyspace, save a snapshot into a file:// store under build/demo,
# list and verify it, and stop everything it started.
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
cleanup() {
	if [[ -n "$etcd_pid" ]] && kill -0 "$etcd_pid" 2>/dev/null; then
		kill "$etcd_pid" && wait "$etcd_pid" 2>/dev/null || true
		echo "==> stopped etcd (pid $etcd_pid)"
	fi
}
trap cleanup EXIT

step() { printf '\n==> %s\n' "$*"; }
run() { printf '$ %s\n' "$*" | sed "s#$root/##g"; "$@"; }

step "starting etcd $("$bin/etcd" --version | head -1 | awk '{print $3}') on loopback (data in build/demo/etcd)"
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

step "what etcdctl and etcdutl say about the same data"
"$bin/etcdctl" --endpoints "$endpoint" snapshot save "$demo/etcdctl.db" >/dev/null 2>&1
run "$bin/etcdutl" snapshot status "$demo/etcdctl.db" -w table

step "a bad --store is refused with one line"
"$bin/etcdguard" snapshot list --store "s4://nowhere" || true

step "the store's layout"
(cd "$demo/store" && find . -type f | sort)
printf '\ndemo done: everything is under build/demo; etcd is stopped on exit.\n'
