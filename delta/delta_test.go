package delta

import (
	"context"
	"errors"
	"fmt"
	"maps"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdguard/etcdguard/internal/testharness"
	"github.com/etcdguard/etcdguard/store"
	"github.com/etcdguard/etcdguard/store/file"
)

// capture watches the whole keyspace from rev+1 until it has seen revision last.
func capture(t *testing.T, cli *clientv3.Client, rev, last int64) []Revision {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	var out []Revision
	for resp := range cli.Watch(ctx, "", clientv3.WithPrefix(), clientv3.WithRev(rev+1)) {
		if err := resp.Err(); err != nil {
			t.Fatal(err)
		}
		out = append(out, FromWatch(resp, time.Now())...)
		if len(out) > 0 && out[len(out)-1].Rev >= last {
			return out
		}
	}
	t.Fatal("watch ended early")
	return nil
}

func TestSegmentsReplayToEtcdsState(t *testing.T) {
	ctx := context.Background()
	e := testharness.StartEtcd(t)
	cli := e.Client(t)
	start := must(cli.Put(ctx, "/registry/base", "0")).Header.Revision
	lease := must(cli.Grant(ctx, 3600))
	for i := range 60 {
		switch i % 4 {
		case 0:
			must(cli.Put(ctx, fmt.Sprintf("/registry/pods/p%d", i%7), fmt.Sprint(i)))
		case 1:
			must(cli.Delete(ctx, fmt.Sprintf("/registry/pods/p%d", (i+3)%7)))
		case 2: // one revision, several keys
			must(cli.Txn(ctx).Then(clientv3.OpPut(fmt.Sprintf("/registry/a/%d", i), "x"), clientv3.OpPut(fmt.Sprintf("/registry/b/%d", i), "y"),
				clientv3.OpDelete(fmt.Sprintf("/registry/b/%d", i-4))).Commit())
		case 3:
			must(cli.Put(ctx, fmt.Sprintf("/registry/leases/l%d", i), "lease", clientv3.WithLease(lease.ID)))
		}
	}
	last := must(cli.Get(ctx, "x")).Header.Revision
	revs := capture(t, cli, start, last)
	st, err := file.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	half := len(revs) / 2
	for _, part := range [][]Revision{revs[:half], revs[half:]} {
		if _, err := WriteSegment(ctx, st, "c1", part); err != nil {
			t.Fatal(err)
		}
	}
	segs, err := List(ctx, st, "c1")
	if err != nil || len(segs) != 2 || len(Gaps(segs)) != 0 || segs[0].FromRev != start+1 || segs[1].ToRev != last {
		t.Fatalf("segments %v, gaps %v, err %v", segs, Gaps(segs), err)
	}

	// Replaying onto the state at `start` gives etcd's state at every revision.
	state := map[string]string{}
	for _, kv := range must(cli.Get(ctx, "", clientv3.WithPrefix(), clientv3.WithRev(start))).Kvs {
		state[string(kv.Key)] = string(kv.Value)
	}
	for _, seg := range segs {
		err := ReadSegment(ctx, st, seg, func(r Revision) error {
			for _, ev := range r.Events {
				if ev.Delete {
					delete(state, string(ev.Key))
				} else {
					state[string(ev.Key)] = string(ev.Value)
				}
			}
			want := map[string]string{}
			for _, kv := range must(cli.Get(ctx, "", clientv3.WithPrefix(), clientv3.WithRev(r.Rev))).Kvs {
				want[string(kv.Key)] = string(kv.Value)
			}
			if !maps.Equal(state, want) {
				return fmt.Errorf("replayed state at revision %d differs from etcd's", r.Rev)
			}
			return nil
		})
		if err != nil {
			t.Fatal(err)
		}
	}

	// A corrupt segment and a missing one are found.
	b, _ := store.ReadAll(ctx, st, segs[1].Object, 1<<20)
	b[len(b)/2] ^= 1
	store.PutBytes(ctx, st, segs[1].Object, b)
	if err := ReadSegment(ctx, st, segs[1], func(Revision) error { return nil }); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("corrupt segment: %v", err)
	}
	if gaps := Gaps([]*Manifest{segs[0], {FromRev: segs[1].FromRev + 5, ToRev: segs[1].ToRev}}); len(gaps) != 1 || gaps[0].From != segs[0].ToRev+1 {
		t.Fatalf("gaps %v", gaps)
	}
	if _, err := WriteSegment(ctx, st, "c1", []Revision{revs[0], revs[2]}); err == nil {
		t.Fatal("a segment with a gap was written")
	}
}

func must[T any](v T, err error) T {
	if err != nil {
		panic(err)
	}
	return v
}

// After etcd compacted past the last captured revision, capture takes a full snapshot and
// resumes from it; the timeline shows the gap bridged by that snapshot.
func TestCaptureAfterCompaction(t *testing.T) {
	ctx := context.Background()
	e := testharness.StartEtcd(t)
	cli := e.Client(t)
	st, err := file.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	// A segment ends at revision r; then etcd moves on and compacts past it.
	r := must(cli.Put(ctx, "/a", "1")).Header.Revision
	if _, err := WriteSegment(ctx, st, "c1", []Revision{{Rev: r, Time: time.Now(), Events: []Event{{Key: []byte("/a"), Value: []byte("1")}}}}); err != nil {
		t.Fatal(err)
	}
	for i := range 10 {
		must(cli.Put(ctx, "/b", fmt.Sprint(i)))
	}
	now := must(cli.Get(ctx, "x")).Header.Revision
	must(cli.Compact(ctx, now, clientv3.WithCompactPhysical()))

	snapped := make(chan int64, 1)
	cctx, cancel := context.WithCancel(ctx)
	c := &Capturer{Cli: cli, Store: st, Cluster: "c1", Flush: 100 * time.Millisecond,
		Snapshot: func(context.Context) (int64, error) {
			rev := must(cli.Get(ctx, "x")).Header.Revision // stands in for a full snapshot at this revision
			snapped <- rev
			return rev, nil
		}}
	done := make(chan error, 1)
	go func() { done <- c.Run(cctx) }()
	var base int64
	select {
	case base = <-snapped:
	case <-time.After(10 * time.Second):
		t.Fatal("capture did not take a full snapshot after the compaction")
	}
	after := must(cli.Put(ctx, "/c", "after")).Header.Revision
	for deadline := time.Now().Add(10 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		if segs, _ := List(ctx, st, "c1"); len(segs) == 2 && segs[1].ToRev >= after {
			if segs[1].FromRev != base+1 {
				t.Fatalf("resumed at %d, want right after the new snapshot's revision %d", segs[1].FromRev, base)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("capture did not resume after the compaction")
		}
	}
	cancel()
	if err := <-done; err != nil {
		t.Fatal(err)
	}
}
