#!/usr/bin/env bash
# Writes docs/compatibility.md from a test run: the etcd server versions and what passed
# against each (TestE2EEtcdVersions), the Kubernetes API server the e2e tests run
# (TestE2EKube*), and the S3 servers the store suite passes against. Nothing in it is
# typed by hand; a failing test leaves the file as it was.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
export ETCDGUARD_BIN_DIR="$root/bin"
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT

ETCDGUARD_COMPAT_REPORT="$tmp/etcd.md" go test -count=1 -run '^TestE2EEtcdVersions$' ./cmd/etcdguard/ >"$tmp/etcd.log"
go test -count=1 -v -run '^(TestE2EKube|TestE2ERunbook$)' ./cmd/etcdguard/ >"$tmp/kube.log"
go test -count=1 -v -run '^TestSuite$' ./store/... >"$tmp/s3.log"

k8s=$(awk '$1 == "k8s.io/kubernetes" && $2 ~ /^v/ {print $2; exit} $1 == "require" && $2 == "k8s.io/kubernetes" {print $3; exit}' internal/tools/kubernetes/go.mod)
{
	echo "# Compatibility"
	echo
	echo "Produced by \`make compat\` (scripts/compat.sh) from a test run on $(date -u +%Y-%m-%d); do not edit by hand."
	echo
	echo "## etcd servers"
	echo
	cat "$tmp/etcd.md"
	echo
	echo "## Kubernetes"
	echo
	echo "kube-apiserver $k8s (built from k8s.io/kubernetes), on etcd with client TLS in kubeadm's layout, \`--etcd-prefix /registry-kube-1\`:"
	echo
	grep -E '^--- (PASS|FAIL): TestE2EKube' "$tmp/kube.log" | sed -E 's/^--- (PASS|FAIL): (TestE2EKube[A-Za-z]*) .*/- \2: \1/'
	echo
	echo "deploy/runbooks/restore.md followed block by block on three simulated kubeadm masters (etcd $(bin/etcd-3.6 --version | awk '/etcd Version/ {print $3}'), peer and client TLS, a kube-apiserver and the etcdguard daemon as static pods):"
	echo
	grep -E '^--- (PASS|FAIL): TestE2ERunbook ' "$tmp/kube.log" | sed -E 's/^--- (PASS|FAIL): (TestE2ERunbook) .*/- \2: \1/'
	echo
	echo "## S3 servers"
	echo
	echo "The store suite (every store operation, multipart uploads, listings, clean-up):"
	echo
	grep -E '^    --- (PASS|FAIL): TestSuite/[a-z0-9]+ ' "$tmp/s3.log" | sed -E 's/^    --- (PASS|FAIL): TestSuite\/([a-z0-9]+) .*/- \2: \1/' | sort -u
} >docs/compatibility.md
echo "wrote docs/compatibility.md"
