#!/usr/bin/env bash
# Builds the real servers and tools the tests, demo and benchmarks run into
# <repo>/bin. Each is rebuilt only when missing or older than what it is built
# from, so running this before every test run costs nothing.
set -euo pipefail

VERSITYGW_VERSION=v1.8.0
MINIO_VERSION=v0.0.0-20260212201848-7aac2a2c5b7c # the newest the module proxy serves
PROMETHEUS_VERSION=v0.316.0 # promtool; the newest the module proxy serves

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bin="$root/bin"
cd "$root"
mkdir -p "$bin"
built=0

# stale BINARY DEP...: true if BINARY is missing or any DEP is newer.
stale() {
	local out="$1"
	shift
	[[ -e "$out" ]] || return 0
	local dep
	for dep in "$@"; do
		[[ "$dep" -nt "$out" ]] && return 0
	done
	return 1
}

# build NAME GO-BUILD-TARGET DEP...
build() {
	local name="$1" target="$2"
	shift 2
	if stale "$bin/$name" "$@"; then
		local t0=$SECONDS
		go build -o "$bin/$name" "$target"
		# go build leaves the file untouched when nothing changed; bump it
		# so the next run sees it as newer than its deps.
		touch "$bin/$name"
		echo "built bin/$name ($((SECONDS - t0))s)"
		built=$((built + 1))
	fi
}

build etcd ./internal/tools/etcd go.mod go.sum internal/tools/etcd/*.go
build etcdctl go.etcd.io/etcd/etcdctl/v3 go.mod go.sum
build etcdutl go.etcd.io/etcd/etcdutl/v3 go.mod go.sum
build loadgen ./internal/tools/loadgen go.mod go.sum internal/loadgen/*.go internal/tools/loadgen/*.go

# build_module NAME DIR [PKG]: a binary from a module of its own in DIR, whose versions (and
# replace lines) must not leak into ours.
build_module() {
	local name="$1" dir="$2" pkg="${3:-.}"
	if stale "$bin/$name" "$dir"/go.mod "$dir"/go.sum "$dir/$pkg"/*.go; then
		local t0=$SECONDS
		(cd "$dir" && go build -o "$bin/$name" "./$pkg")
		touch "$bin/$name"
		echo "built bin/$name ($((SECONDS - t0))s)"
		built=$((built + 1))
	fi
}

# The etcd servers users run, beside the one in our go.mod.
build_module etcd-3.5 internal/tools/etcd-3.5
build_module etcd-3.6 internal/tools/etcd-3.6
# The benchmark driver (make bench): a module of its own so that its plotting library
# (gonum.org/v1/plot) stays out of etcdguard's go.mod.
build_module perf internal/tools/perf
# The real Kubernetes API server from k8s.io/kubernetes (it pins every k8s.io staging
# module with replace lines); the first build takes about five minutes on 2 cores.
build_module kube-apiserver internal/tools/kubernetes kube-apiserver
# kubectl from the same module, for the runbook test's kubectl commands (about 30 s more).
build_module kubectl internal/tools/kubernetes kubectl

# go_install NAME MODULE PACKAGE VERSION: an S3 server from the module proxy. It does not
# come from our go.mod, so it is keyed on its version, which go records in the binary (read
# whole into a variable: `go version -m | grep -q` can die of SIGPIPE under pipefail).
go_install() {
	local name="$1" module="$2" pkg="$3" version="$4" info
	info=$(go version -m "$bin/$name" 2>/dev/null || true)
	if [[ ! "$info" =~ mod[[:space:]]+$module[[:space:]]+$version[[:space:]] ]]; then
		local t0=$SECONDS
		GOBIN="$bin" go install "$pkg@$version"
		echo "built bin/$name $version ($((SECONDS - t0))s)"
		built=$((built + 1))
	fi
}
go_install versitygw github.com/versity/versitygw github.com/versity/versitygw/cmd/versitygw "$VERSITYGW_VERSION" # about 2 minutes
go_install minio github.com/minio/minio github.com/minio/minio "$MINIO_VERSION"                                   # about 2 minutes
# Alertmanager for the alert client's test: v0.31.1 is the newest whose module builds with go install (later ones embed a UI built by npm, absent from the module).
go_install alertmanager github.com/prometheus/alertmanager github.com/prometheus/alertmanager/cmd/alertmanager v0.31.1 # about 4 minutes
# promtool, for the deploy tests' `promtool check rules` and `promtool test rules` (its module
# has no replace lines; the version is the one our go.mod holds for the PromQL parser).
go_install promtool github.com/prometheus/prometheus github.com/prometheus/prometheus/cmd/promtool "$PROMETHEUS_VERSION" # 7 minutes cold on 2 idle cores (21 measured beside other builds), 120 MB

# The restore runbook's fallback runs the AWS CLI, zstd and jq, and its test follows it:
# install what is missing from Debian's packages (as root), or say what to install.
missing=()
command -v zstd >/dev/null || missing+=(zstd)
command -v jq >/dev/null || missing+=(jq)
command -v aws >/dev/null || missing+=(awscli)
if ((${#missing[@]} > 0)); then
	if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null; then
		echo "installing ${missing[*]} from Debian's packages (the runbook test runs them)"
		apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null ||
			{ apt-get update -q >/dev/null && apt-get install -y -q --no-install-recommends "${missing[@]}" >/dev/null; }
	else
		echo "tools.sh: ${missing[*]} not installed: the restore runbook test needs them (Debian: apt-get install ${missing[*]})" >&2
		exit 1
	fi
fi

if ((built == 0)); then
	echo "bin/ is up to date"
fi
