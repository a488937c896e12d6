package delta

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdguard/etcdguard/internal/testharness"
	"github.com/etcdguard/etcdguard/snapshot"
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
	var troubles []string
	var mu sync.Mutex
	c := &Capturer{Cli: cli, Store: st, Cluster: "c1", Flush: 100 * time.Millisecond,
		OnTrouble: func(kind string, _ error) { mu.Lock(); troubles = append(troubles, kind); mu.Unlock() },
		Snapshot: func(context.Context) (int64, error) {
			rev := must(cli.Get(ctx, "x")).Header.Revision // stands in for a full snapshot at this revision
			snapped <- rev
			return rev, nil
		}}
	done := make(chan struct{})
	go func() { c.Run(cctx); close(done) }()
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
	<-done
	mu.Lock()
	defer mu.Unlock()
	if !slices.Contains(troubles, "compacted") {
		t.Fatalf("the compaction was not reported (for the alert): %v", troubles)
	}
}

// flaky is the file store with writes that fail while down is set: the store is
// unreachable, the way a network partition or an expired credential looks.
type flaky struct {
	store.Store
	down atomic.Bool
}

func (f *flaky) Put(ctx context.Context, key string, r io.Reader) (int64, error) {
	if f.down.Load() {
		return 0, errors.New("store unreachable")
	}
	return f.Store.Put(ctx, key, r)
}

// While the store refuses writes, capture reports it, keeps no more than MaxBytes, and once
// the store is back it stores every revision of the outage, chained without a gap.
func TestCaptureWhileStoreDown(t *testing.T) {
	ctx := context.Background()
	e := testharness.StartEtcd(t)
	cli := e.Client(t)
	fs, err := file.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	st := &flaky{Store: fs}
	base := must(cli.Put(ctx, "/base", "x")).Header.Revision
	troubled := make(chan string, 100)
	var unstoredLag atomic.Int64 // the RPO reported while nothing could be stored
	cctx, cancel := context.WithCancel(ctx)
	c := &Capturer{Cli: cli, Store: st, Cluster: "c1", Flush: 50 * time.Millisecond, MaxBytes: 4 << 10,
		Snapshot:  func(context.Context) (int64, error) { return base, nil },
		OnTrouble: func(kind string, _ error) { troubled <- kind },
		OnProgress: func(_ int64, lag time.Duration, stored bool) {
			if !stored && lag > 0 {
				unstoredLag.Store(int64(lag))
			}
		}}
	done := make(chan struct{})
	go func() { c.Run(cctx); close(done) }()
	defer func() { cancel(); <-done }()

	st.down.Store(true)
	value := strings.Repeat("v", 1000)
	outageStart := time.Now()
	var outageLast int64
	for i := range 200 { // 200 KB while the store is down: 50 times MaxBytes
		outageLast = must(cli.Put(ctx, fmt.Sprintf("/k/%d", i%30), value)).Header.Revision
	}
	select {
	case kind := <-troubled:
		if kind != "failing" {
			t.Fatalf("trouble %q, want failing", kind)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("a store that refuses writes was not reported")
	}
	if segs, _ := List(ctx, fs, "c1"); len(segs) != 0 {
		t.Fatalf("%d segments stored while the store was down", len(segs))
	}
	if unstoredLag.Load() <= 0 {
		t.Fatal("no RPO was reported while the store was down (the lag metric would read 0)")
	}
	time.Sleep(300 * time.Millisecond) // the capture has seen everything, and retries
	upAt := time.Now()
	st.down.Store(false)
	last := must(cli.Put(ctx, "/after", "1")).Header.Revision
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		segs, err := List(ctx, fs, "c1")
		if err != nil {
			t.Fatal(err)
		}
		if len(segs) > 0 && segs[len(segs)-1].ToRev == last {
			if segs[0].FromRev != base+1 || len(Gaps(segs)) != 0 {
				t.Fatalf("segments from %d with gaps %v, want every revision after %d", segs[0].FromRev, Gaps(segs), base)
			}
			for _, m := range segs {
				var raw int
				if err := ReadSegment(ctx, fs, m, func(r Revision) error {
					for _, ev := range r.Events {
						raw += len(ev.Key) + len(ev.Value)
					}
					// stored after the outage, but stamped when first seen
					if r.Rev <= outageLast && (r.Time.Before(outageStart) || !r.Time.Before(upAt)) {
						return fmt.Errorf("revision %d of the outage stamped %s, want between %s and %s", r.Rev, r.Time, outageStart, upAt)
					}
					return nil
				}); err != nil {
					t.Fatal(err)
				}
				// a segment closes at the first watch response past MaxBytes
				if raw > 2*c.MaxBytes {
					t.Fatalf("segment %s holds %d bytes of changes, MaxBytes is %d", m.Object, raw, c.MaxBytes)
				}
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("capture did not catch up after the store came back")
		}
	}
}

// Retention drops the segments that no kept snapshot can reach, and only those.
func TestPrune(t *testing.T) {
	ctx := context.Background()
	st, err := file.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	for i, rev := range []int64{10, 30} {
		m := snapshot.Manifest{ID: fmt.Sprintf("s%d", rev), Object: fmt.Sprintf("c1/snapshots/s%d.db.zst", rev), Cluster: "c1", Revision: rev, CreatedAt: now.Add(time.Duration(i) * time.Minute)}
		if err := store.PutBytes(ctx, st, "c1/snapshots/"+m.ID+".json", must(json.Marshal(m))); err != nil {
			t.Fatal(err)
		}
	}
	for from := int64(11); from < 50; from += 10 { // 11-20 21-30 31-40 41-50
		var revs []Revision
		for r := from; r < from+10; r++ {
			revs = append(revs, Revision{Rev: r, Time: now, Events: []Event{{Key: []byte("/k"), Value: []byte("v")}}})
		}
		must(WriteSegment(ctx, st, "c1", revs))
	}
	for _, tc := range []struct {
		name     string
		drop     []string // snapshots retention deletes
		unlisted bool     // retention kept a snapshot that this listing misses
		dryRun   bool
		wantFrom int64 // first segment left
	}{
		{name: "oldest snapshot kept: all reachable", wantFrom: 11},
		{name: "dry run changes nothing", drop: []string{"s10"}, dryRun: true, wantFrom: 11},
		{name: "a kept snapshot did not list: prune nothing", drop: []string{"s10"}, unlisted: true, wantFrom: 11},
		{name: "oldest dropped", drop: []string{"s10"}, wantFrom: 31},
		{name: "every snapshot dropped: keep the deltas", drop: []string{"s10", "s30"}, wantFrom: 31},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var ds []snapshot.Decision
			for _, id := range []string{"s10", "s30"} {
				ds = append(ds, snapshot.Decision{ID: id, Keep: !slices.Contains(tc.drop, id)})
			}
			if tc.unlisted {
				ds = append(ds, snapshot.Decision{ID: "s5", Keep: true})
			}
			if _, err := Prune(ctx, st, "c1", ds, tc.dryRun); err != nil {
				t.Fatal(err)
			}
			segs := must(List(ctx, st, "c1"))
			if len(segs) == 0 || segs[0].FromRev != tc.wantFrom || segs[len(segs)-1].ToRev != 50 {
				t.Fatalf("segments left: %d, from %v", len(segs), segs)
			}
			objs := must(st.List(ctx, "c1/deltas/"))
			if len(objs) != 2*len(segs) {
				t.Fatalf("%d objects for %d segments: data left without its manifest", len(objs), len(segs))
			}
		})
	}
}

