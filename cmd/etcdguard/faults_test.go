package main

import (
	"bytes"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdguard/etcdguard/delta"
	"github.com/etcdguard/etcdguard/delta/deltatest"
	"github.com/etcdguard/etcdguard/internal/testharness"
	"github.com/etcdguard/etcdguard/snapshot"
	"github.com/etcdguard/etcdguard/store"
	s3store "github.com/etcdguard/etcdguard/store/s3"
)

// TestE2EStoreFaults runs the binary through an S3 that fails 10 % of its requests in
// every way it can (500, 503 SlowDown, resets, latency, responses cut short, stalls, each
// before or after the server did the work): saves, verifies, a restore and the daemon's
// delta flushes all succeed, and what they stored restores to exactly what etcd held. At
// 100 % each fails with a clear error, and leaves nothing behind.
func TestE2EStoreFaults(t *testing.T) {
	ctx := t.Context()
	upstream := testharness.StartVersityGW(t)
	p := testharness.StartS3FaultProxy(t, upstream, testharness.FaultSeed(t))
	e := testharness.StartEtcd(t)
	cli := e.Client(t)
	// 12 MiB of values that do not compress: three parts of 5 MiB.
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range 3000 {
		v := make([]byte, 4096)
		for j := range v {
			v[j] = byte(rng.Uint32())
		}
		must(cli.Put(ctx, fmt.Sprintf("/registry/configmaps/ns%d/cm%d", i%7, i), string(v)))
	}
	// The store as it is, past the proxy: what the test checks is never itself faulted.
	raw := s3store.NewFromClient(upstream.Client(t), upstream.Bucket, "faults", store.Options{})
	env := append(p.Server().Env(), "ETCDGUARD_STORE="+upstream.URL("faults"), "ETCDGUARD_CLUSTER=prod")
	common := []string{"--endpoints", e.Endpoints[0], "--s3-part-size", "5MiB", "--store-timeout", "4s"}
	cmd := func(args ...string) result { return run(t, env, append(args, common...)...) }

	p.Set(testharness.FaultRule{Rate: 0.1, Latency: 300 * time.Millisecond})
	var saved []snapshot.Manifest
	for range 3 {
		r := cmd("snapshot", "save", "-o", "json")
		if r.code != 0 {
			t.Fatalf("snapshot save with 10%% faults: exit %d\n%s", r.code, r.stderr)
		}
		saved = append(saved, decodeJSON[snapshot.Manifest](t, r))
	}
	list := decodeJSON[[]snapshot.Manifest](t, cmd("snapshot", "list", "-o", "json"))
	if len(list) != len(saved) {
		t.Fatalf("snapshot list shows %d snapshots, want the %d saved", len(list), len(saved))
	}
	for _, m := range saved {
		if r := cmd("snapshot", "verify", m.ID); r.code != 0 {
			t.Fatalf("snapshot verify %s with 10%% faults: exit %d\n%s", m.ID, r.code, r.stderr)
		}
	}
	// The daemon's delta flushes under the same faults, while etcd changes.
	addr := fmt.Sprintf("127.0.0.1:%d", testharness.FreePorts(t, 1)[0])
	d := startDaemon(t, env, addr, append([]string{"--schedule", "@every 1h", "--election-ttl", "2s", "--delta", "--delta-flush", "200ms"}, common...)...).cmd
	var last int64
	for i := range 300 {
		last = must(cli.Put(ctx, fmt.Sprintf("/registry/leases/kube-node-lease/n%d", i%9), fmt.Sprint(i))).Header.Revision
		time.Sleep(5 * time.Millisecond)
	}
	deltatest.Stored(t, raw, "prod", last)
	d.Process.Signal(syscall.SIGTERM)
	d.Wait()

	// A point in time between the snapshots and the end, restored through the faults.
	target := last - 100
	dataDir := filepath.Join(t.TempDir(), "r.etcd")
	ports := testharness.FreePorts(t, 2)
	peer := fmt.Sprintf("http://127.0.0.1:%d", ports[1])
	r := cmd("restore", "--revision", fmt.Sprint(target), "--name", "r", "--initial-cluster", "r="+peer, "--data-dir", dataDir)
	if r.code != 0 {
		t.Fatalf("restore --revision %d with 10%% faults: exit %d\n%s%s", target, r.code, r.stdout, r.stderr)
	}
	t.Logf("10%%: %d faults in %d requests: %v", p.InjectedTotal(), p.Requests(), p.Injected())
	p.Set()
	restored := testharness.StartEtcdProc(t, testharness.ProcConfig{Name: "r", DataDir: dataDir, PeerURL: peer, ClientURL: fmt.Sprintf("http://127.0.0.1:%d", ports[0])})
	if err := restored.WaitHealthy(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	sameKeys(t, must(newClient(t, []string{restored.Endpoint()}).Get(ctx, "", clientv3.WithFromKey())).Kvs,
		must(cli.Get(ctx, "", clientv3.WithFromKey(), clientv3.WithRev(target))).Kvs)
	restored.Stop()
	for kind, n := range p.Injected() {
		testharness.RecordFault(t, testharness.FaultRow{Area: "save, verify, restore --revision, daemon --delta (S3 versitygw)",
			Fault: string(kind) + " among 10% faults of every kind", Tries: n,
			Result: "3 saves, 3 verifies, the delta flushes and a restore succeeded; the restore equals etcd at that revision key for key"})
	}

	// A create whose answer a fault above lost leaves an upload no one knows the id of,
	// which a save's stale-upload sweep removes once it is --stale-upload-age old: swept
	// here, so what follows counts only what the failing commands leave.
	if n, err := raw.AbortIncomplete(ctx, "", 0); err != nil {
		t.Fatal(err)
	} else if n > 0 {
		t.Logf("%d upload(s) left by lost create answers under 10%% faults, for the stale-upload sweep", n)
	}

	// Every request fails (before the server sees it): each command fails, says so on one
	// line, and leaves nothing.
	for _, f := range []testharness.Fault{testharness.Fault500, testharness.FaultSlowDown, testharness.FaultReset, testharness.FaultStall} {
		before := p.InjectedTotal()
		p.Set(testharness.FaultRule{Rate: 1, Faults: []testharness.Fault{f}, Phase: testharness.PhaseBefore})
		start := time.Now()
		for _, args := range [][]string{
			{"snapshot", "save"},
			{"snapshot", "verify", saved[0].ID},
			{"restore", "--snapshot", saved[0].ID, "--name", "r", "--initial-cluster", "r=" + peer, "--data-dir", filepath.Join(t.TempDir(), "x.etcd")},
		} {
			r := cmd(args...)
			if r.code == 0 {
				t.Fatalf("%s succeeded with every store request failing (%s)", strings.Join(args[:2], " "), f)
			}
			line := r.errorLine(t)
			t.Logf("%s, %s: %s", strings.Join(args[:2], " "), f, line)
			if args[0] == "restore" {
				if _, err := os.Stat(args[len(args)-1]); !os.IsNotExist(err) {
					t.Errorf("a failed restore left %s behind (%v)", args[len(args)-1], err)
				}
			}
		}
		if d := time.Since(start); d > 90*time.Second {
			t.Errorf("three commands took %s to fail with %s on every request", d, f)
		}
		tries := p.InjectedTotal() - before
		p.Set()
		if list := decodeJSON[[]snapshot.Manifest](t, cmd("snapshot", "list", "-o", "json")); len(list) != len(saved) {
			t.Errorf("after a save failed with %s on every request, list shows %d snapshots, want %d", f, len(list), len(saved))
		}
		if n, err := raw.AbortIncomplete(ctx, "", 0); err != nil || n != 0 {
			t.Errorf("the failed save left %d open uploads (%v)", n, err)
		}
		testharness.RecordFault(t, testharness.FaultRow{Area: "save, verify, restore (S3 versitygw)",
			Fault: string(f) + " on every request", Tries: tries,
			Result: "each failed with one error line; no snapshot listed, no open upload, no data dir"})
	}

	// The daemon's delta flushes with every request failing for a while: capture says so,
	// stores nothing (no segment, no open upload), and once the store answers again resumes
	// from the last stored revision: the segments chain with no gap and no duplicate.
	dp := startDaemon(t, env, "", append([]string{"--schedule", "@every 1h", "--election-ttl", "2s", "--delta", "--delta-flush", "200ms"}, common...)...)
	deltatest.Stored(t, raw, "prod", must(cli.Put(ctx, "/registry/leases/kube-node-lease/flush", "0")).Header.Revision)
	latest := func() int64 {
		m, err := delta.Latest(ctx, raw, "prod")
		if err != nil || m == nil {
			t.Fatalf("the last stored delta: %v %v", m, err)
		}
		return m.Revision
	}
	interrupted := func() int {
		b, _ := os.ReadFile(dp.log)
		return bytes.Count(b, []byte("delta capture interrupted"))
	}
	before := p.InjectedTotal()
	p.Set(testharness.FaultRule{Rate: 1, Faults: []testharness.Fault{testharness.Fault500}, Phase: testharness.PhaseBefore})
	wasInterrupted := interrupted()
	put := func(n int) {
		for i := range n {
			last = must(cli.Put(ctx, fmt.Sprintf("/registry/leases/kube-node-lease/n%d", i%9), fmt.Sprint(i))).Header.Revision
		}
	}
	put(100)
	waitFor(t, time.Minute, "the daemon to report the failing flush", func() bool { return interrupted() > wasInterrupted })
	// A flush already past the proxy when the faults began may land; none after.
	stored := latest()
	put(50)
	time.Sleep(time.Second)
	if got := latest(); got != stored || got >= last {
		t.Errorf("with every store request failing, the last stored delta moved from revision %d to %d (etcd at %d)", stored, got, last)
	}
	if n, err := raw.AbortIncomplete(ctx, "", 0); err != nil || n != 0 {
		t.Errorf("the failing flushes left %d open uploads (%v)", n, err)
	}
	tries := p.InjectedTotal() - before
	p.Set()
	segs := deltatest.Stored(t, raw, "prod", last)
	for i := 1; i < len(segs); i++ {
		if segs[i].FromRev != segs[i-1].ToRev+1 {
			t.Fatalf("after the store came back, delta segments %d-%d and %d-%d: a gap or a duplicate", segs[i-1].FromRev, segs[i-1].ToRev, segs[i].FromRev, segs[i].ToRev)
		}
	}
	dp.cmd.Process.Signal(syscall.SIGTERM)
	dp.cmd.Wait()
	testharness.RecordFault(t, testharness.FaultRow{Area: "daemon --delta (S3 versitygw)", Fault: "500 on every request for a while", Tries: tries,
		Result: "capture reported it and stored nothing (no segment, no open upload); once the store answered it stored every revision, segments chained with no gap or duplicate"})
}
