package testharness

import (
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"testing"
	"time"
)

// recordingTB keeps what the kubelet stand-in reports against the test, so a test can
// check that it does report.
type recordingTB struct {
	testing.TB
	mu     sync.Mutex
	errors []string
}

func (r *recordingTB) Errorf(format string, args ...any) {
	r.mu.Lock()
	defer r.mu.Unlock()
	r.errors = append(r.errors, fmt.Sprintf(format, args...))
}

// runPod runs one pod manifest on a kubelet stand-in until its log has want or the test
// gives up, and returns the logs.
func runPod(t testing.TB, manifest, want string) string {
	t.Helper()
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "pod.yaml"), []byte(manifest), 0o600); err != nil {
		t.Fatal(err)
	}
	k := StartKubelet(t, KubeletOptions{Node: "n1", Manifests: dir, Path: func(p string) string { return p },
		Addr: func(s string) string { return s }, Binary: func(_, command string) string { return command }})
	for deadline := time.Now().Add(15 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if logs := k.Logs(); strings.Contains(logs, want) {
			return logs
		}
		if time.Now().After(deadline) {
			t.Fatalf("no %q in the container's log after 15s:\n%s", want, k.Logs())
		}
	}
}

const securePod = `apiVersion: v1
kind: Pod
metadata: {name: p}
spec:
  securityContext: {runAsGroup: 65534}
  containers:
    - name: c
      image: busybox
      command: ["/bin/sh", "-c", "%s"]
      securityContext:
        runAsUser: %d
        allowPrivilegeEscalation: false
        readOnlyRootFilesystem: true
        capabilities: {drop: ["ALL"]%s}
      volumeMounts: [{name: data, mountPath: /data}]
  volumes: [{name: data, emptyDir: {}}]
`

// The stand-in runs a container as its runAsUser and runAsGroup, with no_new_privs, a
// TMPDIR and HOME where nothing can be created, and its volumes writable.
func TestKubeletSecurityContext(t *testing.T) {
	script := `echo uid=$(id -u) gid=$(id -g); grep NoNewPrivs /proc/self/status; ` +
		`mkdir -p $HOME/.cache 2>/dev/null && echo home-writable || echo home-refused; ` +
		`echo x > $TMPDIR/f 2>/dev/null && echo tmp-writable || echo tmp-refused; ` +
		`echo y > /data/f && echo volume-writable; exec sleep 30`
	if os.Geteuid() != 0 {
		logs := runPod(t, fmt.Sprintf(securePod, script, 65534, ""), "cannot start")
		if !strings.Contains(logs, "runAsUser 65534, runAsGroup 65534: the kubelet stand-in runs as uid") {
			t.Fatalf("not root, a pod asking for uid 65534 did not fail to start clearly:\n%s", logs)
		}
		return
	}
	logs := runPod(t, fmt.Sprintf(securePod, script, 65534, ""), "volume-writable")
	for _, want := range []string{"uid=65534 gid=65534", "NoNewPrivs:\t1", "home-refused", "tmp-refused"} {
		if !strings.Contains(logs, want) {
			t.Errorf("no %q in the container's log:\n%s", want, logs)
		}
	}
}

// Unknown capabilities fail the start, as containerd fails it.
func TestKubeletUnknownCapability(t *testing.T) {
	logs := runPod(t, fmt.Sprintf(securePod, "exec sleep 30", os.Geteuid(), `, add: ["NET_BIND_SERVICE", "CAP_NET_RAW"]`), "cannot start")
	if !strings.Contains(logs, `unknown capability "CAP_NET_RAW"`) {
		t.Fatalf("want the start refused for CAP_NET_RAW:\n%s", logs)
	}
}

// A container with a read-only root that writes in it anyway fails the test, when it runs
// as root and nothing stops the write.
func TestKubeletReadOnlyRootWrite(t *testing.T) {
	if os.Geteuid() != 0 {
		t.Skip("not root: the container's root refuses the write itself")
	}
	rec := &recordingTB{TB: t}
	// Registered first, so it runs after the stand-in's own clean-up, which reports.
	t.Cleanup(func() {
		rec.mu.Lock()
		defer rec.mu.Unlock()
		if len(rec.errors) != 1 || !strings.Contains(rec.errors[0], "has readOnlyRootFilesystem but wrote [scratch] in its root") {
			t.Errorf("a container that wrote in its read-only root: the stand-in reported %q", rec.errors)
		}
	})
	runPod(rec, fmt.Sprintf(securePod, "echo x > scratch; echo wrote; exec sleep 30", os.Geteuid(), ""), "wrote")
}
