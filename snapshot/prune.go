package snapshot

import (
	"context"
	"encoding/json"
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

// Plan decides for every snapshot (newest first, as List returns them, with their
// Verification). The newest verified snapshot is always kept, so a prune can never leave
// only snapshots nobody has checked; a snapshot that is not Usable fills no rule's slot.
func (r Retention) Plan(all []*Manifest, now time.Time) ([]Decision, error) {
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
	newestVerified, last := true, 0
	for i, m := range all {
		d := Decision{ID: m.ID, Created: m.CreatedAt.UTC().Format(time.RFC3339), History: m.History, Reasons: []string{}}
		if !Usable(m) {
			out[i] = d
			continue
		}
		t := m.CreatedAt.UTC()
		if last++; last <= r.Last {
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
		if m.Verification == Verified && newestVerified {
			newestVerified = false
			d.Reasons = append(d.Reasons, "newest verified")
		}
		d.Keep = len(d.Reasons) > 0
		out[i] = d
	}
	return out, nil
}

func recordKey(cluster, id, suffix string) string { return snapshotsPrefix(cluster) + id + suffix }

// verification is the record of one verification's outcome.
type verification struct {
	ID         string   `json:"id"`
	VerifiedAt string   `json:"verified_at"`
	OK         bool     `json:"ok"`
	SHA256     string   `json:"sha256,omitempty"`
	Problems   []string `json:"problems,omitempty"`
}

// RecordVerification stores the outcome of a verification next to the manifest, where
// List finds it: <ID>.verified.json when it passed, <ID>.failed.json when it did not.
// A failure outranks an earlier success; a success removes an earlier failure's record,
// after writing its own, so a snapshot is never shown good without a record that says so.
func RecordVerification(ctx context.Context, st store.Store, rep *VerifyReport) error {
	rec := verification{ID: rep.ID, VerifiedAt: time.Now().UTC().Format(time.RFC3339), OK: rep.OK, SHA256: rep.SHA256, Problems: rep.Problems}
	suffix := verifiedSuffix
	if !rep.OK {
		suffix = failedSuffix
	}
	b, err := json.Marshal(rec)
	if err != nil {
		return err
	}
	key := recordKey(rep.Cluster, rep.ID, suffix)
	if err := store.PutBytes(ctx, st, key, b); err != nil {
		return fmt.Errorf("recording the verification of snapshot %s as %s: %w", rep.ID, key, err)
	}
	if rep.OK {
		if err := st.Delete(ctx, recordKey(rep.Cluster, rep.ID, failedSuffix)); err != nil {
			return fmt.Errorf("removing the failed verification record of snapshot %s: %w", rep.ID, err)
		}
	}
	return nil
}

// Prune applies the retention policy to the cluster's snapshots and, unless dryRun,
// deletes the rest: manifest first, so a snapshot disappears from listings at once and a
// half-done prune never leaves a listed snapshot without its data.
func Prune(ctx context.Context, st store.Store, cluster string, r Retention, now time.Time, dryRun bool) ([]Decision, error) {
	all, err := List(ctx, st, cluster)
	if err != nil {
		return nil, err
	}
	decisions, err := r.Plan(all, now)
	if err != nil || dryRun {
		return decisions, err
	}
	for i, d := range decisions {
		if d.Keep {
			continue
		}
		m := all[i]
		keys := []string{manifestKey(cluster, m.ID), recordKey(cluster, m.ID, verifiedSuffix), recordKey(cluster, m.ID, failedSuffix)}
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
