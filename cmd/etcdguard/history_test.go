package main

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"syscall"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdguard/etcdguard/delta"
	"github.com/etcdguard/etcdguard/delta/deltatest"
	"github.com/etcdguard/etcdguard/internal/testharness"
	"github.com/etcdguard/etcdguard/snapshot"
	"github.com/etcdguard/etcdguard/store/file"
)

// One history per timeline, across restores: the daemon captures a cluster that is
// restored twice onto the same endpoints while it keeps running, first to an earlier
// revision with the old cluster token and no --bump-revision (same cluster ID, revisions
// repeat), then with --bump-revision --mark-compacted and a fresh token. Every history gets
// its own timeline, nothing of one is replayed onto another, no EtcdDeltaGap is counted,
// and points of every history restore exactly, key for key.
func TestE2EHistoriesAcrossRestores(t *testing.T) {
	ctx := context.Background()
	ports := testharness.FreePorts(t, 3)
	clientURL, peerURL := fmt.Sprintf("http://127.0.0.1:%d", ports[0]), fmt.Sprintf("http://127.0.0.1:%d", ports[1])
	const token = "prod-token"
	etcd := testharness.StartEtcdProc(t, testharness.ProcConfig{Name: "m1", DataDir: filepath.Join(t.TempDir(), "m1.etcd"),
		ClientURL: clientURL, PeerURL: peerURL, InitialClusterToken: token})
	if err := etcd.WaitHealthy(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	cli := newClient(t, []string{clientURL})
	dir := t.TempDir()
	st := must(file.Open(dir))
	storeURL := "file://" + dir
	metrics := fmt.Sprintf("127.0.0.1:%d", ports[2])
	d := startDaemon(t, nil, metrics, "--cluster", "prod", "--store", storeURL, "--endpoints", clientURL,
		"--schedule", "@every 1h", "--election-ttl", "3s", "--delta", "--delta-flush", "200ms")

	writes := func(prefix string, n int) int64 {
		var rev int64
		for i := range n {
			rev = must(cli.Put(ctx, fmt.Sprintf("/registry/%s/k%d", prefix, i%7), fmt.Sprintf("%s-%d", prefix, i))).Header.Revision
			if i%5 == 0 {
				rev = must(cli.Delete(ctx, fmt.Sprintf("/registry/%s/k%d", prefix, (i+3)%7))).Header.Revision
			}
		}
		return rev
	}
	// stateAt reads the live cluster's keyspace at rev, the truth a restore must equal.
	stateAt := func(rev int64) []*mvccpb.KeyValue {
		return must(cli.Get(ctx, "", clientv3.WithFromKey(), clientv3.WithRev(rev))).Kvs
	}
	// instant returns a time between two writes, and the revision etcd was at then.
	instant := func(prefix string) (time.Time, int64) {
		writes(prefix+"-before", 10)
		time.Sleep(700 * time.Millisecond)
		at := time.Now().UTC()
		rev := must(cli.Get(ctx, "x")).Header.Revision
		time.Sleep(700 * time.Millisecond)
		writes(prefix+"-after", 10)
		return at, rev
	}
	historyOf := func(rev int64) string {
		t.Helper()
		segs := deltatest.Stored(t, st, "prod", rev)
		return segs[len(segs)-1].History
	}

	// History 1.
	waitSnapshots(t, st, 1)
	writes("h1a", 30)
	oldAt, oldAtRev := instant("h1")
	oldState := stateAt(oldAtRev)
	p := writes("h1b", 20) // the point the first restore goes back to
	pState := stateAt(p)
	x := writes("h1c", 40) // what the old history reaches beyond it
	h1 := historyOf(x)

	// Restore 1: back to revision p, old token and peer URL (the same cluster ID), no bump.
	restored := filepath.Join(t.TempDir(), "r1.etcd")
	r := run(t, nil, "restore", "--store", storeURL, "--revision", fmt.Sprint(p), "--name", "m1", "--initial-cluster", "m1="+peerURL,
		"--initial-cluster-token", token, "--data-dir", restored)
	if r.code != 0 {
		t.Fatalf("restore --revision %d: exit %d\n%s%s", p, r.code, r.stdout, r.stderr)
	}
	etcd.Stop()
	etcd = testharness.StartEtcdProc(t, testharness.ProcConfig{Name: "m1", DataDir: restored, ClientURL: clientURL, PeerURL: peerURL, InitialClusterToken: token})
	if err := etcd.WaitHealthy(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	// (the daemon's election may have written a revision or two already)
	if got := must(cli.Get(ctx, "x")).Header.Revision; got < p || got >= x {
		t.Fatalf("the restored cluster is at revision %d, want %d", got, p)
	}
	h2snap := waitNewHistory(t, st, h1)
	// New writes take the new history past the revisions the old one reached: the same
	// numbers now mean other changes.
	writes("h2a", int(x-p)+20)
	newAt, newAtRev := instant("h2")
	newState := stateAt(newAtRev)
	y := writes("h2b", 20)
	h2 := historyOf(y)
	if h2 == h1 || h2 != h2snap.History {
		t.Fatalf("capture after the restore writes history %s; the old one is %s, the new snapshot's %s", h2, h1, h2snap.History)
	}
	if segs := must(delta.Segments(ctx, st, "prod", h2, 0, nil)); segs[0].FromRev != h2snap.Revision+1 || len(delta.Gaps(segs)) > 0 {
		t.Fatalf("history %s's segments start at %d with gaps %v; want right after its snapshot at %d", h2, segs[0].FromRev, delta.Gaps(segs), h2snap.Revision)
	}
	// x exists in both histories: a bare --revision is refused, naming both.
	r = run(t, nil, "restore", "--store", storeURL, "--revision", fmt.Sprint(x), "--name", "m1", "--initial-cluster", "m1="+peerURL,
		"--data-dir", filepath.Join(t.TempDir(), "ambiguous.etcd"))
	if line := r.errorLine(t); r.code != exitRefused || !strings.Contains(line, "--history "+h1) || !strings.Contains(line, "--history "+h2) {
		t.Fatalf("restore --revision %d in two histories: exit %d, %q", x, r.code, line)
	}
	restoreEquals(t, storeURL, newState, "--at", newAt.Format(time.RFC3339Nano))
	restoreEquals(t, storeURL, stateAt(x), "--revision", fmt.Sprint(x), "--history", h2)
	restoreEquals(t, storeURL, oldState, "--at", oldAt.Format(time.RFC3339Nano))
	restoreEquals(t, storeURL, pState, "--revision", fmt.Sprint(p), "--history", h1)

	// Restore 2: with --bump-revision --mark-compacted and a fresh token.
	q := writes("h2c", 10)
	qState := stateAt(q)
	writes("h2d", 10)
	historyOf(must(cli.Get(ctx, "x")).Header.Revision)
	restored = filepath.Join(t.TempDir(), "r2.etcd")
	r = run(t, nil, "restore", "--store", storeURL, "--revision", fmt.Sprint(q), "--history", h2, "--name", "m1", "--initial-cluster", "m1="+peerURL,
		"--bump-revision", "1000000", "--mark-compacted", "--data-dir", restored)
	if r.code != 0 {
		t.Fatalf("restore --revision %d --bump-revision: exit %d\n%s%s", q, r.code, r.stdout, r.stderr)
	}
	etcd.Stop()
	etcd = testharness.StartEtcdProc(t, testharness.ProcConfig{Name: "m1", DataDir: restored, ClientURL: clientURL, PeerURL: peerURL})
	if err := etcd.WaitHealthy(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	h3snap := waitNewHistory(t, st, h2)
	z1 := writes("h3a", 20)
	z1State := stateAt(z1)
	z := writes("h3b", 20)
	if h3 := historyOf(z); h3 != h3snap.History || h3 == h2 {
		t.Fatalf("capture after the second restore writes history %s, want %s", h3, h3snap.History)
	}
	restoreEquals(t, storeURL, z1State, "--revision", fmt.Sprint(z1))
	restoreEquals(t, storeURL, qState, "--revision", fmt.Sprint(q), "--history", h2)

	// Idle: nothing written for a few seconds; a point a second ago is still exact, because
	// capture records how far it saw etcd. A point past that is refused, writing nothing.
	time.Sleep(2 * time.Second)
	idleAt := time.Now().Add(-time.Second)
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(100 * time.Millisecond) { // the daemon records it every second or so
		if o := must(delta.ReadObserved(ctx, st, "prod", h3snap.History)); o != nil && !o.Time.Before(idleAt) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the daemon recorded no observation of the idle cluster after %s", idleAt.Format(time.RFC3339Nano))
		}
	}
	restoreEquals(t, storeURL, stateAt(z), "--at", idleAt.UTC().Format(time.RFC3339Nano))
	future := filepath.Join(t.TempDir(), "future", "m1.etcd")
	r = run(t, nil, "restore", "--store", storeURL, "--at", time.Now().Add(time.Hour).UTC().Format(time.RFC3339), "--name", "m1",
		"--initial-cluster", "m1="+peerURL, "--data-dir", future)
	if line := r.errorLine(t); r.code != exitRefused || !strings.Contains(line, fmt.Sprintf("latest reachable point from snapshot %s is revision %d", h3snap.ID, z)) {
		t.Fatalf("restore --at an hour ahead: exit %d, %q", r.code, line)
	}
	if _, err := os.Stat(filepath.Dir(future)); !os.IsNotExist(err) {
		t.Fatalf("the refused restore left %s: %v", filepath.Dir(future), err)
	}

	// The timeline and the snapshot list show the boundaries; a restore is not a loss of
	// deltas, so nothing counted toward EtcdDeltaGap.
	r = run(t, nil, "timeline", "--store", storeURL)
	if n := strings.Count(r.stdout, "\nhistory "); r.code != 0 || n != 3 {
		t.Fatalf("timeline shows %d history starts, want 3:\n%s%s", n, r.stdout, r.stderr)
	}
	if r = run(t, nil, "snapshot", "list", "--store", storeURL); strings.Count(r.stdout, "etcd was restored before this") != 2 {
		t.Fatalf("snapshot list does not show the two restores:\n%s", r.stdout)
	}
	body := scrape(t, "http://"+metrics+"/metrics")
	if !regexp.MustCompile(`etcdguard_delta_interruptions_total\{[^}]*reason="new_history"[^}]*\} 2\n`).MatchString(body) ||
		!regexp.MustCompile(`etcdguard_delta_interruptions_total\{[^}]*reason="compacted"[^}]*\} 0\n`).MatchString(body) {
		t.Fatalf("interruptions counted:\n%s", grep(body, "interruptions"))
	}
	d.cmd.Process.Signal(syscall.SIGTERM)
	d.cmd.Wait()
}

// restoreEquals restores the point args name into a fresh member and compares its keyspace
// with want, key for key.
func restoreEquals(t *testing.T, storeURL string, want []*mvccpb.KeyValue, args ...string) {
	t.Helper()
	ports := testharness.FreePorts(t, 2)
	peer := fmt.Sprintf("http://127.0.0.1:%d", ports[1])
	dataDir := filepath.Join(t.TempDir(), "check.etcd")
	r := run(t, nil, append([]string{"restore", "--store", storeURL, "--name", "c", "--initial-cluster", "c=" + peer, "--data-dir", dataDir}, args...)...)
	if r.code != 0 {
		t.Fatalf("restore %v: exit %d\n%s%s", args, r.code, r.stdout, r.stderr)
	}
	p := testharness.StartEtcdProc(t, testharness.ProcConfig{Name: "c", DataDir: dataDir, PeerURL: peer, ClientURL: fmt.Sprintf("http://127.0.0.1:%d", ports[0])})
	defer p.Stop()
	if err := p.WaitHealthy(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	got := must(newClient(t, []string{p.Endpoint()}).Get(context.Background(), "", clientv3.WithFromKey())).Kvs
	t.Logf("restore %v: %d keys", args, len(got))
	sameKeys(t, got, want)
}

func waitSnapshots(t *testing.T, st *file.Store, n int) []*snapshot.Manifest {
	t.Helper()
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		snaps := must(snapshot.List(context.Background(), st, "prod"))
		if len(snaps) >= n {
			return snaps
		}
		if time.Now().After(deadline) {
			t.Fatalf("%d snapshots after 30s, want %d", len(snaps), n)
		}
	}
}

// waitNewHistory waits for the full snapshot that starts the history after old.
func waitNewHistory(t *testing.T, st *file.Store, old string) *snapshot.Manifest {
	t.Helper()
	for deadline := time.Now().Add(60 * time.Second); ; time.Sleep(100 * time.Millisecond) {
		snaps := must(snapshot.List(context.Background(), st, "prod"))
		if snaps[0].History != old {
			return snaps[0]
		}
		if time.Now().After(deadline) {
			t.Fatalf("no snapshot of a new history within 60s after etcd was restored (the newest is of history %s)", old)
		}
	}
}

func scrape(t *testing.T, url string) string {
	t.Helper()
	resp, err := http.Get(url)
	if err != nil {
		t.Fatal(err)
	}
	defer resp.Body.Close()
	return string(must(io.ReadAll(resp.Body)))
}

func grep(s, sub string) string {
	var out []string
	for _, l := range strings.Split(s, "\n") {
		if strings.Contains(l, sub) {
			out = append(out, l)
		}
	}
	return strings.Join(out, "\n")
}
