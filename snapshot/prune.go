package snapshot

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"time"

	"github.com/etcdguard/etcdguard/store"
)

// Retention says which snapshots to keep, as restic's forget does: the newest N, the
// newest of each of the last N hours, days and ISO weeks, and everything younger than
// Within. A snapshot kept by any rule stays.
type Retention struct {
	Last, Hourly, Daily, Weekly int
	Within                      time.Duration
}

// Decision is what Prune did or would do with one snapshot.
type Decision struct {
	ID      string   `json:"id"`
	Created string   `json:"created_at"`
	History string   `json:"history,omitempty"`
	Keep    bool     `json:"keep"`
	Reasons []string `json:"reasons"` // why it is kept
}

// Plan decides for every snapshot (newest first, as List returns them). verified holds
// the ids that passed `snapshot verify`: the newest of them is always kept, so a prune can
// never leave only snapshots nobody has checked.
func (r Retention) Plan(all []*Manifest, verified map[string]bool, now time.Time) ([]Decision, error) {
	if r.Last <= 0 && r.Hourly <= 0 && r.Daily <= 0 && r.Weekly <= 0 && r.Within <= 0 {
		return nil, errors.New("the retention policy keeps nothing: set at least one of --keep-last, --keep-hourly, --keep-daily, --keep-weekly, --keep-within")
	}
	out := make([]Decision, len(all))
	buckets := []struct {
		name  string
		n     int
		key   func(time.Time) string
		taken map[string]bool
	}{
		{"hourly", r.Hourly, func(t time.Time) string { return t.Format("2006-01-02T15") }, map[string]bool{}},
		{"daily", r.Daily, func(t time.Time) string { return t.Format("2006-01-02") }, map[string]bool{}},
		{"weekly", r.Weekly, func(t time.Time) string { y, w := t.ISOWeek(); return fmt.Sprintf("%d-W%02d", y, w) }, map[string]bool{}},
	}
	newestVerified := true
	for i, m := range all {
		d := Decision{ID: m.ID, Created: m.CreatedAt.UTC().Format(time.RFC3339), History: m.History, Reasons: []string{}}
		t := m.CreatedAt.UTC()
		if i < r.Last {
			d.Reasons = append(d.Reasons, fmt.Sprintf("last %d", r.Last))
		}
		if r.Within > 0 && now.Sub(t) <= r.Within {
			d.Reasons = append(d.Reasons, "within "+r.Within.String())
		}
		for _, b := range buckets {
			if k := b.key(t); b.n > 0 && !b.taken[k] && len(b.taken) < b.n {
				b.taken[k] = true
				d.Reasons = append(d.Reasons, b.name+" "+k)
			}
		}
		if verified[m.ID] && newestVerified {
			newestVerified = false
			d.Reasons = append(d.Reasons, "newest verified")
		}
		d.Keep = len(d.Reasons) > 0
		out[i] = d
	}
	return out, nil
}

func verifiedKey(cluster, id string) string { return snapshotsPrefix(cluster) + id + verifiedSuffix }

// RecordVerified notes that a snapshot passed verification; retention always keeps the
// newest such snapshot.
func RecordVerified(ctx context.Context, st store.Store, rep *VerifyReport) error {
	b := fmt.Appendf(nil, `{"id":%q,"verified_at":%q,"sha256":%q}`, rep.ID, time.Now().UTC().Format(time.RFC3339), rep.SHA256)
	return store.PutBytes(ctx, st, verifiedKey(rep.Cluster, rep.ID), b)
}

// Verified returns the ids of the cluster's snapshots that passed verification.
func Verified(ctx context.Context, st store.Store, cluster string) (map[string]bool, error) {
	objs, err := st.List(ctx, snapshotsPrefix(cluster))
	if err != nil {
		return nil, err
	}
	out := map[string]bool{}
	for _, o := range objs {
		if id, ok := strings.CutSuffix(o.Key[len(snapshotsPrefix(cluster)):], verifiedSuffix); ok {
			out[id] = true
		}
	}
	return out, nil
}

// Prune applies the retention policy to the cluster's snapshots and, unless dryRun,
// deletes the rest: manifest first, so a snapshot disappears from listings at once and a
// half-done prune never leaves a listed snapshot without its data.
func Prune(ctx context.Context, st store.Store, cluster string, r Retention, now time.Time, dryRun bool) ([]Decision, error) {
	all, err := List(ctx, st, cluster)
	if err != nil {
		return nil, err
	}
	verified, err := Verified(ctx, st, cluster)
	if err != nil {
		return nil, fmt.Errorf("listing verified snapshots: %w", err)
	}
	decisions, err := r.Plan(all, verified, now)
	if err != nil || dryRun {
		return decisions, err
	}
	for i, d := range decisions {
		if d.Keep {
			continue
		}
		m := all[i]
		keys := []string{manifestKey(cluster, m.ID), verifiedKey(cluster, m.ID)}
		// A manifest only ever names an object of its own cluster's snapshots.
		if strings.HasPrefix(m.Object, snapshotsPrefix(cluster)) {
			keys = append(keys, m.Object)
		}
		for _, key := range keys {
			if err := st.Delete(ctx, key); err != nil {
				return decisions, fmt.Errorf("pruning snapshot %s (deleting %s): %w; run prune again to finish", m.ID, key, err)
			}
		}
		slog.InfoContext(ctx, "snapshot pruned", "cluster", cluster, "id", m.ID, "created_at", d.Created)
	}
	return decisions, nil
}
