package restore

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"
	"time"

	"github.com/etcdguard/etcdguard/delta"
	"github.com/etcdguard/etcdguard/snapshot"
	"github.com/etcdguard/etcdguard/store"
	"github.com/etcdguard/etcdguard/store/file"
)

// The two histories of the tests below: H2 began with a restore of H1 without
// --bump-revision, so their revision numbers repeat.
const (
	hist1 = "20260101T000000Z-111111"
	hist2 = "20260101T010000Z-222222"
)

var t0 = time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)

type testSnap struct {
	history string
	rev     int64
	at      time.Duration // after t0
	failed  bool          // a verification found it corrupt
}

type testSeg struct {
	history     string
	from, to    int64
	first, last time.Duration
}

// historiesStore writes snapshot manifests (with a stand-in object: selection never reads
// it) and real delta segments; it returns the snapshots' ids in the order given.
func historiesStore(t *testing.T, snaps []testSnap, segs []testSeg) (store.Store, []string) {
	t.Helper()
	ctx := context.Background()
	st := must(file.Open(t.TempDir()))
	var ids []string
	for i, s := range snaps {
		at := t0.Add(s.at)
		id := fmt.Sprintf("%s-%06x", at.Format("20060102T150405Z"), i)
		m := &snapshot.Manifest{ID: id, Cluster: "c1", History: s.history, Revision: s.rev, CreatedAt: at,
			Object: "c1/snapshots/" + id + ".db.zst", Compression: "zstd", DBSize: 1 << 20, StoredSize: 1 << 18, SHA256: "00"}
		must(0, store.PutBytes(ctx, st, m.Object, []byte("stand-in")))
		must(0, store.PutBytes(ctx, st, "c1/snapshots/"+id+".json", must(json.Marshal(m))))
		if s.failed {
			rep := &snapshot.VerifyReport{ID: id, Cluster: "c1", Object: m.Object, Problems: []string{"sha256 mismatch"}}
			must(0, snapshot.RecordVerification(ctx, st, rep))
		}
		ids = append(ids, id)
	}
	for _, s := range segs {
		var revs []delta.Revision
		n := s.to - s.from
		for r := s.from; r <= s.to; r++ {
			at := t0.Add(s.first)
			if n > 0 {
				at = at.Add(time.Duration(r-s.from) * (s.last - s.first) / time.Duration(n))
			}
			revs = append(revs, delta.Revision{Rev: r, Time: at, Events: []delta.Event{{Key: fmt.Appendf(nil, "/k%d", r), Value: []byte("v")}}})
		}
		must(delta.WriteSegment(ctx, st, "c1", delta.Identity{History: s.history}, revs))
	}
	return st, ids
}

