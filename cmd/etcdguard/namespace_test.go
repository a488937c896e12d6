package main

import (
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/etcdguard/etcdguard/internal/loadgen"
	"github.com/etcdguard/etcdguard/internal/testharness"
	"github.com/etcdguard/etcdguard/snapshot"
)

// TestRestoreLeftoversAcrossPIDNamespaces: a restore run in a container (its own PID
// namespace, where it is PID 1) and killed leaves a temp dir and download beside the
// target; a restore run on the host then removes them. What a live restore in another
// namespace holds (stopped here, mid-download) stays. A PID in the names could not tell
// either: PID 1 always exists on the host.
func TestRestoreLeftoversAcrossPIDNamespaces(t *testing.T) {
	if testing.Short() {
		t.Skip("runs restores in their own PID namespaces: not with -short")
	}
	if out, err := exec.Command("unshare", "-Urpf", "true").CombinedOutput(); err != nil {
		t.Skipf("skipped: this machine gives no unprivileged user and PID namespaces (unshare -Urpf true: %v: %s), so a restore cannot run in a namespace of its own", err, out)
	}
	src := testharness.StartEtcd(t)
	if _, err := loadgen.LoadK8sKeyspace(context.Background(), src.Client(t), loadgen.Options{TargetBytes: 24 << 20, ValueSize: 8 << 10, Seed: 21}); err != nil {
		t.Fatal(err)
	}
	env := []string{"ETCDGUARD_ENDPOINTS=" + src.Endpoints[0], "ETCDGUARD_CLUSTER=c1", "ETCDGUARD_STORE=file://" + t.TempDir()}
	m := decodeJSON[snapshot.Manifest](t, run(t, env, "snapshot", "save", "--compression", "gzip", "-o", "json"))
	peer := fmt.Sprintf("http://127.0.0.1:%d", testharness.FreePorts(t, 1)[0])
	restoreTo := func(dataDir string) []string {
		return []string{"restore", "--snapshot", m.ID, "--name", "m", "--initial-cluster", "m=" + peer, "--data-dir", dataDir}
	}
	hidden := func(parent string) []string {
		des, _ := os.ReadDir(parent)
		var out []string
		for _, de := range des {
			if strings.HasPrefix(de.Name(), ".m.etcd.etcdguard") {
				out = append(out, de.Name())
			}
		}
		return out
	}
	// inNamespace starts a restore as PID 1 of a new PID namespace and returns, once it
	// has begun to write beside target, its host PID and the unshare that waits for it.
	inNamespace := func(t *testing.T, target string) (*exec.Cmd, int) {
		t.Helper()
		cmd := exec.Command("unshare", append([]string{"-Urpf", "--kill-child", etcdguardBin}, restoreTo(target)...)...)
		cmd.Env = append([]string{"PATH=" + os.Getenv("PATH"), "HOME=" + t.TempDir()}, env...)
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { cmd.Process.Kill(); cmd.Wait() })
		pid := 0
		for deadline := time.Now().Add(testharness.Budget(30 * time.Second)); time.Now().Before(deadline); time.Sleep(time.Millisecond) {
			if pid == 0 {
				pid = childOf(cmd.Process.Pid)
			}
			for _, name := range hidden(filepath.Dir(target)) {
				if pid != 0 && !strings.HasSuffix(name, ".lock") && !strings.Contains(name, "~") {
					return cmd, pid
				}
			}
		}
		t.Fatalf("the restore in its own PID namespace wrote nothing beside %s (host PID %d)", target, pid)
		return nil, 0
	}

	t.Run("killed", func(t *testing.T) {
		parent := filepath.Join(t.TempDir(), "k")
		target := filepath.Join(parent, "m.etcd")
		cmd, pid := inNamespace(t, target)
		if err := syscall.Kill(pid, syscall.SIGKILL); err != nil {
			t.Fatal(err)
		}
		cmd.Wait()
		if _, err := os.Stat(target); err == nil {
			t.Fatalf("the killed restore finished first: %s exists", target)
		}
		left := hidden(parent)
		if len(left) == 0 {
			t.Fatal("the killed restore left nothing beside its target: nothing to test")
		}
		r := run(t, env, restoreTo(target)...)
		if r.code != 0 {
			t.Fatalf("restore after the killed one: exit %d\n%s", r.code, r.stderr)
		}
		if got := hidden(parent); len(got) > 0 {
			t.Fatalf("the killed restore (PID 1 of its namespace) left %v; after a restore on the host, still there: %v", left, got)
		}
	})
	t.Run("running", func(t *testing.T) {
		parent := filepath.Join(t.TempDir(), "r")
		target := filepath.Join(parent, "m.etcd")
		_, pid := inNamespace(t, target)
		if err := syscall.Kill(pid, syscall.SIGSTOP); err != nil {
			t.Fatal(err)
		}
		defer syscall.Kill(pid, syscall.SIGKILL)
		held := hidden(parent)
		r := run(t, env, restoreTo(target)...)
		if r.code != 0 {
			t.Fatalf("restore beside a running one: exit %d\n%s", r.code, r.stderr)
		}
		if got := hidden(parent); !slices.Equal(got, held) {
			t.Fatalf("a restore removed what a live one in another PID namespace writes: %v before, %v after", held, got)
		}
	})
}

// childOf is the PID of a child of process ppid (0: none yet), from /proc/*/stat.
func childOf(ppid int) int {
	stats, _ := filepath.Glob("/proc/[0-9]*/stat")
	for _, p := range stats {
		b, err := os.ReadFile(p)
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...; comm may hold spaces and parentheses.
		i := strings.LastIndexByte(string(b), ')')
		if f := strings.Fields(string(b[i+1:])); i > 0 && len(f) > 1 && f[1] == strconv.Itoa(ppid) {
			pid, _ := strconv.Atoi(filepath.Base(filepath.Dir(p)))
			return pid
		}
	}
	return 0
}
