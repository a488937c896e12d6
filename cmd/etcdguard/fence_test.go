package main

import (
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/etcdguard/etcdguard/delta"
	"github.com/etcdguard/etcdguard/internal/loadgen"
	"github.com/etcdguard/etcdguard/internal/testharness"
	"github.com/etcdguard/etcdguard/snapshot"
	s3store "github.com/etcdguard/etcdguard/store/s3"
)

// s3Proxy forwards loopback connections to an S3 server, passing at most bytesPerSec from
// the client on each connection (0: unlimited), so an upload of a few MiB takes seconds.
// Once hang is set it stops answering: connections are accepted and read, never replied
// to, like a store behind a broken load balancer.
type s3Proxy struct {
	URL  string
	hang atomic.Bool
}

func startS3Proxy(t *testing.T, target string, bytesPerSec int) *s3Proxy {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	p := &s3Proxy{URL: "http://" + l.Addr().String()}
	var conns sync.WaitGroup
	done := make(chan struct{})
	t.Cleanup(func() { close(done); l.Close(); conns.Wait() })
	target = strings.TrimPrefix(target, "http://")
	go func() {
		for {
			c, err := l.Accept()
			if err != nil {
				return
			}
			conns.Go(func() {
				defer c.Close()
				go func() { <-done; c.Close() }()
				s, err := net.Dial("tcp", target)
				if err != nil {
					return
				}
				defer s.Close()
				go func() {
					buf := make([]byte, 32<<10)
					for {
						n, err := s.Read(buf)
						if p.hang.Load() || err != nil {
							return // the client waits for an answer that never comes
						}
						c.Write(buf[:n])
					}
				}()
				chunk := int64(32 << 10)
				if bytesPerSec > 0 {
					chunk = int64(bytesPerSec / 20)
				}
				for {
					if p.hang.Load() {
						io.Copy(io.Discard, c)
						return
					}
					if _, err := io.CopyN(s, c, chunk); err != nil {
						s.(*net.TCPConn).CloseWrite()
						return
					}
					if bytesPerSec > 0 {
						time.Sleep(50 * time.Millisecond)
					}
				}
			})
		}
	}()
	return p
}

