package restore

import (
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
	all, err := snapshot.List(ctx, st, cluster)
	if err != nil {
		return nil, err
	}
	// A snapshot that failed verification, or whose object is gone, is never a base.
	all = slices.DeleteFunc(all, func(m *snapshot.Manifest) bool {
		return !snapshot.Usable(m) || sel.History != "" && m.History != sel.History
	})
	if len(all) == 0 {
		in := ""
		if sel.History != "" {
			in = " in history " + sel.History
		}
		return nil, fmt.Errorf("cluster %s has %w%s in %s", cluster, snapshot.ErrNoSnapshots, in, st)
	}
	if !sel.At.IsZero() {
		return selectTime(ctx, st, cluster, all, sel.At)
	}
	return selectRevision(ctx, st, cluster, all, sel.Revision)
}

// reach is how far a base snapshot and the segments chained onto it go.
type reach struct {
	base   *snapshot.Manifest
	segs   []*delta.Manifest
	rev    int64
	time   time.Time
	gapTo  int64 // > 0: the segments resume only after this revision (a gap)
	caught bool  // the chain reached the target
}

// chain lists the segments of base's history from base on, until done says the target is
// reached, keeping those that chain without a gap.
func chain(ctx context.Context, st store.Store, cluster string, base *snapshot.Manifest, done func(*delta.Manifest) bool) (*reach, error) {
	segs, err := delta.Segments(ctx, st, cluster, base.History, base.Revision, done)
	if err != nil {
		return nil, err
	}
	r := &reach{base: base, rev: base.Revision, time: base.CreatedAt}
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

func selectTime(ctx context.Context, st store.Store, cluster string, all []*snapshot.Manifest, at time.Time) (*Plan, error) {
	i := slices.IndexFunc(all, func(m *snapshot.Manifest) bool { return !m.CreatedAt.After(at) }) // newest first
	if i < 0 {
		oldest := all[len(all)-1]
		return nil, fmt.Errorf("no snapshot of cluster %s was taken at or before %s: the first is %s from %s: %w",
			cluster, at.UTC().Format(time.RFC3339), oldest.ID, oldest.CreatedAt.Format(time.RFC3339), store.ErrNotExist)
	}
	base := all[i]
	if base.CreatedAt.Equal(at) {
		return &Plan{Base: base}, nil
	}
	r, err := chain(ctx, st, cluster, base, func(s *delta.Manifest) bool { return !s.LastTime.Before(at) })
	if err != nil {
		return nil, err
	}
	if !r.caught && r.gapTo == 0 {
		// Nothing was captured after the chain's end; if capture saw etcd stay at that
		// revision until at or later, the state at `at` is still exactly known.
		o, err := delta.ReadObserved(ctx, st, cluster, base.History)
		if err != nil {
			return nil, err
		}
		if o != nil && o.Revision == r.rev && o.Time.After(r.time) {
			r.time = o.Time
			r.caught = !o.Time.Before(at)
		}
	}
	if !r.caught {
		return nil, unreachable(fmt.Sprintf("%s is past what was captured", at.UTC().Format(time.RFC3339)), r, all[:i])
	}
	return &Plan{Base: base, Deltas: r.segs, TargetTime: at}, nil
}

func selectRevision(ctx context.Context, st store.Store, cluster string, all []*snapshot.Manifest, rev int64) (*Plan, error) {
	// The newest snapshot at or below rev in each history is where a replay starts.
	var bases []*snapshot.Manifest
	for _, m := range all {
		if m.Revision <= rev && !slices.ContainsFunc(bases, func(b *snapshot.Manifest) bool { return b.History == m.History && b.Revision >= m.Revision }) {
			bases = slices.DeleteFunc(bases, func(b *snapshot.Manifest) bool { return b.History == m.History })
			bases = append(bases, m)
		}
	}
	if len(bases) == 0 {
		oldest := slices.MinFunc(all, func(a, b *snapshot.Manifest) int { return int(a.Revision - b.Revision) })
		return nil, fmt.Errorf("no snapshot of cluster %s is at or below revision %d: the oldest, %s, is at revision %d: %w",
			cluster, rev, oldest.ID, oldest.Revision, store.ErrNotExist)
	}
	var reached, short []*reach
	for _, b := range bases {
		r, err := chain(ctx, st, cluster, b, func(s *delta.Manifest) bool { return s.ToRev >= rev })
		if err != nil {
			return nil, err
		}
		if b.Revision == rev {
			r.caught, r.segs = true, nil
		}
		if r.caught {
			reached = append(reached, r)
		} else {
			short = append(short, r)
		}
	}
	switch len(reached) {
	case 0:
		return nil, unreachable(fmt.Sprintf("revision %d is past what was captured", rev), short[0], nil)
	case 1:
		r := reached[0]
		p := &Plan{Base: r.base, Deltas: r.segs}
		if len(r.segs) > 0 {
			p.TargetRev = rev
		}
		return p, nil
	}
	var hs []string
	for _, r := range reached {
		hs = append(hs, fmt.Sprintf("--history %s (from snapshot %s)", r.base.History, r.base.ID))
	}
	return nil, fmt.Errorf("%w: revision %d exists in %d histories of cluster %s (a restore without --bump-revision reuses revision numbers): choose one with %s",
		ErrUnreachable, rev, len(reached), cluster, strings.Join(hs, " or "))
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
