package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdguard/etcdguard/internal/loadgen"
	"github.com/etcdguard/etcdguard/internal/testharness"
	"github.com/etcdguard/etcdguard/restore"
	"github.com/etcdguard/etcdguard/snapshot"
)

// The runbook's path with real processes: a 3-member etcd, a snapshot in a real S3
// server, `restore --all-members`, and the 3 restored members started as real etcd
// processes: healthy, a new cluster ID, and every key as it was at the snapshot.
func TestE2ERestore(t *testing.T) {
	srv := testharness.StartVersityGW(t)
	src := testharness.StartEtcdCluster(t, 3)
	cli := src.Client(t)
	ctx := context.Background()
	if _, err := loadgen.LoadK8sKeyspace(ctx, cli, loadgen.Options{Keys: 3000, Seed: 7}); err != nil {
		t.Fatal(err)
	}
	for i := range 30 { // several versions of some keys
		if _, err := cli.Put(ctx, fmt.Sprintf("/registry/leases/kube-node-lease/n%d", i%3), fmt.Sprint(i)); err != nil {
			t.Fatal(err)
		}
	}
	env := append(srv.Env(), "ETCDGUARD_ENDPOINTS="+strings.Join(src.Endpoints(), ","), "ETCDGUARD_STORE="+srv.URL("etcd"), "ETCDGUARD_CLUSTER=prod")
	m := decodeJSON[snapshot.Manifest](t, run(t, env, "snapshot", "save", "-o", "json"))
	// Writes after the snapshot must not come back.
	if _, err := cli.Put(ctx, "/registry/pods/default/after-the-snapshot", "x"); err != nil {
		t.Fatal(err)
	}
	atSnapshot, err := cli.Get(ctx, "", clientv3.WithFromKey(), clientv3.WithRev(m.Revision))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]kv{}
	for _, k := range atSnapshot.Kvs {
		want[string(k.Key)] = kv{string(k.Value), k.CreateRevision, k.ModRevision, k.Version}
	}
	srcID := must(cli.Status(ctx, src.Endpoints()[0])).Header.ClusterId

	t.Run("all members", func(t *testing.T) {
		ports := testharness.FreePorts(t, 6)
		var ic []string
		for i := range 3 {
			ic = append(ic, fmt.Sprintf("r%d=http://127.0.0.1:%d", i, ports[2*i+1]))
		}
		initialCluster := strings.Join(ic, ",")
		parent := filepath.Join(t.TempDir(), "restored")
		r := run(t, env, "restore", "--snapshot", "latest", "--initial-cluster", initialCluster, "--all-members", "--data-dir", parent, "-o", "json")
		res := decodeJSON[restore.Result](t, r)
		if res.Snapshot.ID != m.ID || len(res.Members) != 3 || res.KeyCount == nil || *res.KeyCount != int64(len(want)) || res.Token == "" {
			t.Fatalf("restore result: snapshot %s, %d members, %v keys (want %d), token %q", res.Snapshot.ID, len(res.Members), res.KeyCount, len(want), res.Token)
		}
		var procs []*testharness.EtcdProc
		var endpoints []string
		for i, mem := range res.Members {
			if mem.DataDir != filepath.Join(parent, fmt.Sprintf("r%d.etcd", i)) || !strings.Contains(strings.Join(mem.Command, " "), "--initial-cluster-state new") {
				t.Errorf("member %d: %+v", i, mem)
			}
			p := testharness.StartEtcdProc(t, testharness.ProcConfig{
				Name: mem.Name, DataDir: mem.DataDir, PeerURL: mem.PeerURLs[0], ClientURL: fmt.Sprintf("http://127.0.0.1:%d", ports[2*i]),
				InitialCluster: initialCluster, InitialClusterToken: res.Token,
			})
			procs = append(procs, p)
			endpoints = append(endpoints, p.Endpoint())
		}
		for _, p := range procs {
			if err := p.WaitHealthy(30 * time.Second); err != nil {
				t.Fatalf("restored member %s: %v", p.Name, err)
			}
		}
		rcli := newClient(t, endpoints)
		members := must(rcli.MemberList(ctx))
		if len(members.Members) != 3 {
			t.Fatalf("restored cluster has %d members", len(members.Members))
		}
		for _, ep := range endpoints {
			st := must(rcli.Status(ctx, ep))
			if st.Header.ClusterId == srcID || st.Header.ClusterId != members.Header.ClusterId {
				t.Errorf("%s: cluster id %x, source %x, restored cluster %x", ep, st.Header.ClusterId, srcID, members.Header.ClusterId)
			}
		}
		got := dump(t, rcli)
		if len(got) != len(want) {
			t.Fatalf("restored cluster has %d keys, the source had %d at revision %d", len(got), len(want), m.Revision)
		}
		for k, w := range want {
			if got[k] != w {
				t.Fatalf("key %s: restored %+v, source at the snapshot %+v", k, got[k], w)
			}
		}
		if rev := must(rcli.Get(ctx, "x")).Header.Revision; rev != m.Revision {
			t.Errorf("restored revision %d, snapshot revision %d", rev, m.Revision)
		}
	})

	t.Run("one member, revision bumped and compacted", func(t *testing.T) {
		ports := testharness.FreePorts(t, 2)
		peer := fmt.Sprintf("http://127.0.0.1:%d", ports[1])
		dir := filepath.Join(t.TempDir(), "solo.etcd")
		r := run(t, env, "restore", "--revision", fmt.Sprint(m.Revision), "--name", "solo", "--initial-cluster", "solo="+peer,
			"--data-dir", dir, "--bump-revision", "1000000000", "--mark-compacted")
		if r.code != 0 || !strings.Contains(r.stdout, "bumped by 1000000000") || !strings.Contains(r.stdout, "etcd --name solo --data-dir "+dir) {
			t.Fatalf("restore: exit %d\n%s%s", r.code, r.stdout, r.stderr)
		}
		p := testharness.StartEtcdProc(t, testharness.ProcConfig{Name: "solo", DataDir: dir, PeerURL: peer, ClientURL: fmt.Sprintf("http://127.0.0.1:%d", ports[0])})
		if err := p.WaitHealthy(30 * time.Second); err != nil {
			t.Fatal(err)
		}
		rcli := newClient(t, []string{p.Endpoint()})
		resp := must(rcli.Get(ctx, "", clientv3.WithFromKey(), clientv3.WithCountOnly()))
		if resp.Header.Revision < m.Revision+1_000_000_000 || resp.Count != int64(len(want)) {
			t.Fatalf("revision %d (want ≥ %d), %d keys (want %d)", resp.Header.Revision, m.Revision+1_000_000_000, resp.Count, len(want))
		}
		if _, err := rcli.Get(ctx, "", clientv3.WithFromKey(), clientv3.WithRev(m.Revision)); err == nil || !strings.Contains(err.Error(), "compacted") {
			t.Fatalf("reading the old revision: %v, want it compacted", err)
		}
	})

	t.Run("bad input writes nothing", func(t *testing.T) {
		parent := t.TempDir()
		busy := filepath.Join(parent, "busy.etcd")
		if r := run(t, env, "restore", "--snapshot", "latest", "--name", "a", "--initial-cluster", "a=http://127.0.0.1:2380", "--data-dir", busy); r.code != 0 {
			t.Fatal(r.stderr)
		}
		before := tree(t, parent)
		tests := []struct {
			args []string
			want string
		}{
			{[]string{"--snapshot", "latest", "--name", "a", "--initial-cluster", "a=http://127.0.0.1:2380", "--data-dir", busy}, "exists and is not empty"},
			{[]string{"--snapshot", "20200101T000000Z-aaaaaa", "--name", "a", "--initial-cluster", "a=http://127.0.0.1:2380", "--data-dir", parent + "/x"}, "nearest: " + m.ID},
			{[]string{"--at", "2001-01-01T00:00:00Z", "--name", "a", "--initial-cluster", "a=http://127.0.0.1:2380", "--data-dir", parent + "/x"}, "the first is " + m.ID},
			{[]string{"--at", "yesterday", "--name", "a", "--initial-cluster", "a=http://127.0.0.1:2380"}, "malformed --at"},
			{[]string{"--snapshot", "latest", "--name", "z", "--initial-cluster", "a=http://127.0.0.1:2380"}, `--name "z" is not in --initial-cluster`},
			{[]string{"--snapshot", "latest", "--name", "a", "--initial-cluster", "a=127.0.0.1:2380"}, "malformed --initial-cluster"},
			{[]string{"--name", "a", "--initial-cluster", "a=http://127.0.0.1:2380"}, "exactly one of --snapshot"},
			{[]string{"--snapshot", "latest", "--all-members", "--name", "a", "--initial-cluster", "a=http://127.0.0.1:2380", "--data-dir", parent}, "--name cannot be used with --all-members"},
			{[]string{"--snapshot", "latest", "--name", "a", "--initial-cluster", "a=http://127.0.0.1:2380", "--data-dir", parent + "/x", "--bump-revision", "5"}, "go together"},
			// One member of several on its own host: every host's run needs the same token.
			{[]string{"--snapshot", "latest", "--name", "a", "--initial-cluster", "a=http://127.0.0.1:2380,b=http://127.0.0.2:2380", "--data-dir", parent + "/x"}, "give --initial-cluster-token, the same on every member's run"},
		}
		for _, tc := range tests {
			r := run(t, env, append([]string{"restore"}, tc.args...)...)
			if line := r.errorLine(t); r.code == 0 || !strings.Contains(line, tc.want) {
				t.Errorf("restore %v: exit %d, %q; want %q", tc.args, r.code, line, tc.want)
			}
		}
		if after := tree(t, parent); after != before {
			t.Errorf("refused restores changed the disk:\n%s\nbecame\n%s", before, after)
		}
	})
}

