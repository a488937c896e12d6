package delta

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"filippo.io/age"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdguard/etcdguard/internal/crypt"
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
		if _, err := WriteSegment(ctx, st, "c1", h1, part); err != nil {
			t.Fatal(err)
		}
	}
	segs, err := Segments(ctx, st, "c1", h1.History, 0, nil)
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
	if _, err := WriteSegment(ctx, st, "c1", h1, []Revision{revs[0], revs[2]}); err == nil {
		t.Fatal("a segment with a gap was written")
	}
}

var h1 = Identity{History: "20260101T000000Z-aaaaaa"}

// snapshots is a Capturer.Snapshot that takes real snapshots of the etcd behind cli.
func snapshots(t *testing.T, cli *clientv3.Client, st store.Store) func(context.Context, string) (*snapshot.Manifest, error) {
	return func(ctx context.Context, history string) (*snapshot.Manifest, error) {
		opts := snapshot.SaveOptions{Cluster: "c1", Endpoint: cli.Endpoints()[0], Compression: "zstd", Level: "fastest",
			History: InHistory(cli, history)}
		if history == "" { // as the daemon does
			opts.History = Identify(cli, st, "c1")
		}
		return snapshot.Save(ctx, cli, st, opts)
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
	// A snapshot, a segment that ends at revision r; then etcd moves on and compacts past it.
	must(cli.Put(ctx, "/0", "0"))
	take := snapshots(t, cli, st)
	s0 := must(take(ctx, h1.History))
	r := must(cli.Put(ctx, "/a", "1")).Header.Revision
	if _, err := WriteSegment(ctx, st, "c1", Identity{History: h1.History, ClusterID: s0.ClusterID}, []Revision{{Rev: r, Time: time.Now(), Events: []Event{{Key: []byte("/a"), Value: []byte("1")}}}}); err != nil {
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
		Snapshot: func(ctx context.Context, history string) (*snapshot.Manifest, error) {
			m, err := take(ctx, history)
			if err == nil {
				snapped <- m.Revision
			}
			return m, err
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
		if segs, _ := Segments(ctx, st, "c1", h1.History, 0, nil); len(segs) == 2 && segs[1].ToRev >= after {
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
	if !slices.Contains(troubles, "compacted") || slices.Contains(troubles, "new_history") {
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
	must(cli.Put(ctx, "/base", "x"))
	take := snapshots(t, cli, fs)
	base := must(take(ctx, h1.History)).Revision
	troubled := make(chan string, 100)
	var unstoredLag atomic.Int64 // the RPO reported while nothing could be stored
	cctx, cancel := context.WithCancel(ctx)
	c := &Capturer{Cli: cli, Store: st, Cluster: "c1", Flush: 50 * time.Millisecond, MaxBytes: 4 << 10,
		Snapshot:  take,
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
	if segs, _ := Segments(ctx, fs, "c1", h1.History, 0, nil); len(segs) != 0 {
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
		segs, err := Segments(ctx, fs, "c1", h1.History, 0, nil)
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

// Retention drops the segments that no kept snapshot can reach, and only those: in each
// history, those below its oldest kept snapshot; all of a history none of whose snapshots
// is kept.
func TestPrune(t *testing.T) {
	ctx := context.Background()
	st, err := file.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	h0 := Identity{History: "20250101T000000Z-000000"} // an older history, before a restore
	for i, s := range []struct {
		rev     int64
		history string
	}{{5, h0.History}, {10, h1.History}, {30, h1.History}} {
		m := snapshot.Manifest{ID: fmt.Sprintf("s%d", s.rev), Object: fmt.Sprintf("c1/snapshots/s%d.db.zst", s.rev), Cluster: "c1", Revision: s.rev,
			CreatedAt: now.Add(time.Duration(i) * time.Minute), History: s.history}
		if err := store.PutBytes(ctx, st, "c1/snapshots/"+m.ID+".json", must(json.Marshal(m))); err != nil {
			t.Fatal(err)
		}
	}
	write := func(id Identity, from, to int64) {
		var revs []Revision
		for r := from; r <= to; r++ {
			revs = append(revs, Revision{Rev: r, Time: now, Events: []Event{{Key: []byte("/k"), Value: []byte("v")}}})
		}
		must(WriteSegment(ctx, st, "c1", id, revs))
	}
	write(h0, 6, 40)                               // the old history's revisions overlap the new one's
	for from := int64(11); from < 50; from += 10 { // 11-20 21-30 31-40 41-50
		write(h1, from, from+9)
	}
	for _, tc := range []struct {
		name     string
		drop     []string // snapshots retention deletes
		unlisted bool     // retention kept a snapshot that this listing misses
		dryRun   bool
		wantFrom int64 // first segment of h1 left
		wantOld  int   // segments of h0 left
	}{
		{name: "oldest snapshot kept: all reachable", wantFrom: 11, wantOld: 1},
		{name: "dry run changes nothing", drop: []string{"s5", "s10"}, dryRun: true, wantFrom: 11, wantOld: 1},
		{name: "a kept snapshot did not list: prune nothing", drop: []string{"s5", "s10"}, unlisted: true, wantFrom: 11, wantOld: 1},
		{name: "oldest dropped", drop: []string{"s10"}, wantFrom: 31, wantOld: 1},
		{name: "the old history's only snapshot dropped", drop: []string{"s5", "s10"}, wantFrom: 31, wantOld: 0},
	} {
		t.Run(tc.name, func(t *testing.T) {
			var ds []snapshot.Decision
			for _, id := range []string{"s5", "s10", "s30"} {
				h := h1.History
				if id == "s5" {
					h = h0.History
				}
				ds = append(ds, snapshot.Decision{ID: id, History: h, Keep: !slices.Contains(tc.drop, id)})
			}
			if tc.unlisted {
				ds = append(ds, snapshot.Decision{ID: "s1", Keep: true})
			}
			if !tc.dryRun && !tc.unlisted {
				for _, id := range tc.drop { // as snapshot.Prune does before
					must(0, st.Delete(ctx, "c1/snapshots/"+id+".json"))
				}
			}
			if _, err := Prune(ctx, st, "c1", ds, tc.dryRun); err != nil {
				t.Fatal(err)
			}
			segs := must(Segments(ctx, st, "c1", h1.History, 0, nil))
			if len(segs) == 0 || segs[0].FromRev != tc.wantFrom || segs[len(segs)-1].ToRev != 50 {
				t.Fatalf("segments left: %d, from %v", len(segs), segs)
			}
			if old := must(Segments(ctx, st, "c1", h0.History, 0, nil)); len(old) != tc.wantOld {
				t.Fatalf("%d segments of the old history left, want %d", len(old), tc.wantOld)
			}
			objs := must(st.List(ctx, "c1/deltas/"))
			if len(objs) != 2*(len(segs)+tc.wantOld) {
				t.Fatalf("%d objects for %d segments: data left without its manifest", len(objs), len(segs)+tc.wantOld)
			}
		})
	}
}

func TestSummary(t *testing.T) {
	first, last := time.Date(2026, 11, 27, 2, 13, 5, 123456789, time.UTC), time.Date(2026, 11, 27, 2, 13, 10, 0, time.UTC)
	good := &Manifest{Cluster: "c1", History: h1.History, FromRev: 7, ToRev: 4100, FirstTime: first, LastTime: last}
	legacy := &Manifest{Cluster: "c1", FromRev: 7, ToRev: 4100, FirstTime: first, LastTime: last}
	dir := "c1/deltas/" + h1.History + "/"
	for _, tc := range []struct {
		history, key string
		want         bool
	}{
		{h1.History, manifestKey(good), true},
		{"", manifestKey(legacy), true},
		{h1.History, dir + "observed.json", false},
		{"", "c1/deltas/00000000000000000007-00000000000000004100.json", false}, // named before the times were
		{h1.History, dir + "7-4100.t1-2.json", false},
		{h1.History, dir + "00000000000000004100-00000000000000000007.tx-2.json", false},
		{h1.History, dir + "00000000000000004100-00000000000000000007.t1-2.seg.zst", false},
		{"", manifestKey(good), false}, // another history's, seen from the legacy directory
	} {
		m, ok := summary("c1", tc.history, tc.key)
		if ok != tc.want {
			t.Fatalf("%s: parsed %v, want %v", tc.key, ok, tc.want)
		}
		want := good
		if tc.history == "" {
			want = legacy
		}
		if ok && (m.FromRev != 7 || m.ToRev != 4100 || !m.FirstTime.Equal(first) || !m.LastTime.Equal(last) || m.Object != want.base()+".seg.zst") {
			t.Fatalf("%s: %+v", tc.key, m)
		}
	}
}

// Segments lists from the revision asked, without reading manifests, still reads segments
// written before histories, and ReadSegment checks a summary against its manifest.
func TestSegmentsAndSummaries(t *testing.T) {
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
	var ms []*Manifest
	for from := int64(1); from < 100; from += 9 {
		ms = append(ms, must(WriteSegment(ctx, st, "c1", h1, seg(from, from+8))))
	}
	for _, tc := range []struct {
		after, until int64
		want         []*Manifest
	}{
		{0, 0, ms},
		{9, 0, ms[1:]},
		{10, 0, ms[1:]}, // 10-18 ends after 10
		{50, 60, ms[5:7]},
		{99, 0, nil},
	} {
		var last func(*Manifest) bool
		if tc.until > 0 {
			last = func(m *Manifest) bool { return m.ToRev >= tc.until }
		}
		got := must(Segments(ctx, st, "c1", h1.History, tc.after, last))
		if len(got) != len(tc.want) || len(got) > 0 && (got[0].FromRev != tc.want[0].FromRev || got[len(got)-1].ToRev != tc.want[len(tc.want)-1].ToRev) {
			t.Fatalf("Segments(after %d, until %d) = %d segments %v", tc.after, tc.until, len(got), got)
		}
	}
	// A segment as an older release stored it, before histories: still read.
	old := *ms[0]
	old.History, old.Object = "", "c1/deltas/"+baseName(1, 9)+".seg.zst"
	must(0, store.PutBytes(ctx, st, old.Object, must(store.ReadAll(ctx, st, ms[0].Object, 1<<20))))
	must(0, store.PutBytes(ctx, st, "c1/deltas/"+baseName(1, 9)+".json", must(json.Marshal(old))))
	legacy := must(Segments(ctx, st, "c1", "", 0, nil))
	if len(legacy) != 1 || legacy[0].SHA256 != ms[0].SHA256 {
		t.Fatalf("legacy segments %+v", legacy)
	}
	segs := must(Segments(ctx, st, "c1", h1.History, 0, nil))
	for _, m := range append(segs, legacy...) {
		n := 0
		if err := ReadSegment(ctx, st, m, func(Revision) error { n++; return nil }); err != nil || int64(n) != m.ToRev-m.FromRev+1 {
			t.Fatalf("%s: %d revisions, %v", m.Object, n, err)
		}
	}
	// A manifest that does not describe the segment its name says is refused.
	fake := *ms[1]
	fake.ToRev = 8
	must(0, store.PutBytes(ctx, st, segs[1].key, must(json.Marshal(fake))))
	if err := ReadSegment(ctx, st, segs[1], func(Revision) error { return nil }); !errors.Is(err, ErrCorrupt) {
		t.Fatalf("mismatched manifest: %v", err)
	}
}

// A listing's summaries carry each segment's stored size (a restore's free-space check
// counts it), plain or encrypted, without reading a manifest.
func TestSegmentsCarryStoredSize(t *testing.T) {
	ctx := context.Background()
	id := must(age.GenerateX25519Identity())
	idFile := filepath.Join(t.TempDir(), "id")
	must(0, os.WriteFile(idFile, []byte(id.String()), 0o600))
	for _, tc := range []struct {
		name    string
		encrypt bool
	}{{"plain", false}, {"encrypted", true}} {
		t.Run(tc.name, func(t *testing.T) {
			fs := must(file.Open(t.TempDir()))
			var st store.Store = fs
			if tc.encrypt {
				st = crypt.Wrap(fs, must(crypt.ParseRecipients([]string{id.Recipient().String()}, nil)), must(crypt.LoadIdentities(idFile)))
			}
			want := map[int64]int64{} // to_rev → size of the stored object
			for from := int64(1); from < 40; from += 10 {
				var revs []Revision
				for r := from; r <= from+9; r++ {
					revs = append(revs, Revision{Rev: r, Time: time.Now(), Events: []Event{{Key: []byte("/k"), Value: bytes.Repeat([]byte{byte(r)}, int(r)*100)}}})
				}
				w := must(WriteSegment(ctx, st, "c1", h1, revs))
				want[w.ToRev] = must(fs.Stat(ctx, w.Object)).Size
			}
			for _, after := range []int64{0, 15} {
				segs := must(Segments(ctx, st, "c1", h1.History, after, nil))
				if len(segs) == 0 {
					t.Fatalf("after %d: no segments", after)
				}
				for _, m := range segs {
					if m.SHA256 != "" {
						t.Fatalf("%s: a manifest was read; the listing should do", m.Object)
					}
					if m.Size == 0 || m.Size != want[m.ToRev] {
						t.Fatalf("after %d: segment %s lists size %d, the stored object is %d bytes", after, m.Object, m.Size, want[m.ToRev])
					}
				}
			}
		})
	}
}

// A snapshot taken while capture was down is newer than the last segment: capture resumes
// right after the segment while etcd still holds those revisions, leaving no gap, instead of
// jumping to the snapshot.
func TestResumeFromLastSegmentBeforeNewerSnapshot(t *testing.T) {
	ctx := context.Background()
	e := testharness.StartEtcd(t)
	cli := e.Client(t)
	st := must(file.Open(t.TempDir()))
	must(cli.Put(ctx, "/registry/a", "0"))
	take := snapshots(t, cli, st)
	s0 := must(take(ctx, h1.History))
	var last int64
	for i := range 10 {
		last = must(cli.Put(ctx, fmt.Sprintf("/registry/a%d", i), "1")).Header.Revision
	}
	id := Identity{History: s0.History, ClusterID: s0.ClusterID, RaftIndex: s0.RaftIndex}
	must(WriteSegment(ctx, st, "c1", id, capture(t, cli, s0.Revision, last)))
	for i := range 10 { // while no capture runs
		must(cli.Put(ctx, fmt.Sprintf("/registry/b%d", i), "2"))
	}
	s1 := must(take(ctx, h1.History))
	after := must(cli.Put(ctx, "/registry/c", "3")).Header.Revision

	cctx, cancel := context.WithCancel(ctx)
	c := &Capturer{Cli: cli, Store: st, Cluster: "c1", Flush: 50 * time.Millisecond, Snapshot: take}
	done := make(chan struct{})
	go func() { c.Run(cctx); close(done) }()
	defer func() { cancel(); <-done }()
	for deadline := time.Now().Add(20 * time.Second); ; time.Sleep(50 * time.Millisecond) {
		segs := must(Segments(ctx, st, "c1", h1.History, 0, nil))
		if segs[len(segs)-1].ToRev >= after {
			if len(Gaps(segs)) != 0 || segs[1].FromRev != last+1 {
				t.Fatalf("capture resumed at %d with gaps %v; want right after the segment (%d), not after the newer snapshot (%d)",
					segs[1].FromRev, Gaps(segs), last, s1.Revision)
			}
			break
		}
		if time.Now().After(deadline) {
			t.Fatal("capture did not store the revisions after the snapshot")
		}
	}
	if snaps := must(snapshot.List(ctx, st, "c1")); len(snaps) != 2 {
		t.Fatalf("capture took another snapshot: %d", len(snaps))
	}
}

// A graceful stop while etcd is already gone (kubelet stops both static pods at once) with
// revisions buffered: capture gives up storing them within its drain timeout instead of
// waiting for etcd forever, so the daemon's SIGTERM finishes in its grace period.
func TestDrainWithEtcdDown(t *testing.T) {
	ctx := context.Background()
	ports := testharness.FreePorts(t, 2)
	cfg := testharness.ProcConfig{Name: "m1", DataDir: filepath.Join(t.TempDir(), "m1.etcd"),
		ClientURL: fmt.Sprintf("http://127.0.0.1:%d", ports[0]), PeerURL: fmt.Sprintf("http://127.0.0.1:%d", ports[1])}
	p := testharness.StartEtcdProc(t, cfg)
	if err := p.WaitHealthy(30 * time.Second); err != nil {
		t.Fatal(err)
	}
	cli := must(clientv3.New(clientv3.Config{Endpoints: []string{cfg.ClientURL}, DialTimeout: 5 * time.Second}))
	defer cli.Close()
	st := must(file.Open(t.TempDir()))
	must(cli.Put(ctx, "/registry/a", "0"))
	take := snapshots(t, cli, st)
	must(take(ctx, h1.History))
	drain := make(chan struct{})
	c := &Capturer{Cli: cli, Store: st, Cluster: "c1", Flush: time.Minute, Drain: drain, Snapshot: take}
	done := make(chan struct{})
	go func() { c.Run(ctx); close(done) }()
	must(cli.Put(ctx, "/registry/b", "1"))
	time.Sleep(time.Second) // seen at once
	p.Stop()                // buffered, not stored (Flush is a minute); etcd goes down with the node
	start := time.Now()
	close(drain) // SIGTERM
	select {
	case <-done:
	case <-time.After(drainTimeout + 10*time.Second):
		t.Fatalf("capture's drain had not returned %s after etcd went down", time.Since(start).Round(time.Second))
	}
}

// compacting is a store whose snapshot uploads wait while etcd moves on and compacts past
// the snapshot's revision, as a long upload under Kubernetes' 5-minute compaction does.
type compacting struct {
	store.Store
	cli *clientv3.Client
}

func (c *compacting) Put(ctx context.Context, key string, r io.Reader) (int64, error) {
	if strings.HasSuffix(key, ".db.zst") {
		time.Sleep(300 * time.Millisecond) // a long upload
		var rev int64
		for i := range 5 {
			rev = must(c.cli.Put(ctx, fmt.Sprintf("/registry/later/%d", i), "x")).Header.Revision
		}
		must(c.cli.Compact(ctx, rev, clientv3.WithCompactPhysical()))
	}
	return c.Store.Put(ctx, key, r)
}

// A snapshot's sample of the keys written at its revision is taken as it streams, so an
// upload that etcd outlasts with a compaction still records one (without it, the snapshot
// would be a point no restore could be told apart from).
func TestSnapshotTailSurvivesCompactionDuringUpload(t *testing.T) {
	ctx := context.Background()
	e := testharness.StartEtcd(t)
	cli := e.Client(t)
	st := &compacting{Store: must(file.Open(t.TempDir())), cli: cli}
	must(cli.Put(ctx, "/registry/a", "1"))
	m := must(snapshots(t, cli, st)(ctx, h1.History))
	if len(m.Tail) != 1 || string(m.Tail[0].Key) != "/registry/a" {
		t.Fatalf("snapshot at revision %d has tail %+v, want the key written at it", m.Revision, m.Tail)
	}
}

// Encrypted segments: stored as age ciphertext, read back through listing summaries (whose
// names cannot say .age), and pruned with their data, never leaving ciphertext orphaned.
func TestEncryptedSegments(t *testing.T) {
	ctx := context.Background()
	fs, err := file.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	id := must(age.GenerateX25519Identity())
	idFile := filepath.Join(t.TempDir(), "id")
	must(0, os.WriteFile(idFile, []byte(id.String()), 0o600))
	st := crypt.Wrap(fs, must(crypt.ParseRecipients([]string{id.Recipient().String()}, nil)), must(crypt.LoadIdentities(idFile)))
	now := time.Now().UTC()
	m := snapshot.Manifest{ID: "s30", Object: "c1/snapshots/s30.db.zst", Cluster: "c1", Revision: 30, CreatedAt: now, History: h1.History}
	must(0, store.PutBytes(ctx, st, "c1/snapshots/s30.json", must(json.Marshal(m))))
	for from := int64(11); from < 40; from += 10 {
		var revs []Revision
		for r := from; r <= from+9; r++ {
			revs = append(revs, Revision{Rev: r, Time: now, Events: []Event{{Key: []byte("/registry/secrets/s"), Value: []byte(fmt.Sprint("secret-", r))}}})
		}
		w := must(WriteSegment(ctx, st, "c1", h1, revs))
		if !strings.HasSuffix(w.Object, ".seg.zst.age") || len(w.Recipients) != 1 {
			t.Fatalf("segment %s, recipients %v", w.Object, w.Recipients)
		}
		if raw := must(store.ReadAll(ctx, fs, w.Object, 1<<20)); !bytes.HasPrefix(raw, []byte("age-encryption.org/v1")) || bytes.Contains(raw, []byte("secret-")) {
			t.Fatalf("segment %s is stored readable", w.Object)
		}
	}
	next := int64(11)
	for _, seg := range must(Segments(ctx, st, "c1", h1.History, 0, nil)) {
		must(0, ReadSegment(ctx, st, seg, func(r Revision) error {
			if r.Rev != next || string(r.Events[0].Value) != fmt.Sprint("secret-", r.Rev) {
				return fmt.Errorf("revision %d (%q), want %d", r.Rev, r.Events[0].Value, next)
			}
			next++
			return nil
		}))
	}
	if next != 41 {
		t.Fatalf("read revisions up to %d, want 40", next-1)
	}
	must(Prune(ctx, st, "c1", []snapshot.Decision{{ID: "s30", History: h1.History, Keep: true}}, false))
	var left []string
	for _, o := range must(fs.List(ctx, "c1/deltas/")) {
		left = append(left, o.Key)
	}
	if len(left) != 2 || !slices.ContainsFunc(left, func(k string) bool { return strings.HasSuffix(k, "-00000000000000000031.seg.zst.age") }) {
		t.Fatalf("after pruning below revision 30: %v; want the 31-40 segment and its manifest alone", left)
	}
}
