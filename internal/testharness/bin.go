// Package testharness starts the real servers the tests run against: etcd
// (in process or as real processes built by scripts/tools.sh) and S3.
package testharness

import (
	"os"
	"path/filepath"
	"testing"
	"time"
)

// RepoRoot returns the directory holding go.mod, found by walking up from
// the test's working directory (go test runs each package in its own dir).
func RepoRoot(t testing.TB) string {
	t.Helper()
	dir, err := os.Getwd()
	if err != nil {
		t.Fatalf("getwd: %v", err)
	}
	for {
		if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
			return dir
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			t.Fatalf("no go.mod above the working directory")
		}
		dir = parent
	}
}

// Bin returns the absolute path of <repo>/bin/<name>. The binaries are built
// ahead of time rather than from tests, because building etcd or versitygw
// takes longer than a test should.
func Bin(t testing.TB, name string) string {
	t.Helper()
	p := filepath.Join(RepoRoot(t), "bin", name)
	if fi, err := os.Stat(p); err != nil || fi.IsDir() {
		t.Fatalf("bin/%s not found: run `make tools` (scripts/tools.sh) first", name)
	}
	return p
}

// RaceBinary reports whether the etcdguard binary the tests run is built with the race
// detector: under go test -race, or with ETCDGUARD_RACE_BIN=1, which races the binary
// without slowing down the test process and the etcd it embeds (see the Makefile).
func RaceBinary() bool { return Race || os.Getenv("ETCDGUARD_RACE_BIN") == "1" }

// raceSlowdown is how much longer than its plain budget a wall-clock budget gets under the
// race detector: Go code there runs 2 to 20 times slower, and CPU-bound code (bcrypt in an
// embedded etcd's authentication, zstd) at the slow end.
const raceSlowdown = 5

// Budget is d, or d × raceSlowdown when anything the tests run is under the race detector:
// for a test's wall-clock budget (a --dial-timeout, how long to wait for a log line) that
// holds on a busy machine, but not under -race.
func Budget(d time.Duration) time.Duration {
	if RaceBinary() {
		return raceSlowdown * d
	}
	return d
}
