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
	// LockedUntil is set when the policy would delete the snapshot but its objects are
	// under a retention lock (S3 Object Lock) until then: it is kept, and not a failure.
	LockedUntil string `json:"locked_until,omitempty"`
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

// keepLocked turns a deletion into a keep: the lock is the backup doing its job.
func keepLocked(ctx context.Context, d *Decision, cluster, until string) {
	d.Keep, d.LockedUntil = true, until
	d.Reasons = append(d.Reasons, "locked until "+until)
	slog.InfoContext(ctx, "snapshot kept: locked until "+until, "cluster", cluster, "id", d.ID, "created_at", d.Created)
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
		// Only when there is one: a daemon may run without delete rights (--prune=false),
		// and S3 refuses even a no-op delete then.
		failed := recordKey(rep.Cluster, rep.ID, failedSuffix)
		if _, err := st.Stat(ctx, failed); errors.Is(err, store.ErrNotExist) {
			return nil
		}
		if err := st.Delete(ctx, failed); err != nil {
			return fmt.Errorf("removing the failed verification record of snapshot %s: %w", rep.ID, err)
		}
	}
	return nil
}

// Prune applies the retention policy to the cluster's snapshots and, unless dryRun,
// deletes the rest: manifest first, so a snapshot disappears from listings at once and a
// half-done prune never leaves a listed snapshot without its data. A snapshot any of whose
// objects is still under a retention lock is kept whole, with LockedUntil set.
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
		until, err := store.LockedUntil(ctx, st, now, keys...)
		if err != nil {
			return decisions, fmt.Errorf("pruning snapshot %s (checking its retention lock): %w; run prune again to finish", m.ID, err)
		}
		if !until.IsZero() {
			keepLocked(ctx, &decisions[i], cluster, until.UTC().Format(time.RFC3339))
			continue
		}
		for _, key := range keys {
			err := st.Delete(ctx, key)
			if errors.Is(err, store.ErrLocked) {
				// Locked since we looked (a bucket default retention, another writer).
				keepLocked(ctx, &decisions[i], cluster, "its retention date")
				break
			}
			if err != nil {
				return decisions, fmt.Errorf("pruning snapshot %s (deleting %s): %w; run prune again to finish", m.ID, key, err)
			}
		}
		if decisions[i].Keep {
			continue
		}
		slog.InfoContext(ctx, "snapshot pruned", "cluster", cluster, "id", m.ID, "created_at", d.Created)
	}
	return decisions, nil
}
