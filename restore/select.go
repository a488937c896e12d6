package restore

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/etcdguard/etcdguard/delta"
	"github.com/etcdguard/etcdguard/snapshot"
	"github.com/etcdguard/etcdguard/store"
)

// ErrUnreachable is wrapped when the point asked for cannot be restored exactly: past what
// was captured, inside a gap of the deltas, or in more than one history. A restore then
// writes nothing; the error names the points it can reach.
var ErrUnreachable = errors.New("point not reachable exactly")

// Selector names the point to restore: exactly one of ID, At and Revision is set.
type Selector struct {
	ID       string    // a snapshot id, or "latest"
	At       time.Time // the state at this time: a snapshot, plus the deltas up to it
	Revision int64     // the state at this revision
	// History restricts At and Revision to one history (see `etcdguard timeline`): after a
	// restore without --bump-revision, revision numbers repeat in the new history.
	History string
}

func (s Selector) validate() error {
	n := 0
	if s.ID != "" {
		n++
	}
	if !s.At.IsZero() {
		n++
	}
	if s.Revision > 0 {
		n++
	}
	if n != 1 {
		return errors.New("choose the point with exactly one of --snapshot ID|latest, --at RFC3339 or --revision N")
	}
	if s.History != "" && s.ID != "" {
		return errors.New("--history goes with --at or --revision; a --snapshot names its history already")
	}
	return nil
}

// Plan is what restores a point: a base snapshot and the segments to replay onto it, up to
// exactly TargetRev or TargetTime (neither for the snapshot alone).
type Plan struct {
	Base       *snapshot.Manifest
	Deltas     []*delta.Manifest
	TargetRev  int64
	TargetTime time.Time
}

// Select plans the restore of the point sel names: exactly that point, or an error
// wrapping ErrUnreachable that names the latest point it can reach instead. Snapshots are
// chosen by their start time (created_at), the moment their data is from.
func Select(ctx context.Context, st store.Store, cluster string, sel Selector) (*Plan, error) {
	if err := sel.validate(); err != nil {
		return nil, err
	}
	if sel.ID != "" {
		m, err := snapshot.Find(ctx, st, cluster, sel.ID)
		if err != nil {
			return nil, err
		}
		return &Plan{Base: m}, nil
	}
	listed, err := snapshot.List(ctx, st, cluster)
	if err != nil {
		return nil, err
	}
	if sel.History != "" {
		listed = slices.DeleteFunc(listed, func(m *snapshot.Manifest) bool { return m.History != sel.History })
	}
	// A snapshot that failed verification, or whose object is gone, is never a base; it
	// still shows how far its history went.
	usable := slices.DeleteFunc(slices.Clone(listed), func(m *snapshot.Manifest) bool { return !snapshot.Usable(m) })
	if len(usable) == 0 {
		in := ""
		if sel.History != "" {
			in = " in history " + sel.History
		}
		return nil, fmt.Errorf("cluster %s has %w%s in %s", cluster, snapshot.ErrNoSnapshots, in, st)
	}
	if !sel.At.IsZero() {
		return selectTime(ctx, st, cluster, listed, usable, sel.At)
	}
	return selectRevision(ctx, st, cluster, listed, usable, sel.Revision)
}

// point is the point --at or --revision asks for, as snapshots, segments and capture's
// observations compare with it.
type point struct {
	what string
	rev  int64     // --revision
	at   time.Time // --at
	// cmp says where a snapshot is: < 0 before the point, 0 at it, > 0 after it.
	cmp func(*snapshot.Manifest) int
	// done says a segment ends at or after the point; seen, that capture saw its history
	// there or later.
	done func(*delta.Manifest) bool
	seen func(*delta.Observed) bool
	// why revision numbers or times of two histories overlap.
	overlap string
}

func revisionPoint(rev int64) point {
	return point{
		what: fmt.Sprintf("revision %d", rev), rev: rev,
		cmp:     func(m *snapshot.Manifest) int { return cmp.Compare(m.Revision, rev) },
		done:    func(s *delta.Manifest) bool { return s.ToRev >= rev },
		seen:    func(o *delta.Observed) bool { return o.Revision >= rev },
		overlap: "a restore without --bump-revision reuses revision numbers",
	}
}

func timePoint(at time.Time) point {
	return point{
		what: at.UTC().Format(time.RFC3339Nano), at: at,
		cmp:     func(m *snapshot.Manifest) int { return m.CreatedAt.Compare(at) },
		done:    func(s *delta.Manifest) bool { return !s.LastTime.Before(at) },
		seen:    func(o *delta.Observed) bool { return !o.Time.Before(at) },
		overlap: "etcd clusters of both ran at that time under this cluster name",
	}
}