func TestSummary(t *testing.T) {
	first, last := time.Date(2026, 11, 27, 2, 13, 5, 123456789, time.UTC), time.Date(2026, 11, 27, 2, 13, 10, 0, time.UTC)
	good := &Manifest{FromRev: 7, ToRev: 4100, FirstTime: first, LastTime: last}
	for _, tc := range []struct {
		key  string
		want bool
	}{
		{manifestKey("c1", good), true},
		{"c1/deltas/00000000000000000007-00000000000000004100.json", false}, // named before the times were
		{"c1/deltas/7-4100.t1-2.json", false},
		{"c1/deltas/00000000000000000007-00000000000000004100.tx-2.json", false},
		{"c1/deltas/00000000000000000007-00000000000000004100.t1-2.seg.zst", false},
	} {
		m, ok := summary("c1", tc.key)
		if ok != tc.want {
			t.Fatalf("%s: parsed %v, want %v", tc.key, ok, tc.want)
		}
		if ok && (m.FromRev != 7 || m.ToRev != 4100 || !m.FirstTime.Equal(first) || !m.LastTime.Equal(last) || m.Object != dataKey("c1", 7, 4100)) {
			t.Fatalf("%s: %+v", tc.key, m)
		}
	}
}

// List needs no manifest reads for segments named with their times, still reads older
// ones, and ReadSegment checks a summary against its manifest.
func TestListAndReadSummaries(t *testing.T) {
	ctx := context.Background()
	st, err := file.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now()
	seg := func(from, to int64) []Revision {
		var revs []Revision
		for r := from; r <= to; r++ {
			revs = append(revs, Revision{Rev: r, Time: now, Events: []Event{{Key: []byte("/k"), Value: []byte(fmt.Sprint(r))}}})
		}
		return revs
	}
	m1 := must(WriteSegment(ctx, st, "c1", seg(1, 5)))
	m2 := must(WriteSegment(ctx, st, "c1", seg(6, 9)))
	// m1 as an older release named it: the manifest must be read.
	b := must(store.ReadAll(ctx, st, m1.key, 1<<20))
	must(0, st.Delete(ctx, m1.key))
	must(0, store.PutBytes(ctx, st, "c1/deltas/"+baseName(1, 5)+".json", b))

	segs := must(List(ctx, st, "c1"))
	if len(segs) != 2 || segs[0].SHA256 != m1.SHA256 || segs[1].SHA256 != "" || segs[1].Size != m2.Size || !segs[1].LastTime.Equal(m2.LastTime) {
		t.Fatalf("listed %+v %+v", segs[0], segs[1])
	}
	for _, m := range segs {
		n := 0
		if err := ReadSegment(ctx, st, m, func(Revision) error { n++; return nil }); err != nil || int64(n) != m.ToRev-m.FromRev+1 {
			t.Fatalf("%s: %d revisions, %v", m.Object, n, err)
		}
	}
	// A manifest that does not describe the segment its name says is refused.
	fake := *m2
	fake.ToRev = 8
	must(0, store.PutBytes(ctx, st, segs[1].key, must(json.Marshal(fake))))
	if err := ReadSegment(ctx, st, segs[1], func(Revision) error { return nil }); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("mismatched manifest: %v", err)
	}
}
