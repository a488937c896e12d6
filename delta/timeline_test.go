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
	spans, w := Timeline(snaps, segs)
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
	if _, w := Timeline(snaps, segs[:2]); w.LastRev != 500 {
		t.Fatalf("without later deltas the window ends at the newest snapshot: %+v", w)
	}
	if _, w := Timeline(nil, segs); w != nil {
		t.Fatalf("deltas without a snapshot restore nothing: %+v", w)
	}
}
