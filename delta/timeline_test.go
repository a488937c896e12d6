package delta

import (
	"strings"
	"testing"
	"time"

	"github.com/etcdguard/etcdguard/snapshot"
)

func TestTimeline(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(m int) time.Time { return t0.Add(time.Duration(m) * time.Minute) }
	snaps := []*snapshot.Manifest{{ID: "s2", Revision: 500, CreatedAt: at(60)}, {ID: "s1", Revision: 100, CreatedAt: at(0)}}
	segs := []*Manifest{
		{FromRev: 101, ToRev: 200, FirstTime: at(1), LastTime: at(10)},
		{FromRev: 201, ToRev: 300, FirstTime: at(11), LastTime: at(20)},
		// 301-450 lost
		{FromRev: 451, ToRev: 700, FirstTime: at(40), LastTime: at(90)},
		{FromRev: 701, ToRev: 800, FirstTime: at(91), LastTime: at(99)},
	}
	stored := func(snaps []*snapshot.Manifest, segs []*Manifest) *Stored {
		return &Stored{Snapshots: snaps, Runs: map[string][]Span{"": runsOf(segs)}}
	}
	spans, ws := Timeline(stored(snaps, segs))
	w := ws[0]
	var kinds []string
	for _, s := range spans {
		kinds = append(kinds, s.Kind)
	}
	want := "snapshot deltas gap deltas snapshot"
	if got := strings.Join(kinds, " "); got != want {
		t.Fatalf("spans %q, want %q", got, want)
	}
	if spans[2].FromRev != 301 || spans[2].ToRev != 450 || spans[1].Detail != "2 segments" {
		t.Fatalf("gap %+v, first run %+v", spans[2], spans[1])
	}
	// s2 (500) continues through 451-700 and 701-800.
	if w.FirstRev != 100 || w.LastRev != 800 || !w.LastTime.Equal(at(99)) || !w.FirstTime.Equal(at(0)) {
		t.Fatalf("window %+v", w)
	}
	// A segment that overlaps the one before (a fenced leader's late write) is no gap.
	overlapping := append(append([]*Manifest{}, segs[:2]...), &Manifest{FromRev: 250, ToRev: 320, FirstTime: at(15), LastTime: at(25)})
	if runs := runsOf(overlapping); len(runs) != 1 || runs[0].ToRev != 320 {
		t.Fatalf("overlapping segments make runs %+v", runs)
	}
	if _, ws := Timeline(stored(snaps, segs[:2])); ws[0].LastRev != 500 {
		t.Fatalf("without later deltas the window ends at the newest snapshot: %+v", ws)
	}
	if _, ws := Timeline(stored(nil, segs)); len(ws) != 0 {
		t.Fatalf("deltas without a snapshot restore nothing: %+v", ws)
	}
}

// A restore starts a new history: the timeline shows where, each history has its own
// window, and an idle capture's observation extends the newest one in time.
func TestTimelineHistories(t *testing.T) {
	t0 := time.Date(2026, 1, 1, 0, 0, 0, 0, time.UTC)
	at := func(m int) time.Time { return t0.Add(time.Duration(m) * time.Minute) }
	const old, cur = "20260101T000000Z-000000", "20260101T010000Z-111111"
	s := &Stored{
		Snapshots: []*snapshot.Manifest{
			{ID: "s3", Revision: 120, CreatedAt: at(61), History: cur}, // restored to 120, below what the old history reached
			{ID: "s1", Revision: 100, CreatedAt: at(0), History: old},
		},
		Runs: map[string][]Span{
			old: runsOf([]*Manifest{{History: old, FromRev: 101, ToRev: 300, FirstTime: at(1), LastTime: at(50)}}),
			cur: runsOf([]*Manifest{{History: cur, FromRev: 121, ToRev: 130, FirstTime: at(62), LastTime: at(63)}}),
		},
		Observed: map[string]*Observed{cur: {History: cur, Revision: 130, Time: at(90)}},
	}
	spans, ws := Timeline(s)
	var kinds []string
	for _, sp := range spans {
		kinds = append(kinds, sp.Kind+":"+sp.History[len(sp.History)-1:])
	}
	if got, want := strings.Join(kinds, " "), "history:0 snapshot:0 deltas:0 history:1 snapshot:1 deltas:1"; got != want {
		t.Fatalf("spans %q, want %q", got, want)
	}
	if len(ws) != 2 || ws[0].History != old || ws[0].LastRev != 300 || ws[1].History != cur || ws[1].LastRev != 130 || !ws[1].LastTime.Equal(at(90)) {
		t.Fatalf("windows %+v", ws)
	}
}

func runsOf(segs []*Manifest) []Span {
	var runs []Span
	for _, m := range segs {
		runs = addRun(runs, m)
	}
	return runs
}
