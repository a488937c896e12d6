package delta

import (
	"cmp"
	"context"
	"slices"
	"strconv"
	"time"

	"github.com/etcdguard/etcdguard/snapshot"
	"github.com/etcdguard/etcdguard/store"
)

// Span is a stretch of the timeline: a full snapshot, a run of chained delta segments, a
// gap between segments, or the start of a history (etcd restored).
type Span struct {
	Kind     string    `json:"kind"` // history, snapshot, deltas, gap
	History  string    `json:"history"`
	FromRev  int64     `json:"from_rev"`
	ToRev    int64     `json:"to_rev"`
	FromTime time.Time `json:"from_time,omitzero"`
	ToTime   time.Time `json:"to_time,omitzero"`
	Detail   string    `json:"detail"`

	segments int // of a deltas run
}

// Window is the range of revisions and times a restore can reach in one history.
type Window struct {
	History   string    `json:"history"`
	FirstRev  int64     `json:"first_rev"`
	FirstTime time.Time `json:"first_time"`
	LastRev   int64     `json:"last_rev"`
	LastTime  time.Time `json:"last_time"`
}

// Stored is what a timeline is made of: every snapshot, and per history the runs of
// chained segments from its oldest snapshot on and how far capture observed it. Runs, not
// segments: a month at a 5 s flush is half a million segments, and a timeline needs only
// where they chain and where they do not.
type Stored struct {
	Snapshots []*snapshot.Manifest
	Runs      map[string][]Span    // by history, in revision order; Kind "deltas"
	Observed  map[string]*Observed // by history
}

// addRun extends the last run with m if m chains onto it, else starts a new run. A segment
// may overlap the previous one (a fenced leader's write that landed late): the replay skips
// what it already applied, so that is no gap.
func addRun(runs []Span, m *Manifest) []Span {
	if n := len(runs); n > 0 && m.FromRev <= runs[n-1].ToRev+1 {
		r := &runs[n-1]
		if m.ToRev > r.ToRev {
			r.ToRev, r.ToTime = m.ToRev, m.LastTime
		}
		r.segments++
		return runs
	}
	return append(runs, Span{Kind: "deltas", History: m.History, FromRev: m.FromRev, ToRev: m.ToRev, FromTime: m.FirstTime, ToTime: m.LastTime, segments: 1})
}

// Load reads what the cluster's timeline needs: the segments a snapshot can reach (from
// each history's oldest snapshot on), not those retention left behind it.
func Load(ctx context.Context, st store.Store, cluster string) (*Stored, error) {
	snaps, err := snapshot.List(ctx, st, cluster)
	if err != nil {
		return nil, err
	}
	s := &Stored{Snapshots: snaps, Runs: map[string][]Span{}, Observed: map[string]*Observed{}}
	oldest := map[string]int64{}
	for _, m := range snaps {
		if r, ok := oldest[m.History]; !ok || m.Revision < r {
			oldest[m.History] = m.Revision
		}
	}
	for h, after := range oldest {
		var runs []Span
		if err := walkSegments(ctx, st, cluster, h, after, func(m *Manifest) bool { runs = addRun(runs, m); return true }); err != nil {
			return nil, err
		}
		s.Runs[h] = runs
		if s.Observed[h], err = ReadObserved(ctx, st, cluster, h); err != nil {
			return nil, err
		}
	}
	return s, nil
}

// Timeline orders each history's snapshots and segments into spans, histories in the order
// they started, and computes per history the restorable window: from its oldest snapshot to
// the furthest point a snapshot followed by unbroken segments reaches (or, when capture saw
// etcd idle there, the time it last saw it).
func Timeline(s *Stored) ([]Span, []Window) {
	type hist struct {
		id    string
		start time.Time
		snaps []*snapshot.Manifest
	}
	var hs []*hist
	for _, m := range s.Snapshots {
		i := slices.IndexFunc(hs, func(h *hist) bool { return h.id == m.History })
		if i < 0 {
			hs = append(hs, &hist{id: m.History, start: m.CreatedAt})
			i = len(hs) - 1
		}
		hs[i].snaps = append(hs[i].snaps, m)
		if m.CreatedAt.Before(hs[i].start) {
			hs[i].start = m.CreatedAt
		}
	}
	slices.SortFunc(hs, func(a, b *hist) int { return a.start.Compare(b.start) })
	var spans []Span
	var windows []Window
	for n, h := range hs {
		runs := s.Runs[h.id]
		var own []Span
		for _, m := range h.snaps {
			own = append(own, Span{Kind: "snapshot", History: h.id, ToRev: m.Revision, ToTime: m.CreatedAt, Detail: m.ID})
		}
		for i, r := range runs {
			r.Detail = plural(r.segments, "segment")
			own = append(own, r)
			if i+1 < len(runs) {
				own = append(own, Span{Kind: "gap", History: h.id, FromRev: r.ToRev + 1, ToRev: runs[i+1].FromRev - 1,
					Detail: "revisions missing from the deltas: points in here are reachable only from a later snapshot"})
			}
		}
		sortSpans(own)
		if n > 0 || h.id != "" {
			spans = append(spans, Span{Kind: "history", History: h.id, FromTime: h.start, Detail: historyDetail(n)})
		}
		spans = append(spans, own...)
		windows = append(windows, window(h.id, h.snaps, runs, s.Observed[h.id]))
	}
	return spans, windows
}

// window is how far the snapshots of one history and its runs of chained segments reach.
func window(history string, snaps []*snapshot.Manifest, runs []Span, o *Observed) Window {
	w := Window{History: history}
	for _, s := range snaps {
		if w.FirstTime.IsZero() || s.Revision < w.FirstRev || s.Revision == w.FirstRev && s.CreatedAt.Before(w.FirstTime) {
			w.FirstRev, w.FirstTime = s.Revision, s.CreatedAt
		}
		end, endTime := s.Revision, s.CreatedAt
		// the run holding the revision right after the snapshot, if any
		i, _ := slices.BinarySearchFunc(runs, s.Revision+1, func(r Span, rev int64) int { return cmp.Compare(r.ToRev, rev) })
		if i < len(runs) && runs[i].FromRev <= s.Revision+1 {
			end, endTime = runs[i].ToRev, runs[i].ToTime
		}
		if end > w.LastRev || end == w.LastRev && endTime.After(w.LastTime) {
			w.LastRev, w.LastTime = end, endTime
		}
	}
	if o != nil && o.Revision == w.LastRev && o.Time.After(w.LastTime) {
		w.LastTime = o.Time
	}
	return w
}

func historyDetail(n int) string {
	if n == 0 {
		return "the oldest stored history"
	}
	return "a new history: etcd was restored (revisions may repeat those of the previous history)"
}

func plural(n int, word string) string {
	if n == 1 {
		return "1 " + word
	}
	return strconv.Itoa(n) + " " + word + "s"
}

// sortSpans orders one history's spans by revision; a snapshot comes before the deltas
// that follow it.
func sortSpans(s []Span) {
	key := func(sp Span) int64 {
		if sp.Kind == "snapshot" {
			return sp.ToRev
		}
		return sp.FromRev
	}
	slices.SortStableFunc(s, func(a, b Span) int {
		if c := cmp.Compare(key(a), key(b)); c != 0 {
			return c
		}
		if a.Kind == "snapshot" && b.Kind != "snapshot" {
			return -1
		}
		return 0
	})
}
