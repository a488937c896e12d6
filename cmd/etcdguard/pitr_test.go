package main

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdguard/etcdguard/delta/deltatest"
	"github.com/etcdguard/etcdguard/internal/loadgen"
	"github.com/etcdguard/etcdguard/internal/testharness"
	"github.com/etcdguard/etcdguard/store/file"
)

// The outage, undone: the daemon captures deltas, someone deletes most keys with a range
// delete, and `restore --at` a moment before it brings every key back as it was.
func TestE2EPointInTimeRestore(t *testing.T) {
	ctx := context.Background()
	e := testharness.StartEtcd(t)
	cli := e.Client(t)
	dir := t.TempDir()
	st, err := file.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	storeURL := "file://" + dir
	d := startDaemon(t, nil, "", "--cluster", "prod", "--store", storeURL, "--endpoints", e.Endpoints[0],
		"--schedule", "@every 1h", "--election-ttl", "2s", "--delta", "--delta-flush", "200ms").cmd
	// The daemon's first full snapshot comes first; then the cluster keeps changing.
	time.Sleep(time.Second)
	_, err = loadgen.LoadK8sKeyspace(ctx, cli, loadgen.Options{Keys: 1500, Seed: 9})
	if err != nil {
		t.Fatal(err)
	}
	lease := must(cli.Grant(ctx, 600))
	for i := range 20 {
		must(cli.Put(ctx, fmt.Sprintf("/registry/leases/kube-node-lease/n%d", i%4), fmt.Sprint(i)))
		must(cli.Txn(ctx).Then(clientv3.OpPut(fmt.Sprintf("/registry/events/default/e%d", i), "event", clientv3.WithLease(lease.ID)),
			clientv3.OpPut(fmt.Sprintf("/registry/pods/default/p%d", i%3), fmt.Sprint(i)),
			clientv3.OpDelete(fmt.Sprintf("/registry/events/default/e%d", i-3))).Commit())
	}
	before := must(cli.Get(ctx, "x")).Header.Revision
	deltatest.Stored(t, st, "prod", before)
	time.Sleep(1200 * time.Millisecond)
	at := time.Now().UTC().Truncate(time.Second)
	time.Sleep(1200 * time.Millisecond)
	// The incident: etcdctl del KEY prefix.
	del := must(cli.Delete(ctx, "/registry/certificatesigningrequest", clientv3.WithRange("prefix")))
	if del.Deleted < 1000 {
		t.Fatalf("the range delete removed only %d keys", del.Deleted)
	}
	deltatest.Stored(t, st, "prod", del.Header.Revision)
	d.Process.Signal(syscall.SIGTERM)
	d.Wait()

	ports := testharness.FreePorts(t, 2)
	peer := fmt.Sprintf("http://127.0.0.1:%d", ports[1])
	dataDir := filepath.Join(t.TempDir(), "r.etcd")
	r := run(t, nil, "restore", "--store", storeURL, "--at", at.Format(time.RFC3339), "--name", "r", "--initial-cluster", "r="+peer, "--data-dir", dataDir)
	if r.code != 0 || !strings.Contains(r.stdout, fmt.Sprintf("the restored state is revision %d", before)) {
		t.Fatalf("restore --at: exit %d\n%s%s", r.code, r.stdout, r.stderr)
	}
	p := testharness.StartEtcdProc(t, testharness.ProcConfig{Name: "r", DataDir: dataDir, PeerURL: peer, ClientURL: fmt.Sprintf("http://127.0.0.1:%d", ports[0])})
	if err := p.WaitHealthy(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	rcli := newClient(t, []string{p.Endpoint()})
	want := must(cli.Get(ctx, "", clientv3.WithFromKey(), clientv3.WithRev(before)))
	got := must(rcli.Get(ctx, "", clientv3.WithFromKey()))
	if len(got.Kvs) != len(want.Kvs) || got.Header.Revision != before {
		t.Fatalf("restored %d keys at revision %d; before the delete there were %d at %d", len(got.Kvs), got.Header.Revision, len(want.Kvs), before)
	}
	sameKeys(t, got.Kvs, want.Kvs)
	if ttl := must(rcli.TimeToLive(ctx, lease.ID)); ttl.GrantedTTL != 600 {
		t.Fatalf("lease %x restored with TTL %d, want the original 600", lease.ID, ttl.GrantedTTL)
	}
	p.Stop()

	// --revision: a point in the middle of a segment.
	segs := deltatest.Stored(t, st, "prod", del.Header.Revision)
	var mid int64
	for _, s := range segs {
		if s.ToRev-s.FromRev >= 2 && s.ToRev < del.Header.Revision {
			mid = (s.FromRev + s.ToRev) / 2
		}
	}
	if mid == 0 {
		t.Fatal("no segment of three revisions or more to restore into")
	}
	dataDir = filepath.Join(t.TempDir(), "mid.etcd")
	r = run(t, nil, "restore", "--store", storeURL, "--revision", fmt.Sprint(mid), "--name", "r", "--initial-cluster", "r="+peer, "--data-dir", dataDir)
	if r.code != 0 || !strings.Contains(r.stdout, fmt.Sprintf("the restored state is revision %d", mid)) {
		t.Fatalf("restore --revision %d: exit %d\n%s%s", mid, r.code, r.stdout, r.stderr)
	}
	p = testharness.StartEtcdProc(t, testharness.ProcConfig{Name: "r", DataDir: dataDir, PeerURL: peer, ClientURL: fmt.Sprintf("http://127.0.0.1:%d", ports[0])})
	if err := p.WaitHealthy(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	rcli = newClient(t, []string{p.Endpoint()})
	sameKeys(t, must(rcli.Get(ctx, "", clientv3.WithFromKey())).Kvs, must(cli.Get(ctx, "", clientv3.WithFromKey(), clientv3.WithRev(mid))).Kvs)
}

// sameKeys compares two keyspaces key by key: value, create and mod revision, version, lease.
func sameKeys(t *testing.T, got, want []*mvccpb.KeyValue) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("restored %d keys, want %d", len(got), len(want))
	}
	for i, kv := range want {
		g := got[i]
		if string(g.Key) != string(kv.Key) || string(g.Value) != string(kv.Value) || g.ModRevision != kv.ModRevision ||
			g.CreateRevision != kv.CreateRevision || g.Version != kv.Version || g.Lease != kv.Lease {
			t.Fatalf("key %s differs after the restore: %v, want %v", kv.Key, g, kv)
		}
	}
}