func newClient(t *testing.T, endpoints []string) *clientv3.Client {
	t.Helper()
	c, err := clientv3.New(clientv3.Config{Endpoints: endpoints, DialTimeout: 5 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return c
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// SIGTERM (or Ctrl-C) during a restore removes everything it wrote.
func TestE2ERestoreInterrupted(t *testing.T) {
	e := testharness.StartEtcd(t)
	if _, err := loadgen.LoadK8sKeyspace(context.Background(), e.Client(t), loadgen.Options{TargetBytes: 64 << 20, ValueSize: 16 << 10}); err != nil {
		t.Fatal(err)
	}
	env := []string{"ETCDGUARD_ENDPOINTS=" + e.Endpoints[0], "ETCDGUARD_STORE=file://" + t.TempDir(), "ETCDGUARD_CLUSTER=c1"}
	if r := run(t, env, "snapshot", "save", "--compression", "none"); r.code != 0 {
		t.Fatal(r.stderr)
	}
	var ic []string
	for i := range 5 {
		ic = append(ic, fmt.Sprintf("m%d=http://127.0.0.1:%d", i, 2380+i))
	}
	parent := filepath.Join(t.TempDir(), "restored")
	cmd := exec.Command(etcdguardBin, "restore", "--snapshot", "latest", "--all-members", "--data-dir", parent, "--initial-cluster", strings.Join(ic, ","))
	cmd.Env = append(env, "PATH="+os.Getenv("PATH"), "HOME="+t.TempDir())
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	// Signal as soon as the restore has written something.
	deadline := time.Now().Add(30 * time.Second)
	for len(entries(parent)) == 0 {
		if time.Now().After(deadline) {
			cmd.Process.Kill()
			t.Fatal("the restore wrote nothing within 30s")
		}
		time.Sleep(2 * time.Millisecond)
	}
	if err := cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	if err := cmd.Wait(); err == nil {
		t.Fatal("the restore finished before SIGTERM reached it; nothing was tested")
	}
	if left := entries(parent); len(left) > 0 {
		t.Fatalf("an interrupted restore left %v", left)
	}
	if _, err := os.Stat(parent); !errors.Is(err, os.ErrNotExist) {
		t.Fatalf("an interrupted restore left its parent dir: %v", err)
	}
}

func entries(dir string) []string {
	des, _ := os.ReadDir(dir)
	var out []string
	for _, d := range des {
		out = append(out, d.Name())
	}
	return out
}
