package daemon

import (
	"context"
	"errors"
	"io"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdguard/etcdguard/alerting"
	"github.com/etcdguard/etcdguard/internal/testharness"
	"github.com/etcdguard/etcdguard/snapshot"
	"github.com/etcdguard/etcdguard/store"
	"github.com/etcdguard/etcdguard/store/file"
)

// objectReads steers reads of the objects whose keys hold match: each blocks until its
// context ends (stall), or fails at once as a store error that is no corruption.
type objectReads struct {
	store.Store
	match string
	stall bool
	got   chan struct{}
}

func (s *objectReads) Get(ctx context.Context, key string) (io.ReadCloser, error) {
	if !strings.Contains(key, s.match) {
		return s.Store.Get(ctx, key)
	}
	select {
	case s.got <- struct{}{}:
	default:
	}
	if !s.stall {
		return nil, errors.New("read " + key + ": connection reset by peer")
	}
	<-ctx.Done()
	return nil, ctx.Err()
}

func counter(t *testing.T, d *Daemon, name, reason string) float64 {
	t.Helper()
	families, err := d.m.reg.Gather()
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range families {
		if f.GetName() != name {
			continue
		}
		for _, m := range f.GetMetric() {
			for _, l := range m.GetLabel() {
				if l.GetName() == "reason" && l.GetValue() == reason {
					return m.GetCounter().GetValue()
				}
			}
		}
	}
	return 0
}

// A run stopped by a graceful stop or a lost lease while it verifies is no failed run: a
// rolling update must not count towards, or page, EtcdSnapshotFailing.
func TestCancelledRunIsNoFailure(t *testing.T) {
	e := testharness.StartEtcd(t)
	fs, err := file.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	st := &objectReads{Store: fs, match: ".db", stall: true, got: make(chan struct{}, 1)}
	cfg := testConfig(e, st, "@every 1h")
	cfg.Verify = true
	d, err := New(cfg)
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	done := make(chan bool)
	go func() { done <- d.snapshotRun(ctx) }()
	<-st.got // verifying
	cancel()
	if ok := <-done; ok {
		t.Fatal("a cancelled run reported success")
	}
	if n, c := d.failing.Load(), counter(t, d, "etcdguard_snapshot_failures_total", "verify"); n != 0 || c != 0 {
		t.Fatalf("a cancelled verify counted as failed run #%d (failures_total{verify} %v)", n, c)
	}
}

// A newest snapshot that cannot be read to verify it (the store fails, an identity this
// daemon lacks), though a tick was missed since: catch-up still snapshots at once, and
// counts no failed run for what was no snapshot of its.
func TestCatchUpWhenVerifyCannotRead(t *testing.T) {
	e := testharness.StartEtcd(t)
	fs, err := file.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	at := time.Now().Add(-3 * time.Hour)
	putManifest(t, fs, at)
	// Reads of its object fail; the catch-up snapshot's own verification reads through.
	st := &objectReads{Store: fs, match: at.UTC().Format("20060102T150405Z") + "-000000.db", got: make(chan struct{}, 1)}
	cfg := testConfig(e, st, "@every 1h")
	cfg.NoCatchUp, cfg.Verify = false, true
	d := runDaemon(t, cfg)
	for deadline := time.Now().Add(testharness.Budget(20 * time.Second)); ; time.Sleep(50 * time.Millisecond) {
		if list := must(snapshot.List(context.Background(), fs, "prod")); len(list) == 2 && list[0].Verification == snapshot.Verified {
			break
		}
		if time.Now().After(deadline) {
			var got []string
			for _, m := range must(snapshot.List(context.Background(), fs, "prod")) {
				got = append(got, m.ID+" "+m.Verification)
			}
			t.Fatalf("no verified catch-up snapshot within 20s of a newest one that could not be read (failures in a row %d; listed %q)", d.failing.Load(), got)
		}
	}
	if c := counter(t, d, "etcdguard_snapshot_failures_total", "verify"); c != 0 {
		t.Fatalf("failures_total{verify} %v for a snapshot that could not be read", c)
	}
}

// With quorum lost (2 of 3 members gone) no daemon can lead; every daemon must page, not
// hang asking etcd whether one leads while it holds the check lock.
func TestQuorumLossStillPages(t *testing.T) {
	c := testharness.StartEtcdCluster(t, 3)
	st, err := file.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	putManifest(t, st, time.Now().Add(-10*time.Hour))
	c.Kill(1)
	c.Kill(2)
	hook := newReceiver(t)
	cfg := testConfig(&testharness.Etcd{Endpoints: []string{c.Members[0].Endpoint()}}, st, "@every 1h", alerting.Webhook{URL: hook.url})
	cfg.Etcd.CommandTimeout = 5 * time.Second
	runDaemon(t, cfg)
	for deadline := time.Now().Add(testharness.Budget(40 * time.Second)); ; time.Sleep(100 * time.Millisecond) {
		hook.mu.Lock()
		paged := strings.Contains(strings.Join(hook.bodies, "\n"), alerting.SnapshotTooOld.Name)
		hook.mu.Unlock()
		if paged {
			return
		}
		if time.Now().After(deadline) {
			t.Fatal("with quorum lost, no page within 40s of a 10h-old snapshot")
		}
	}
}

// EtcdSnapshotFailing paged by a leader that then loses its lease is resolved once the
// new leader's run succeeds (a snapshot newer than its last failure), by the daemon that
// paged it, though another daemon leads now.
func TestFailingResolvedAfterHandover(t *testing.T) {
	ctx := context.Background()
	e := testharness.StartEtcd(t)
	cli := e.Client(t)
	fs, err := file.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	outA := &recorder{}
	cfgA := testConfig(e, &gatedStore{Store: fs}, "@every 1s", outA)
	cfgA.AlertAfter = 2
	runDaemon(t, cfgA)
	for deadline := time.Now().Add(testharness.Budget(20 * time.Second)); outA.sent(alerting.SnapshotFailing, false, 0) == 0; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("daemon A's runs fail and no EtcdSnapshotFailing: %v", outA.since(0))
		}
	}
	key := "/etcdguard/prod/leader/"
	leaders := must(cli.Get(ctx, key, clientv3.WithPrefix())).Kvs
	runDaemon(t, testConfig(e, fs, "@every 1s")) // B, whose runs succeed, waits for the lease
	for deadline := time.Now().Add(testharness.Budget(10 * time.Second)); len(must(cli.Get(ctx, key, clientv3.WithPrefix())).Kvs) < 2; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatal("daemon B is not campaigning")
		}
	}
	must(cli.Revoke(ctx, clientv3.LeaseID(leaders[0].Lease))) // A's lease, as etcd drops it
	for deadline := time.Now().Add(testharness.Budget(20 * time.Second)); outA.sent(alerting.SnapshotFailing, true, 0) == 0; time.Sleep(50 * time.Millisecond) {
		if time.Now().After(deadline) {
			t.Fatalf("EtcdSnapshotFailing, paged by A, not resolved 20s after B took over: %v", outA.since(0))
		}
	}
}