// A leader stopped (SIGSTOP) in the middle of an upload for longer than its election TTL
// loses its lease; another daemon takes over. When the stopped one continues, it must not
// finish its upload nor store the changes it had captured: no two snapshot uploads and no
// two delta segments overlap in time or revisions, and every listed snapshot verifies.
func TestE2EDaemonFencedAfterSIGSTOP(t *testing.T) {
	srv := testharness.StartVersityGW(t)
	e := testharness.StartEtcd(t)
	cli := e.Client(t)
	if _, err := loadgen.LoadK8sKeyspace(context.Background(), cli, loadgen.Options{TargetBytes: 24 << 20, ValueSize: 16 << 10}); err != nil {
		t.Fatal(err)
	}
	// Writes go on all along, so both leaders have changes to capture.
	wctx, stopWrites := context.WithCancel(context.Background())
	var writes sync.WaitGroup
	writes.Go(func() {
		for i := 0; wctx.Err() == nil; i++ {
			cli.Put(wctx, fmt.Sprintf("/registry/configmaps/default/c%d", i%50), fmt.Sprint(i))
			time.Sleep(50 * time.Millisecond)
		}
	})
	t.Cleanup(func() { stopWrites(); writes.Wait() })

	endpoint := startS3Proxy(t, srv.Endpoint, 6<<20).URL
	const ttl = 2 * time.Second
	ports := testharness.FreePorts(t, 2)
	var ds []*daemonProc
	for _, p := range ports {
		ds = append(ds, startDaemon(t, srv.Env(), fmt.Sprintf("127.0.0.1:%d", p), "--cluster", "prod", "--store", srv.URL(""),
			"--s3-endpoint", endpoint, "--endpoints", e.Endpoints[0], "--schedule", "@every 1s", "--election-ttl", ttl.String(),
			"--compression", "none", "--s3-part-size", "5MiB", "--s3-concurrency", "1", "--keep-last", "1000",
			"--delta", "--delta-flush", "500ms", "--check-interval", "1h"))
	}
	leader := func() int {
		for i, d := range ds {
			if metric(d.addr, "etcdguard_is_leader") == 1 {
				return i
			}
		}
		return -1
	}
	// Delta capture starts with a snapshot of its own; the one to stop is a scheduled one.
	st := s3store.NewFromClient(srv.Client(t), srv.Bucket, "", srv.Options())
	stored := func() int {
		ms, err := snapshot.List(context.Background(), st, "prod")
		if err != nil {
			t.Fatal(err)
		}
		return len(ms)
	}
	deadline := time.Now().Add(60 * time.Second)
	for leader() < 0 || stored() == 0 || len(srv.OpenUploads(t)) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no leader uploading a scheduled snapshot within 60s")
		}
		time.Sleep(20 * time.Millisecond)
	}
	old := ds[leader()]
	time.Sleep(500 * time.Millisecond) // well into the upload
	old.cmd.Process.Signal(syscall.SIGSTOP)
	stopped := time.Now()
	deadline = stopped.Add(30 * time.Second)
	var next *daemonProc // the stopped daemon cannot answer /metrics
	for _, d := range ds {
		if d != old {
			next = d
		}
	}
	for metric(next.addr, "etcdguard_is_leader") != 1 {
		if time.Now().After(deadline) {
			t.Fatal("no daemon took over from the stopped leader within 30s")
		}
		time.Sleep(50 * time.Millisecond)
	}
	time.Sleep(3 * time.Second) // the new leader is uploading now
	old.cmd.Process.Signal(syscall.SIGCONT)
	t.Logf("leader stopped for %s", time.Since(stopped).Round(time.Millisecond))
	time.Sleep(12 * time.Second) // the old leader's upload would have finished by now
	stopWrites()
	writes.Wait()
	for _, d := range ds {
		d.cmd.Process.Signal(syscall.SIGTERM)
	}
	for _, d := range ds {
		d.cmd.Wait()
	}

	ms, err := snapshot.List(context.Background(), st, "prod")
	if err != nil {
		t.Fatal(err)
	}
	if len(ms) < 2 {
		t.Fatalf("%d snapshots stored, want at least 2 (one per leader)", len(ms))
	}
	slices.SortFunc(ms, func(a, b *snapshot.Manifest) int { return a.CreatedAt.Compare(b.CreatedAt) })
	for i := 1; i < len(ms); i++ {
		if ms[i].CreatedAt.Before(ms[i-1].CompletedAt) {
			t.Errorf("snapshot uploads overlap: %s ran %s..%s, %s ran %s..%s", ms[i-1].ID, ms[i-1].CreatedAt.Format(time.StampMilli),
				ms[i-1].CompletedAt.Format(time.StampMilli), ms[i].ID, ms[i].CreatedAt.Format(time.StampMilli), ms[i].CompletedAt.Format(time.StampMilli))
		}
	}
	if h := ms[0].History; ms[len(ms)-1].History != h {
		t.Fatalf("the snapshots are of histories %s and %s: nothing was restored", h, ms[len(ms)-1].History)
	}
	segs, err := delta.Segments(context.Background(), st, "prod", ms[0].History, 0, nil)
	if err != nil {
		t.Fatal(err)
	}
	if len(segs) < 2 {
		t.Fatalf("%d delta segments stored, want several", len(segs))
	}
	for i := 1; i < len(segs); i++ {
		if segs[i].FromRev <= segs[i-1].ToRev || segs[i].FirstTime.Before(segs[i-1].LastTime) {
			t.Errorf("delta segments overlap: revisions %d-%d at %s..%s and %d-%d at %s..%s", segs[i-1].FromRev, segs[i-1].ToRev,
				segs[i-1].FirstTime.Format(time.StampMilli), segs[i-1].LastTime.Format(time.StampMilli),
				segs[i].FromRev, segs[i].ToRev, segs[i].FirstTime.Format(time.StampMilli), segs[i].LastTime.Format(time.StampMilli))
		}
	}
	for _, m := range ms {
		if r := run(t, srv.Env(), "snapshot", "verify", m.ID, "--store", srv.URL(""), "--cluster", "prod"); r.code != 0 {
			t.Errorf("snapshot %s does not verify: %s", m.ID, r.stderr)
		}
	}
	t.Logf("%d snapshots, %d delta segments", len(ms), len(segs))
}

