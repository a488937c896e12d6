package main

import (
	"context"
	"fmt"
	"path/filepath"
	"strings"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdguard/etcdguard/internal/testharness"
	"github.com/etcdguard/etcdguard/snapshot"
	"github.com/etcdguard/etcdguard/store/file"
)

// A snapshot is read from a voting member that has a leader: a learner (which may lag) is
// skipped for the next endpoint, and a member cut off from its quorum is refused.
func TestE2ESaveChoosesAVotingMemberWithALeader(t *testing.T) {
	c := testharness.StartEtcdCluster(t, 3)
	cli := c.Client(t)
	ctx := context.Background()
	m0 := c.Endpoints()[0]

	var peers []string
	for _, m := range c.Members {
		peers = append(peers, m.Name+"="+m.PeerURL)
	}
	ports := testharness.FreePorts(t, 2)
	learnerPeer := fmt.Sprintf("http://127.0.0.1:%d", ports[1])
	// etcd refuses a new member until every member has been connected for a few seconds.
	var added *clientv3.MemberAddResponse
	for deadline := time.Now().Add(30 * time.Second); ; time.Sleep(500 * time.Millisecond) {
		var err error
		if added, err = cli.MemberAddAsLearner(ctx, []string{learnerPeer}); err == nil {
			break
		} else if time.Now().After(deadline) {
			t.Fatalf("adding a learner: %v", err)
		}
	}
	learner := testharness.StartEtcdProc(t, testharness.ProcConfig{
		Name: "learner", DataDir: filepath.Join(t.TempDir(), "learner.etcd"),
		ClientURL: fmt.Sprintf("http://127.0.0.1:%d", ports[0]), PeerURL: learnerPeer,
		InitialCluster:      strings.Join(append(peers, "learner="+learnerPeer), ","),
		InitialClusterToken: c.Token, InitialClusterState: "existing",
	})
	waitStatus(t, cli, learner.Endpoint(), "the learner to answer", func(s *clientv3.StatusResponse) bool { return s.IsLearner })

	dir := t.TempDir()
	env := []string{"ETCDGUARD_STORE=file://" + dir, "ETCDGUARD_CLUSTER=prod", "ETCDGUARD_DIAL_TIMEOUT=2s"}
	r := run(t, append(env, "ETCDGUARD_ENDPOINTS="+learner.Endpoint()+","+m0), "snapshot", "save", "-o", "json")
	m := decodeJSON[snapshot.Manifest](t, r)
	if m.Endpoint != m0 || m.MemberID == fmt.Sprintf("%x", added.Member.ID) {
		t.Fatalf("saved from %s (member %s), want %s, not the learner %x", m.Endpoint, m.MemberID, m0, added.Member.ID)
	}
	r = run(t, append(env, "ETCDGUARD_ENDPOINTS="+learner.Endpoint()), "snapshot", "save")
	if line := r.errorLine(t); r.code == 0 || !strings.Contains(line, learner.Endpoint()) || !strings.Contains(line, "learner") {
		t.Fatalf("save from the learner only: exit %d, %q", r.code, line)
	}

	// Two of three voters gone: m0 has no quorum, and soon no leader.
	c.Stop(1)
	c.Stop(2)
	waitStatus(t, cli, m0, "m0 to lose its leader", func(s *clientv3.StatusResponse) bool { return s.Leader == 0 })
	r = run(t, append(env, "ETCDGUARD_ENDPOINTS="+m0), "snapshot", "save")
	if line := r.errorLine(t); r.code == 0 || !strings.Contains(line, m0) || !strings.Contains(line, "no leader") {
		t.Fatalf("save from a member without a leader: exit %d, %q", r.code, line)
	}

	// The library refuses too, whoever chose the member.
	st, err := file.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	one := must(clientv3.New(clientv3.Config{Endpoints: []string{m0}, DialTimeout: 2 * time.Second}))
	defer one.Close()
	if _, err := snapshot.Save(ctx, one, st, snapshot.SaveOptions{Cluster: "prod", Endpoint: m0, Compression: "zstd", Level: "fastest"}); err == nil || !strings.Contains(err.Error(), "no leader") {
		t.Fatalf("snapshot.Save from a member without a leader: %v", err)
	}
	if objs, _ := st.List(ctx, ""); len(objs) != 0 {
		t.Fatalf("a refused save stored %v", objs)
	}
}

func waitStatus(t *testing.T, cli *clientv3.Client, ep, what string, ok func(*clientv3.StatusResponse) bool) {
	t.Helper()
	deadline := time.Now().Add(30 * time.Second)
	for {
		sctx, cancel := context.WithTimeout(context.Background(), time.Second)
		s, err := cli.Status(sctx, ep)
		cancel()
		if err == nil && ok(s) {
			return
		}
		if time.Now().After(deadline) {
			t.Fatalf("waiting for %s: %+v, %v", what, s, err)
		}
		time.Sleep(100 * time.Millisecond)
	}
}
