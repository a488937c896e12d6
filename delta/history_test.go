package delta_test

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdguard/etcdguard/delta"
	"github.com/etcdguard/etcdguard/internal/testharness"
	"github.com/etcdguard/etcdguard/restore"
	"github.com/etcdguard/etcdguard/snapshot"
	"github.com/etcdguard/etcdguard/store/file"
)

// Check tells a restored cluster from the one it was restored from, in every way a
// restore can look like the old cluster: the same cluster token (so the same cluster ID),
// revisions that go back, or that go forward again to the same numbers with other
// content, a bumped revision; and it does not mistake the same cluster for another.
func TestCheckAfterRestore(t *testing.T) {
	for _, tc := range []struct {
		name       string
		restore    bool
		freshToken bool
		bump       uint64
		writesPast int  // after the restore, writes that take the revision past the mark
		deleteLast bool // the mark's revision only deleted a key (an expired Event's lease)
		deadMember bool // the client also names a member that does not answer
		want       string
	}{
		{name: "same cluster, more writes", writesPast: 30, want: ""},
		{name: "old token, no bump", restore: true, want: "revision went back"},
		{name: "old token, no bump, revisions written again", restore: true, writesPast: 30, want: "went back"},
		// The new history's raft log outgrows the old one's: the keys written at the
		// mark's revision tell.
		{name: "old token, no bump, more raft entries than before", restore: true, writesPast: 100, want: "holds other changes"},
		{name: "old token, no bump, a deleting revision written again", restore: true, writesPast: 100, deleteLast: true, want: "holds other changes"},
		{name: "old token, bump", restore: true, bump: 1000000, want: "raft log went back"},
		// A member not answering: the leader's raft log still bounds everything committed.
		{name: "old token, bump, a member not answering", restore: true, bump: 1000000, deadMember: true, want: "raft log went back"},
		{name: "same cluster, a member not answering", deadMember: true, writesPast: 30, want: ""},
		{name: "fresh token", restore: true, freshToken: true, want: "cluster ID"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			ctx := context.Background()
			ports := testharness.FreePorts(t, 2)
			cfg := testharness.ProcConfig{Name: "m1", DataDir: filepath.Join(t.TempDir(), "m1.etcd"), InitialClusterToken: "tok",
				ClientURL: fmt.Sprintf("http://127.0.0.1:%d", ports[0]), PeerURL: fmt.Sprintf("http://127.0.0.1:%d", ports[1])}
			p := testharness.StartEtcdProc(t, cfg)
			if err := p.WaitHealthy(30 * time.Second); err != nil {
				t.Fatal(err)
			}
			eps := []string{cfg.ClientURL}
			if tc.deadMember {
				eps = append(eps, fmt.Sprintf("http://127.0.0.1:%d", testharness.FreePorts(t, 1)[0]))
			}
			cli, err := clientv3.New(clientv3.Config{Endpoints: eps, DialTimeout: 5 * time.Second})
			if err != nil {
				t.Fatal(err)
			}
			defer cli.Close()
			st, err := file.Open(t.TempDir())
			if err != nil {
				t.Fatal(err)
			}
			save := func() *snapshot.Manifest {
				m, err := snapshot.Save(ctx, cli, st, snapshot.SaveOptions{Cluster: "c1", Endpoint: cfg.ClientURL, Compression: "zstd", Level: "fastest",
					History: delta.Identify(cli, st, "c1")})
				if err != nil {
					t.Fatal(err)
				}
				return m
			}
			write := func(prefix string, n int) {
				for i := range n {
					if _, err := cli.Put(ctx, fmt.Sprintf("/registry/%s/%d", prefix, i%9), fmt.Sprint(i)); err != nil {
						t.Fatal(err)
					}
				}
			}
			write("a", 20)
			base := save()
			write("b", 20)
			if tc.deleteLast {
				if _, err := cli.Delete(ctx, "/registry/b/1"); err != nil {
					t.Fatal(err)
				}
			}
			tip := save() // the mark: where the stored history ends
			if tip.History != base.History || len(tip.Tail) == 0 {
				t.Fatalf("snapshots of one history: %s and %s; tail %v", base.History, tip.History, tip.Tail)
			}
			if tc.restore {
				dir := filepath.Join(t.TempDir(), "restored.etcd")
				opts := restore.Options{Members: []restore.Member{{Name: "m1", PeerURLs: []string{cfg.PeerURL}, DataDir: dir}},
					InitialCluster: "m1=" + cfg.PeerURL, Token: "tok", BumpRevision: tc.bump, MarkCompacted: tc.bump > 0}
				if tc.freshToken {
					opts.Token = ""
				}
				if _, err := restore.Restore(ctx, st, base, opts); err != nil {
					t.Fatal(err)
				}
				p.Stop()
				cfg.DataDir = dir
				p = testharness.StartEtcdProc(t, cfg)
				if err := p.WaitHealthy(30 * time.Second); err != nil {
					t.Fatal(err)
				}
			}
			write("c", tc.writesPast)
			mark := &delta.Mark{History: tip.History, ClusterID: tip.ClusterID, Revision: tip.Revision, RaftIndex: tip.RaftIndex, Tail: tip.Tail, Snapshot: tip.ID}
			v, err := delta.Check(ctx, cli, mark)
			if err != nil {
				t.Fatal(err)
			}
			if tc.want == "" && v.Changed != "" || tc.want != "" && !strings.Contains(v.Changed, tc.want) {
				t.Fatalf("Check = %q (etcd at revision %d, raft index %d; mark %d, %d), want %q", v.Changed, v.Revision, v.RaftIndex, mark.Revision, mark.RaftIndex, tc.want)
			}
			t.Logf("%s", v.Changed)
			// A snapshot taken now belongs to the mark's history exactly when Check says so.
			if now := save(); (now.History == tip.History) != (v.Changed == "") {
				t.Fatalf("a snapshot after the check is of history %s; the mark's is %s", now.History, tip.History)
			}
		})
	}
}