// A store that accepts connections and never answers: a CLI command fails with one clear
// line instead of hanging, and a daemon whose upload hangs exits within the 30s grace
// period of deploy/static-pod.yaml after SIGTERM.
func TestE2EHungStore(t *testing.T) {
	srv := testharness.StartVersityGW(t)
	proxy := startS3Proxy(t, srv.Endpoint, 0)
	env := append(srv.Env(), "ETCDGUARD_S3_ENDPOINT="+proxy.URL, "ETCDGUARD_STORE_TIMEOUT=2s")

	// The daemon first, while the store still answers.
	e := testharness.StartEtcd(t)
	if _, err := loadgen.LoadK8sKeyspace(context.Background(), e.Client(t), loadgen.Options{TargetBytes: 32 << 20, ValueSize: 16 << 10}); err != nil {
		t.Fatal(err)
	}
	d := startDaemon(t, env, "", "--cluster", "prod", "--store", srv.URL(""), "--endpoints", e.Endpoints[0],
		"--schedule", "@every 1s", "--election-ttl", "2s", "--compression", "none", "--s3-part-size", "5MiB", "--s3-concurrency", "1")
	deadline := time.Now().Add(30 * time.Second)
	for len(srv.OpenUploads(t)) == 0 {
		if time.Now().After(deadline) {
			t.Fatal("no upload started within 30s")
		}
		time.Sleep(10 * time.Millisecond)
	}
	proxy.hang.Store(true)
	time.Sleep(time.Second)
	start := time.Now()
	d.cmd.Process.Signal(syscall.SIGTERM)
	exited := make(chan error, 1)
	go func() { exited <- d.cmd.Wait() }()
	select {
	case err := <-exited:
		t.Logf("daemon exited %s after SIGTERM: %v", time.Since(start).Round(time.Millisecond), err)
		if took := time.Since(start); took > 25*time.Second {
			t.Errorf("the daemon took %s to exit after SIGTERM: more than the 30s grace period allows", took)
		}
	case <-time.After(40 * time.Second):
		t.Fatal("the daemon did not exit within 40s of SIGTERM against a hung store")
	}

	for _, args := range [][]string{
		{"snapshot", "list", "--store", srv.URL(""), "--cluster", "prod"},
		{"check", "--store", srv.URL(""), "--cluster", "prod"},
	} {
		t.Run(args[0], func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
			defer cancel()
			cmd := exec.CommandContext(ctx, etcdguardBin, args...)
			cmd.Env = append(env, "PATH="+os.Getenv("PATH"), "HOME="+t.TempDir())
			start := time.Now()
			out, _ := cmd.CombinedOutput()
			if ctx.Err() != nil {
				t.Fatalf("%v still hung after 30s: %s", args, out)
			}
			code := cmd.ProcessState.ExitCode()
			t.Logf("%v: exit %d after %s: %s", args, code, time.Since(start).Round(time.Millisecond), out)
			// Log lines (the retries, with their reason) may come before it; the verdict is one line.
			var verdict []string
			for _, l := range strings.Split(strings.TrimSpace(string(out)), "\n") {
				if !strings.HasPrefix(l, "time=") {
					verdict = append(verdict, l)
				}
			}
			if code == 0 || len(verdict) != 1 || !strings.Contains(verdict[0], "stopped answering") {
				t.Errorf("%v: exit %d, want one line saying the store stopped answering: %s", args, code, out)
			}
		})
	}
}
