# etcdguard: `make demo` runs the main job end to end; `make test` runs the tests.
# Both build everything they need (etcd, etcdctl, etcdutl and an S3 server) from Go modules.

GO        ?= go
BIN       := bin
STATICCHECK_VERSION := v0.8.2
GOTEST_FLAGS ?= -count=1 -timeout 25m

.PHONY: all build tools test test-short demo bench lint clean image compat release fuzz soak

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

# The fault tests record what they injected and proved; docs/reliability.md is rendered from it.
RELIABILITY_LOG := $(CURDIR)/$(BIN)/reliability.jsonl
TEST_ENV := ETCDGUARD_BIN_DIR=$(CURDIR)/$(BIN) ETCDGUARD_RELIABILITY_LOG=$(RELIABILITY_LOG)
# Executions of each fuzz target in `make test` (a count: see below).
FUZZ_BRIEF ?= 2000x
CMD_SHARDS ?= 2
# The whole suite runs once, under the race detector, in two halves at once (two cores):
#  - every package but cmd/etcdguard with go test -race;
#  - cmd/etcdguard, whose tests run etcdguard itself in subprocesses, with its test binary
#    plain and the etcdguard binary it builds raced (ETCDGUARD_RACE_BIN=1): the product code
#    is raced where it runs, and the etcd servers embedded in the test process are not (on 2
#    busy cores the package took 475 s plain, 802 s so, 983 s with its test binary raced too).
#    A race report from any subprocess fails the package and is printed (main_test.go).
#  Measured on 2 cores shared with other jobs (load 8-15): the suite plain 500 s, this way
#  839 s (the other half done at ~7 min), all of it with go test -race 1017 s; peak memory
#  of the test processes 1.9 GB plain, 2.1 GB this way, 3.1 GB all raced.
#  cmd/etcdguard runs in CMD_SHARDS processes (scripts/test-cmd.sh): alone it took 1204 s
#  of a 1428 s CI run, mostly waiting on its subprocesses.
# Wall-clock budgets in tests stretch under the race detector (testharness.Budget).
# Then each fuzz target runs briefly (go test above replayed its corpus): FUZZ_BRIEF
# executions (eight targets: ~2 min, mostly building them), a count, not a time, as Go 1.26
# fails a timed run whose time ends while a worker is busy ("context deadline exceeded",
# golang/go#75804, fixed in Go 1.27), which a loaded CI runner hits. What a brief run explores is random, so it may find what the last
# one did not: that is a real bug, so a real failure, and scripts/fuzz.sh prints the input,
# to be committed to testdata/fuzz, where every go test replays it from then on.
test: build tools
	$(GO) vet ./...
	rm -f $(RELIABILITY_LOG)
	$(TEST_ENV) ETCDGUARD_RACE_BIN=1 scripts/test-cmd.sh $(CMD_SHARDS) $(GOTEST_FLAGS) & cmd=$$!; \
	$(TEST_ENV) $(GO) test -race $(GOTEST_FLAGS) $$($(GO) list ./... | grep -v '/cmd/etcdguard$$'); rest=$$?; \
	wait $$cmd && exit $$rest
	cd internal/tools/perf && $(GO) vet ./... && $(GO) test -count=1 ./...
	$(GO) run ./internal/tools/reliability $(RELIABILITY_LOG) docs/reliability.md
	scripts/fuzz.sh $(FUZZ_BRIEF) $(FUZZ_TARGETS)

# Every fuzz target, as PACKAGE:Target; its corpus is PACKAGE/testdata/fuzz/Target, which
# `go test` replays (so `make test` does) besides the target's seeds.
FUZZ_TARGETS := snapshot:FuzzParseManifest delta:FuzzSummary delta:FuzzDecoder internal/daemon:FuzzParseSchedule \
	guard:FuzzInterpret guard:FuzzPlan store:FuzzStoreURL cmd/etcdguard:FuzzConfigFile