// reach is how far a base snapshot and the segments chained onto it go.
type reach struct {
	base   *snapshot.Manifest
	segs   []*delta.Manifest
	rev    int64
	time   time.Time
	gapTo  int64 // > 0: the segments resume only after this revision (a gap)
	caught bool  // the chain reached the target
	beyond bool  // a segment listed ends at or after the target, even past a gap
}

// chain lists the segments of base's history from base on, until done says the target is
// reached, keeping those that chain without a gap.
func chain(ctx context.Context, st store.Store, cluster string, base *snapshot.Manifest, done func(*delta.Manifest) bool) (*reach, error) {
	segs, err := delta.Segments(ctx, st, cluster, base.History, base.Revision, done)
	if err != nil {
		return nil, err
	}
	r := &reach{base: base, rev: base.Revision, time: base.CreatedAt}
	r.beyond = len(segs) > 0 && done(segs[len(segs)-1])
	for _, s := range segs {
		if s.FromRev > r.rev+1 {
			r.gapTo = s.FromRev - 1
			break
		}
		r.segs = append(r.segs, s)
		if s.ToRev > r.rev { // a segment may overlap the one before (see delta's addRun)
			r.rev, r.time = s.ToRev, s.LastTime
		}
		if done(s) {
			r.caught = true
		}
	}
	return r, nil
}

func selectTime(ctx context.Context, st store.Store, cluster string, listed, usable []*snapshot.Manifest, at time.Time) (*Plan, error) {
	if !slices.ContainsFunc(usable, func(m *snapshot.Manifest) bool { return !m.CreatedAt.After(at) }) {
		oldest := usable[len(usable)-1] // newest first
		return nil, fmt.Errorf("no snapshot of cluster %s was taken at or before %s: the first is %s from %s: %w",
			cluster, at.UTC().Format(time.RFC3339), oldest.ID, oldest.CreatedAt.Format(time.RFC3339), store.ErrNotExist)
	}
	return selectPoint(ctx, st, cluster, listed, usable, timePoint(at))
}

func selectRevision(ctx context.Context, st store.Store, cluster string, listed, usable []*snapshot.Manifest, rev int64) (*Plan, error) {
	if !slices.ContainsFunc(usable, func(m *snapshot.Manifest) bool { return m.Revision <= rev }) {
		oldest := slices.MinFunc(usable, func(a, b *snapshot.Manifest) int { return cmp.Compare(a.Revision, b.Revision) })
		return nil, fmt.Errorf("no snapshot of cluster %s is at or below revision %d: the oldest, %s, is at revision %d: %w",
			cluster, rev, oldest.ID, oldest.Revision, store.ErrNotExist)
	}
	return selectPoint(ctx, st, cluster, listed, usable, revisionPoint(rev))
}

// candidate is one history that has a snapshot at or before the point.
type candidate struct {
	history  string
	r        *reach // from its newest usable snapshot at or before the point; nil if none
	contains bool   // the history went through the point: a restore of it may mean this one
}

