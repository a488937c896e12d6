package testharness

import (
	"context"
	"errors"
	"syscall"
	"testing"
	"time"
)

func TestStartEtcd(t *testing.T) {
	e := StartEtcd(t)
	cli := e.Client(t)
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	if _, err := cli.Put(ctx, "/registry/pods/default/a", "v"); err != nil {
		t.Fatal(err)
	}
	resp, err := cli.Get(ctx, "/registry/pods/default/a")
	if err != nil {
		t.Fatal(err)
	}
	if len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "v" {
		t.Fatalf("get: %v", resp.Kvs)
	}
}

func TestStartEtcdCluster(t *testing.T) {
	var pids []int
	t.Run("cluster", func(t *testing.T) {
		c := StartEtcdCluster(t, 3)
		ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
		defer cancel()
		ids := map[uint64]bool{}
		var leader uint64
		cli := c.Client(t)
		for _, m := range c.Members {
			st, err := cli.Status(ctx, m.Endpoint())
			if err != nil {
				t.Fatalf("status %s: %v", m.Name, err)
			}
			ids[st.Header.MemberId] = true
			if leader != 0 && st.Leader != leader {
				t.Errorf("members disagree on the leader: %x vs %x", st.Leader, leader)
			}
			leader = st.Leader
		}
		if len(ids) != 3 || leader == 0 {
			t.Fatalf("want 3 members with a leader, got ids=%v leader=%x", ids, leader)
		}

		// Write through one member and read through another, one client
		// per member so the balancer cannot route both to the same one.
		first := c.Members[0].Endpoint()
		last := c.Members[2].Endpoint()
		w := newClient(t, []string{first}, nil)
		r := newClient(t, []string{last}, nil)
		if _, err := w.Put(ctx, "/k", "from-m0"); err != nil {
			t.Fatal(err)
		}
		resp, err := r.Get(ctx, "/k") // linearizable: sees the committed put
		if err != nil {
			t.Fatal(err)
		}
		if len(resp.Kvs) != 1 || string(resp.Kvs[0].Value) != "from-m0" {
			t.Fatalf("read on m2: %v", resp.Kvs)
		}

		// A killed member comes back on the same data dir.
		c.Kill(1)
		if c.Members[1].Running() {
			t.Fatal("m1 still running after Kill")
		}
		c.Members[1].Restart(t)
		if err := c.WaitHealthy(20 * time.Second); err != nil {
			t.Fatal(err)
		}
		for _, m := range c.Members {
			pids = append(pids, m.PID())
		}
	})
	if len(pids) != 3 {
		t.Fatalf("pids: %v", pids)
	}
	for _, pid := range pids {
		if err := syscall.Kill(pid, 0); !errors.Is(err, syscall.ESRCH) {
			t.Errorf("etcd pid %d still exists after cleanup (kill -0: %v)", pid, err)
		}
	}
}