// A point is restored from the one history that went through it. When two did, the
// restore is refused naming both --history choices, also when only one of them can be
// replayed to the point exactly: the other would silently restore another history's data.
func TestSelectAcrossHistories(t *testing.T) {
	// H1: snapshots at revisions 100 and 300, no deltas. H2, restored from H1's revision
	// 100: its snapshot at 100 and deltas 101-250, later in time.
	byRev := []testSnap{{hist1, 100, 0, false}, {hist1, 300, 2 * time.Hour, false}, {hist2, 100, 3 * time.Hour, false}}
	byRevSegs := []testSeg{{hist2, 101, 250, 3*time.Hour + time.Minute, 4 * time.Hour}}
	// The same, but H1's snapshot at 100 failed verification: H1 still went through 200.
	failedBase := []testSnap{{hist1, 100, 0, true}, {hist1, 300, 2 * time.Hour, false}, {hist2, 100, 3 * time.Hour, false}}
	// H1 with deltas that have a gap (151-170 lost) instead of a second snapshot.
	gap := []testSnap{{hist1, 100, 0, false}, {hist2, 100, 3 * time.Hour, false}}
	gapSegs := []testSeg{{hist1, 101, 150, time.Minute, 10 * time.Minute}, {hist1, 171, 320, 20 * time.Minute, 40 * time.Minute}, byRevSegs[0]}
	// Two clusters under one name at the same time: H1 (snapshots at 0h and 2h) and H2
	// (a snapshot at 1h and deltas to 1h30).
	byTime := []testSnap{{hist1, 100, 0, false}, {hist1, 300, 2 * time.Hour, false}, {hist2, 100, time.Hour, false}}
	byTimeSegs := []testSeg{{hist2, 101, 250, time.Hour + time.Minute, 90 * time.Minute}}

	tests := []struct {
		name  string
		snaps []testSnap
		segs  []testSeg
		sel   Selector
		// want: the index of the base snapshot, and whether deltas are replayed
		want     int
		wantSegs int
		wantErr  []string // an ErrUnreachable refusal containing these
	}{
		{name: "revision in two histories, one cannot reach it", snaps: byRev, segs: byRevSegs, sel: Selector{Revision: 200},
			wantErr: []string{"revision 200 is in 2 histories", "--history " + hist1 + " (which cannot restore it exactly", "--history " + hist2 + " (from snapshot "}},
		{name: "revision with --history of the one that reaches it", snaps: byRev, segs: byRevSegs, sel: Selector{Revision: 200, History: hist2}, want: 2, wantSegs: 1},
		{name: "revision with --history of the one that does not", snaps: byRev, segs: byRevSegs, sel: Selector{Revision: 200, History: hist1},
			wantErr: []string{"latest reachable point from snapshot", "is revision 100", "or the next snapshot with --snapshot"}},
		{name: "revision both reach exactly", snaps: byRev, segs: byRevSegs, sel: Selector{Revision: 100},
			wantErr: []string{"in 2 histories", "--history " + hist1 + " (from snapshot ", "--history " + hist2 + " (from snapshot "}},
		{name: "revision only the old history went through", snaps: byRev, segs: byRevSegs, sel: Selector{Revision: 280},
			wantErr: []string{"revision 280 is past what was captured of history " + hist1}},
		{name: "revision at a snapshot only one history went through", snaps: byRev, segs: byRevSegs, sel: Selector{Revision: 300}, want: 1},
		{name: "revision past both", snaps: byRev, segs: byRevSegs, sel: Selector{Revision: 400}, wantErr: []string{"revision 400 is past what was captured"}},
		{name: "revision whose history's base failed verification", snaps: failedBase, segs: byRevSegs, sel: Selector{Revision: 200},
			wantErr: []string{"--history " + hist1 + " (which cannot restore it exactly: none of its snapshots at or before it is usable)", "--history " + hist2}},
		{name: "revision behind a gap of one history", snaps: gap, segs: gapSegs, sel: Selector{Revision: 200},
			wantErr: []string{"in 2 histories", "--history " + hist1 + " (which cannot restore it exactly: its latest reachable point from snapshot", "is revision 150", "--history " + hist2}},
		{name: "revision before the gap", snaps: gap, segs: gapSegs, sel: Selector{Revision: 140},
			wantErr: []string{"in 2 histories"}},
		{name: "revision after both gap and the other history", snaps: gap, segs: gapSegs, sel: Selector{Revision: 300, History: hist1},
			wantErr: []string{"revisions 151 to 170 are missing"}},
		{name: "time in two histories, one cannot reach it", snaps: byTime, segs: byTimeSegs, sel: Selector{At: t0.Add(75 * time.Minute)},
			wantErr: []string{"is in 2 histories", "--history " + hist1 + " (which cannot restore it exactly", "--history " + hist2 + " (from snapshot "}},
		{name: "time with --history", snaps: byTime, segs: byTimeSegs, sel: Selector{At: t0.Add(75 * time.Minute), History: hist2}, want: 2, wantSegs: 1},
		{name: "time after the other history ended", snaps: byRev, segs: byRevSegs, sel: Selector{At: t0.Add(3*time.Hour + 30*time.Minute)}, want: 2, wantSegs: 1},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			st, ids := historiesStore(t, tc.snaps, tc.segs)
			plan, err := Select(context.Background(), st, "c1", tc.sel)
			if tc.wantErr != nil {
				if !errors.Is(err, ErrUnreachable) {
					t.Fatalf("Select = %+v, %v; want a refusal (ErrUnreachable) saying %q", plan, err, tc.wantErr)
				}
				for _, w := range tc.wantErr {
					if !strings.Contains(err.Error(), w) {
						t.Fatalf("err = %v\nwant %q", err, w)
					}
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if plan.Base.ID != ids[tc.want] || len(plan.Deltas) != tc.wantSegs {
				t.Fatalf("plan from %s (history %s) with %d segments; want %s with %d", plan.Base.ID, plan.Base.History, len(plan.Deltas), ids[tc.want], tc.wantSegs)
			}
			if tc.wantSegs > 0 && plan.TargetRev != tc.sel.Revision || !plan.TargetTime.Equal(tc.sel.At) && tc.wantSegs > 0 {
				t.Fatalf("plan targets revision %d, time %s", plan.TargetRev, plan.TargetTime)
			}
		})
	}
}