// selectPoint plans the restore of p from the one history that went through it. A history
// went through p if it has a snapshot at or before p and a snapshot, a segment or an
// observation of capture at or after it. When two did, which one is meant is the
// operator's choice (--history), even if only one of them can be replayed to p exactly:
// restoring the other silently would restore data that never was at p in the history
// the operator means.
func selectPoint(ctx context.Context, st store.Store, cluster string, listed, usable []*snapshot.Manifest, p point) (*Plan, error) {
	var cands []*candidate
	for _, m := range listed { // newest first
		if p.cmp(m) > 0 || slices.ContainsFunc(cands, func(c *candidate) bool { return c.history == m.History }) {
			continue
		}
		c := &candidate{history: m.History}
		c.contains = slices.ContainsFunc(listed, func(o *snapshot.Manifest) bool { return o.History == m.History && p.cmp(o) >= 0 })
		if i := slices.IndexFunc(usable, func(o *snapshot.Manifest) bool { return o.History == m.History && p.cmp(o) <= 0 }); i >= 0 {
			base := usable[i]
			if p.cmp(base) == 0 {
				c.r = &reach{base: base, rev: base.Revision, time: base.CreatedAt, caught: true}
			} else {
				r, err := chain(ctx, st, cluster, base, p.done)
				if err != nil {
					return nil, err
				}
				c.r = r
			}
			c.contains = c.contains || c.r.caught || c.r.beyond
		} else if !c.contains {
			segs, err := delta.Segments(ctx, st, cluster, m.History, m.Revision, p.done)
			if err != nil {
				return nil, err
			}
			c.contains = len(segs) > 0 && p.done(segs[len(segs)-1])
		}
		if c.r != nil && !c.r.caught && c.r.gapTo == 0 || !c.contains {
			// Nothing was captured after the chain's end; if capture saw etcd stay at that
			// revision until the point or later, the state there is still exactly known.
			o, err := delta.ReadObserved(ctx, st, cluster, m.History)
			if err != nil {
				return nil, err
			}
			if o != nil && c.r != nil && !c.r.caught && c.r.gapTo == 0 && o.Revision == c.r.rev && o.Time.After(c.r.time) {
				c.r.time = o.Time
				c.r.caught = p.seen(o)
			}
			c.contains = c.contains || c.r != nil && c.r.caught || o != nil && p.seen(o)
		}
		cands = append(cands, c)
	}
	var in []*candidate
	for _, c := range cands {
		if c.contains {
			in = append(in, c)
		}
	}
	switch len(in) {
	case 0:
		// Past everything captured: explain from the newest base.
		for _, b := range usable {
			if i := slices.IndexFunc(cands, func(c *candidate) bool { return c.r != nil && c.r.base == b }); i >= 0 {
				return nil, unreachable(p.what+" is past what was captured", cands[i].r, p.newer(usable, b))
			}
		}
		return nil, fmt.Errorf("%w: %s: no usable snapshot of cluster %s is at or before it (`etcdguard snapshot list`)", ErrUnreachable, p.what, cluster)
	case 1:
		c := in[0]
		switch {
		case c.r == nil:
			return nil, fmt.Errorf("%w: %s is in history %s of cluster %s, but none of its snapshots at or before it is usable (they failed verification or lost their object; `etcdguard snapshot list`)",
				ErrUnreachable, p.what, c.history, cluster)
		case !c.r.caught:
			return nil, unreachable(p.what+" is past what was captured", c.r, p.newer(usable, c.r.base))
		}
		plan := &Plan{Base: c.r.base, Deltas: c.r.segs}
		if p.cmp(c.r.base) != 0 {
			plan.TargetRev, plan.TargetTime = p.rev, p.at
		}
		if len(plan.Deltas) == 0 {
			plan.Deltas, plan.TargetRev = nil, 0 // the snapshot alone is exactly the point
		}
		return plan, nil
	}
	var hs []string
	for _, c := range in {
		switch {
		case c.r == nil:
			hs = append(hs, fmt.Sprintf("--history %s (which cannot restore it exactly: none of its snapshots at or before it is usable)", c.history))
		case !c.r.caught:
			hs = append(hs, fmt.Sprintf("--history %s (which cannot restore it exactly: its latest reachable point from snapshot %s is revision %d, %s)",
				c.history, c.r.base.ID, c.r.rev, c.r.time.UTC().Format(time.RFC3339Nano)))
		default:
			hs = append(hs, fmt.Sprintf("--history %s (from snapshot %s)", c.history, c.r.base.ID))
		}
	}
	return nil, fmt.Errorf("%w: %s is in %d histories of cluster %s (%s): choose one with %s",
		ErrUnreachable, p.what, len(in), cluster, p.overlap, strings.Join(hs, " or "))
}

// newer returns the usable snapshots a refusal may offer instead of base, newest first:
// for a time, every one taken after base; for a revision, those of base's history above it
// (another history's revision numbers mean other data).
func (p point) newer(usable []*snapshot.Manifest, base *snapshot.Manifest) []*snapshot.Manifest {
	if p.rev == 0 {
		return usable[:slices.Index(usable, base)]
	}
	var out []*snapshot.Manifest
	for _, m := range usable {
		if m.History == base.History && m.Revision > base.Revision {
			out = append(out, m)
		}
	}
	return out
}

// unreachable explains why r does not get to the point asked, naming what does: the latest
// point it reaches and the next snapshot, if any (newer, newest first).
func unreachable(what string, r *reach, newer []*snapshot.Manifest) error {
	why := "capture stopped there"
	if r.gapTo > 0 {
		why = fmt.Sprintf("revisions %d to %d are missing from the deltas", r.rev+1, r.gapTo)
	}
	next := ""
	if len(newer) > 0 {
		n := newer[len(newer)-1]
		next = fmt.Sprintf(", or the next snapshot with --snapshot %s (%s, history %s)", n.ID, n.CreatedAt.UTC().Format(time.RFC3339), n.History)
	}
	return fmt.Errorf("%w: %s of history %s: the latest reachable point from snapshot %s is revision %d (%s; %s); restore it with --revision %d --history %s%s",
		ErrUnreachable, what, r.base.History, r.base.ID, r.rev, r.time.UTC().Format(time.RFC3339Nano), why, r.rev, r.base.History, next)
}