// After a compaction past the mark, with no content left to compare: the raft log decides,
// if the client reaches every member or the leader. Through a follower alone (the others
// not answering) nothing can tell the same history from a restore with the old token and
// --bump-revision, and Check says it is undecided rather than "the same".
func TestCheckUndecidedThroughAFollower(t *testing.T) {
	ctx := context.Background()
	c := testharness.StartEtcdCluster(t, 3)
	cli := c.Client(t)
	var mark *delta.Mark
	for i := range 20 {
		r, err := cli.Put(ctx, fmt.Sprintf("/registry/a/%d", i), "x")
		if err != nil {
			t.Fatal(err)
		}
		if i == 9 {
			kv := must(cli.Get(ctx, fmt.Sprintf("/registry/a/%d", i))).Kvs[0]
			mark = &delta.Mark{History: "h", ClusterID: fmt.Sprintf("%x", r.Header.ClusterId), Revision: r.Header.Revision, RaftIndex: 1,
				Tail: []snapshot.TailKey{{Key: kv.Key, Sum: "whatever: compacted before it is compared"}}}
		}
	}
	now := must(cli.Get(ctx, "x")).Header.Revision
	must(cli.Compact(ctx, now, clientv3.WithCompactPhysical()))
	var follower string
	for _, ep := range c.Endpoints() {
		if st := must(cli.Status(ctx, ep)); st.Leader != st.Header.MemberId {
			follower = ep
			break
		}
	}
	dead := fmt.Sprintf("http://127.0.0.1:%d", testharness.FreePorts(t, 1)[0])
	for _, tc := range []struct {
		name      string
		endpoints []string
		undecided bool
	}{
		{"every member", c.Endpoints(), false},
		{"a follower, another member not answering", []string{follower, dead}, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			fcli := must(clientv3.New(clientv3.Config{Endpoints: tc.endpoints, DialTimeout: 5 * time.Second}))
			defer fcli.Close()
			v, err := delta.Check(ctx, fcli, mark)
			if err != nil || v.Changed != "" || !v.Compacted || v.Undecided != tc.undecided {
				t.Fatalf("Check = %+v, %v; want compacted, undecided %v", v, err, tc.undecided)
			}
		})
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}
