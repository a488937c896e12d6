package restore

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/etcdguard/etcdguard/snapshot"
	"github.com/etcdguard/etcdguard/store"
)

// Selector names the snapshot to restore: exactly one of its fields is set.
type Selector struct {
	ID       string    // a snapshot id, or "latest"
	At       time.Time // the newest snapshot taken at or before this time
	Revision int64     // the newest snapshot whose revision is at or below this one
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
		return errors.New("choose the snapshot with exactly one of --snapshot ID|latest, --at RFC3339 or --revision N")
	}
	return nil
}

// Select finds the snapshot sel names. Snapshots are chosen by their start time
// (created_at), the moment their data is from.
func Select(ctx context.Context, st store.Store, cluster string, sel Selector) (*snapshot.Manifest, error) {
	if err := sel.validate(); err != nil {
		return nil, err
	}
	if sel.ID != "" {
		return snapshot.Find(ctx, st, cluster, sel.ID)
	}
	all, err := snapshot.List(ctx, st, cluster)
	if err != nil {
		return nil, err
	}
	if len(all) == 0 {
		return nil, fmt.Errorf("cluster %s has %w in %s", cluster, snapshot.ErrNoSnapshots, st)
	}
	for _, m := range all { // newest first
		if !snapshot.Usable(m) {
			continue
		}
		if !sel.At.IsZero() && !m.CreatedAt.After(sel.At) {
			return m, nil
		}
		if sel.Revision > 0 && m.Revision <= sel.Revision {
			return m, nil
		}
	}
	oldest := all[len(all)-1]
	if !sel.At.IsZero() {
		return nil, fmt.Errorf("no snapshot of cluster %s was taken at or before %s: the first is %s from %s",
			cluster, sel.At.UTC().Format(time.RFC3339), oldest.ID, oldest.CreatedAt.Format(time.RFC3339))
	}
	return nil, fmt.Errorf("no snapshot of cluster %s is at or below revision %d: the oldest, %s, is at revision %d",
		cluster, sel.Revision, oldest.ID, oldest.Revision)
}