# Fuzzing of every target for FUZZTIME each; what a run finds lands in the package's
# testdata/fuzz (scripts/fuzz.sh prints it too) and is replayed by `make test` from then on.
# A count (FUZZTIME=100000x) rather than a time avoids Go 1.26's spurious "context deadline
# exceeded" at the end of a timed run on a busy machine (see FUZZ_BRIEF).
FUZZTIME ?= 10s
fuzz:
	scripts/fuzz.sh $(FUZZTIME) $(FUZZ_TARGETS)

# The soak (not in CI): daemons with --delta under churn for SOAK, 5% S3 faults of every kind,
# the leader killed every few minutes, then restores at 20 random revisions checked key for key.
# TestSoak skips itself without ETCDGUARD_SOAK; `make test` never sets it.
SOAK ?= 30m
soak: build tools
	ETCDGUARD_SOAK=$(SOAK) ETCDGUARD_SOAK_REPORT=$(CURDIR)/docs/soak.md ETCDGUARD_BIN_DIR=$(CURDIR)/$(BIN) ETCDGUARD_RELIABILITY_LOG=$(RELIABILITY_LOG) \
		$(GO) test -count=1 -timeout 0 -v -run '^TestSoak$$' ./cmd/etcdguard/

# The unit and in-process suites only (no subprocess or real S3 server).
test-short: build
	$(GO) test -short -count=1 ./...

demo: build tools
	scripts/demo.sh

# Benchmarks: the Go micro-benchmarks, then bin/perf (internal/tools/perf): etcdguard against
# etcdctl, etcdutl and a naive etcdctl+zstd+curl pipeline on fresh real etcd and S3 servers,
# contenders alternating, medians merged into docs/perf/results.json, then docs/perf.md and
# its plots rendered from that. Sizes 100MiB and 1GiB (BENCH_FULL=1 adds 4GiB and 8GiB,
# BENCH_SIZES=16MiB for a quick look); PERF_FLAGS for more, e.g. PERF_FLAGS='-only save,restore -runs 5'
# (bin/perf run -h lists them). A section can be rerun alone: its rows replace the old ones.
PERF_FLAGS ?=
bench: build tools
	$(GO) test -run '^$$' -bench . -benchmem ./snapshot/... ./restore/...
	$(GO) test -run '^$$' -bench BenchmarkDeleteTxn -benchtime 3x -benchmem ./guard/
	$(GO) test -run '^$$' -bench BenchmarkMonthOfSegments -benchtime 3x ./delta/
	$(BIN)/perf run $(PERF_FLAGS)
	$(BIN)/perf report

# docs/compatibility.md, from a test run: etcd server versions, Kubernetes, S3 servers.
compat: build tools
	scripts/compat.sh

lint:
	@test -z "$$(gofmt -l $$(git ls-files '*.go'))" || { gofmt -l $$(git ls-files '*.go'); echo "gofmt needed"; exit 1; }
	$(GO) vet ./...
	$(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...
	cd internal/tools/perf && $(GO) vet ./... && $(GO) run honnef.co/go/tools/cmd/staticcheck@$(STATICCHECK_VERSION) ./...

clean:
	rm -rf $(BIN) build

# The host platform's container image as a tarball for `docker load` / `podman load`, built without
# Docker: empty base, Debian's CA bundle, a non-root user, /etcdguard and /usr/local/bin/etcd{ctl,utl}.
image:
	VERSION=$(VERSION) COMMIT=$(COMMIT) DATE=$(DATE) LDFLAGS="$(LDFLAGS)" scripts/release.sh image

# Static linux/amd64 and linux/arm64 binaries, SHA256SUMS and a multi-arch OCI image (etcdguard,
# etcdctl, etcdutl) in build/release/; docs/release.md. About 19 s warm, 12 min cold on 2 busy cores.
# Only from a clean checkout of the tag Chart.yaml's appVersion names; RELEASE_SNAPSHOT=1 to try it out.
release:
	VERSION=$(VERSION) COMMIT=$(COMMIT) DATE=$(DATE) LDFLAGS="$(LDFLAGS)" RELEASE_SNAPSHOT=$(RELEASE_SNAPSHOT) scripts/release.sh release
