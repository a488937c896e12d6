package main

import (
	"bytes"
	"errors"
	"flag"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/etcdguard/etcdguard/internal/testharness"
)

// etcdguardBin is the binary under test, built once from this tree by TestMain, so the
// tests exercise exit codes, stderr and process listings as an operator sees them.
var etcdguardBin string

func TestMain(m *testing.M) {
	flag.Parse()
	if f := flag.Lookup("test.fuzz"); f != nil && f.Value.String() != "" {
		// Fuzzing (`make fuzz`): the targets run no binary, and every fuzz worker would build one.
		os.Exit(m.Run())
	}
	dir, err := os.MkdirTemp("", "etcdguard-bin-")
	if err != nil {
		panic(err)
	}
	etcdguardBin = filepath.Join(dir, "etcdguard")
	build := []string{"build", "-o", etcdguardBin, "."}
	race := testharness.RaceBinary()
	if race {
		// Under -race (or ETCDGUARD_RACE_BIN=1) the binary gets the race detector: most of
		// etcdguard runs in these subprocesses. Each test sets its subprocesses' environment
		// itself, so GORACE comes from a wrapper: every race report lands in dir/race,
		// whatever the test expected of the process's exit code or stderr, and fails the
		// package below.
		real := filepath.Join(dir, "race", "etcdguard")
		build = []string{"build", "-race", "-o", real, "."}
		wrapper := "#!/bin/sh\nGORACE='log_path=" + filepath.Join(dir, "race", "report") + "' exec " + real + ` "$@"` + "\n"
		if err := os.WriteFile(etcdguardBin, []byte(wrapper), 0o755); err != nil {
			panic(err)
		}
	}
	out, err := exec.Command("go", build...).CombinedOutput()
	if err != nil {
		os.RemoveAll(dir)
		panic("building etcdguard: " + err.Error() + "\n" + string(out))
	}
	code := m.Run()
	if race && !raceReports(filepath.Join(dir, "race")) {
		code = 1
	}
	os.RemoveAll(dir)
	os.Exit(code)
}

// raceReports prints the race reports the etcdguard subprocesses wrote (GORACE log_path:
// report.<pid>) and reports whether there were none.
func raceReports(dir string) bool {
	files, _ := filepath.Glob(filepath.Join(dir, "report.*"))
	clean := true
	for _, f := range files {
		b, err := os.ReadFile(f)
		if err != nil || len(bytes.TrimSpace(b)) == 0 {
			continue
		}
		clean = false
		os.Stderr.WriteString("FAIL: an etcdguard subprocess found a data race (" + f + "):\n" + string(b) + "\n")
	}
	return clean
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
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// A command that hangs is a bug to show, not a test binary's timeout 25 minutes later
	// with nothing of the process: SIGQUIT makes Go print every goroutine's stack.
	hung := time.AfterFunc(testharness.Budget(runTimeout), func() { cmd.Process.Signal(syscall.SIGQUIT) })
	err := cmd.Wait()
	if !hung.Stop() {
		t.Fatalf("etcdguard %s hung for %s; its goroutines:\n%s", strings.Join(args, " "), testharness.Budget(runTimeout), stderr.String())
	}
	code := 0
	var ee *exec.ExitError
	if errors.As(err, &ee) {
		code = ee.ExitCode()
	} else if err != nil {
		t.Fatal(err)
	}
	return result{stdout.String(), stderr.String(), code}
}

// runTimeout is the longest a command run by a test may take (before the race detector's
// stretch): the slowest, a restore of tens of MiB through injected faults, takes seconds.
const runTimeout = 2 * time.Minute

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

type daemonProc struct {
	cmd  *exec.Cmd
	addr string
	log  string
}

// startDaemon runs `etcdguard daemon` with args until the test ends; its log is shown if
// the test fails.
func startDaemon(t *testing.T, env []string, addr string, args ...string) *daemonProc {
	t.Helper()
	logPath := filepath.Join(t.TempDir(), "daemon.log")
	logf, err := os.Create(logPath)
	if err != nil {
		t.Fatal(err)
	}
	cmd := exec.Command(etcdguardBin, append([]string{"daemon", "--listen", addr, "--log-format", "json"}, args...)...)
	cmd.Env = append(env, "PATH="+os.Getenv("PATH"), "HOME="+t.TempDir())
	cmd.Stdout, cmd.Stderr = logf, logf
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		cmd.Process.Signal(syscall.SIGCONT)
		cmd.Process.Kill()
		cmd.Wait()
		logf.Close()
		if t.Failed() {
			b, _ := os.ReadFile(logPath)
			t.Logf("daemon %s log:\n%s", addr, b)
		}
	})
	return &daemonProc{cmd: cmd, addr: addr, log: logPath}
}
