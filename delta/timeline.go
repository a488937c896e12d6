package delta

import (
	"cmp"
	"slices"
	"strconv"
	"time"

	"github.com/etcdguard/etcdguard/snapshot"
)

// Span is a stretch of the timeline: a full snapshot, a run of chained delta segments, or
// a gap between segments.
type Span struct {
	Kind     string    `json:"kind"` // snapshot, deltas, gap
	FromRev  int64     `json:"from_rev"`
	ToRev    int64     `json:"to_rev"`
	FromTime time.Time `json:"from_time,omitzero"`
	ToTime   time.Time `json:"to_time,omitzero"`
	Detail   string    `json:"detail"`
}

// Window is the range of revisions and times a restore can reach.
type Window struct {
	FirstRev  int64     `json:"first_rev"`
	FirstTime time.Time `json:"first_time"`
	LastRev   int64     `json:"last_rev"`
	LastTime  time.Time `json:"last_time"`
}

// Timeline orders snapshots (any order) and segments (revision order) into spans, and
// computes the restorable window: from the oldest snapshot to the furthest revision that
// a snapshot followed by unbroken segments reaches.
func Timeline(snaps []*snapshot.Manifest, segs []*Manifest) ([]Span, *Window) {
	var spans []Span
	for _, s := range snaps {
		spans = append(spans, Span{Kind: "snapshot", ToRev: s.Revision, ToTime: s.CreatedAt, Detail: s.ID})
	}
	for i := 0; i < len(segs); {
		j := i
		for j+1 < len(segs) && segs[j+1].FromRev == segs[j].ToRev+1 {
			j++
		}
		spans = append(spans, Span{Kind: "deltas", FromRev: segs[i].FromRev, ToRev: segs[j].ToRev, FromTime: segs[i].FirstTime,
			ToTime: segs[j].LastTime, Detail: plural(j-i+1, "segment")})
		if j+1 < len(segs) {
			spans = append(spans, Span{Kind: "gap", FromRev: segs[j].ToRev + 1, ToRev: segs[j+1].FromRev - 1,
				Detail: "revisions missing from the deltas: points in here are reachable only from a later snapshot"})
		}
		i = j + 1
	}
	sortSpans(spans)
	if len(snaps) == 0 {
		return spans, nil
	}
	w := &Window{}
	for _, s := range snaps {
		if w.FirstRev == 0 || s.Revision < w.FirstRev || s.Revision == w.FirstRev && s.CreatedAt.Before(w.FirstTime) {
			w.FirstRev, w.FirstTime = s.Revision, s.CreatedAt
		}
		end, endTime := s.Revision, s.CreatedAt
		for _, seg := range segs {
			if seg.FromRev <= end+1 && seg.ToRev > end {
				end, endTime = seg.ToRev, seg.LastTime
			}
		}
		if end > w.LastRev {
			w.LastRev, w.LastTime = end, endTime
		}
	}
	return spans, w
}

func plural(n int, word string) string {
	if n == 1 {
		return "1 " + word
	}
	return strconv.Itoa(n) + " " + word + "s"
}

// sortSpans orders spans by revision; a snapshot comes before the deltas that follow it.
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
