// Package testharness starts the real servers the tests run against: etcd
// (in process or as real processes built by scripts/tools.sh) and S3.
package testharness

import (
	"os"
	"path/filepath"
	"testing"
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
