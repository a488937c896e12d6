# etcdguard: `make demo` runs the main job end to end; `make test` runs the tests.
# Both build everything they need (etcd, etcdctl, etcdutl and an S3 server) from Go modules.

GO        ?= go
BIN       := bin
STATICCHECK_VERSION := v0.8.2
GOTEST_FLAGS ?= -count=1 -timeout 25m

.PHONY: all build tools test test-short demo bench lint clean image compat

all: build

build:
	$(GO) build -o $(BIN)/etcdguard ./cmd/etcdguard

tools:
	scripts/tools.sh

test: build tools
	$(GO) vet ./...
	ETCDGUARD_BIN_DIR=$(CURDIR)/$(BIN) $(GO) test $(GOTEST_FLAGS) ./...

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

# A container image as an OCI tarball (load with `docker load`, `podman load` or push with crane),
# built without Docker: empty base, the static binary, Debian's CA bundle, a non-root user.
image:
	CGO_ENABLED=0 $(GO) build -trimpath -ldflags "-s -w" -o build/image/etcdguard ./cmd/etcdguard
	$(GO) run ./internal/tools/image -binary build/image/etcdguard -out build/etcdguard-image.tar
