package main

import (
	"bytes"
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

// etcdguardBin is the binary under test, built once from this tree by TestMain, so the
// tests exercise exit codes, stderr and process listings as an operator sees them.
var etcdguardBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "etcdguard-bin-")
	if err != nil {
		panic(err)
	}
	etcdguardBin = filepath.Join(dir, "etcdguard")
	out, err := exec.Command("go", "build", "-o", etcdguardBin, ".").CombinedOutput()
	if err != nil {
		os.RemoveAll(dir)
		panic("building etcdguard: " + err.Error() + "\n" + string(out))
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type result struct {
	stdout, stderr string
	code           int
}

// run runs the etcdguard binary with only the given environment (plus PATH and HOME,
// pointed at an empty dir so no AWS config of the machine leaks in).
func run(t *testing.T, env []string, args ...string) result {
	t.Helper()
	cmd := exec.Command(etcdguardBin, args...)
	cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir(), "AWS_EC2_METADATA_DISABLED=true"}, env...)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return result{stdout.String(), stderr.String(), code}
}

// errorLine returns the one error line etcdguard prints, failing if there is not exactly one.
func (r result) errorLine(t *testing.T) string {
	t.Helper()
	var lines []string
	for _, l := range strings.Split(strings.TrimSpace(r.stderr), "\n") {
		if strings.HasPrefix(l, "etcdguard: ") {
			lines = append(lines, l)
		}
	}
	if len(lines) != 1 {
		t.Fatalf("want one error line on stderr, got %q", r.stderr)
	}
	return lines[0]
}
