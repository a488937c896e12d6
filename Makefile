# etcdguard: `make demo` runs the main job end to end; `make test` runs the tests.
# Both build everything they need (etcd, etcdctl, etcdutl and an S3 server) from Go modules.

GO        ?= go
BIN       := bin
STATICCHECK_VERSION := v0.8.2
GOTEST_FLAGS ?= -count=1 -timeout 25m

.PHONY: all build tools test test-short demo bench lint clean image compat release

# Stamped into every binary `make build`, `make image` and `make release` link (`etcdguard version`);
# a `go install`ed binary reads the same from Go's build info instead.
VERSION   ?= $(shell git describe --tags --always --dirty 2>/dev/null || echo dev)
COMMIT    ?= $(shell git rev-parse HEAD 2>/dev/null || echo unknown)
DATE      ?= $(shell date -u $(if $(SOURCE_DATE_EPOCH),-d @$(SOURCE_DATE_EPOCH)) +%Y-%m-%dT%H:%M:%SZ)
VERSION_PKG := github.com/etcdguard/etcdguard/internal/version
LDFLAGS   := -X $(VERSION_PKG).Version=$(VERSION) -X $(VERSION_PKG).Commit=$(COMMIT) -X $(VERSION_PKG).Date=$(DATE)

all: build

build:
	$(GO) build -ldflags "$(LDFLAGS)" -o $(BIN)/etcdguard ./cmd/etcdguard

tools:
	scripts/tools.sh

test: build tools
	$(GO) vet ./...
	ETCDGUARD_BIN_DIR=$(CURDIR)/$(BIN) $(GO) test $(GOTEST_FLAGS) ./...
	# The daemon's goroutines under the race detector (its checks run on two of them).
	ETCDGUARD_BIN_DIR=$(CURDIR)/$(BIN) $(GO) test -race -count=1 ./internal/daemon/ ./alerting/

# The unit and in-process suites only (no subprocess or real S3 server).
test-short: build
	$(GO) test -short -count=1 ./...

demo: build tools
	scripts/demo.sh

# Benchmarks: Go benchmarks, then etcdguard against `etcdctl snapshot save` on one DB.
# BENCH_DB_SIZE=1GiB make bench for the large run.
bench: build tools
	$(GO) test -run '^$$' -bench . -benchmem ./snapshot/... ./restore/...
	$(GO) test -run '^$$' -bench BenchmarkDeleteTxn -benchtime 3x -benchmem ./guard/
	$(GO) test -run '^$$' -bench BenchmarkMonthOfSegments -benchtime 3x ./delta/
	scripts/bench.sh
	scripts/bench-guard.sh
	scripts/bench-pitr.sh

# docs/compatibility.md, from a test run: etcd server versions, Kubernetes, S3 servers.
compat: build tools
	scripts/compat.sh

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...

clean:
	rm -rf $(BIN) build

# The host platform's container image as a tarball for `docker load` / `podman load`, built without
# Docker: empty base, Debian's CA bundle, a non-root user, /etcdguard and /usr/local/bin/etcd{ctl,utl}.
image:
	VERSION=$(VERSION) COMMIT=$(COMMIT) DATE=$(DATE) LDFLAGS="$(LDFLAGS)" scripts/release.sh image

# Static linux/amd64 and linux/arm64 binaries, SHA256SUMS and a multi-arch OCI image (etcdguard,
# etcdctl, etcdutl) in build/release/; docs/release.md. About 19 s warm, 12 min cold on 2 busy cores.
release:
	VERSION=$(VERSION) COMMIT=$(COMMIT) DATE=$(DATE) LDFLAGS="$(LDFLAGS)" scripts/release.sh release
