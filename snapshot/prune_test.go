package snapshot

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/etcdguard/etcdguard/store"
	"github.com/etcdguard/etcdguard/store/file"
)

// history is two snapshots an hour (at :10 and :40) for three days before now, newest first.
func history(now time.Time) []*Manifest {
	var out []*Manifest
	for h := range 72 {
		for _, min := range []int{40, 10} {
			t := now.Truncate(time.Hour).Add(-time.Duration(h) * time.Hour).Add(time.Duration(min) * time.Minute)
			if t.After(now) {
				continue
			}
			out = append(out, &Manifest{ID: t.Format("20060102T150405Z") + "-000000", Cluster: "c1", CreatedAt: t})
		}
	}
	return out
}

func TestRetentionPlan(t *testing.T) {
	now := time.Date(2026, 3, 4, 12, 50, 0, 0, time.UTC) // a Wednesday
	all := history(now)
	id := func(day, hour, min int) string {
		return time.Date(2026, 3, day, hour, min, 0, 0, time.UTC).Format("20060102T150405Z") + "-000000"
	}
	tests := []struct {
		name     string
		r        Retention
		verified []string
		failed   []string
		missing  []string
		want     []string // kept, newest first
	}{
		{name: "last 3", r: Retention{Last: 3}, want: []string{id(4, 12, 40), id(4, 12, 10), id(4, 11, 40)}},
		{name: "hourly 3: the newest of each hour", r: Retention{Hourly: 3}, want: []string{id(4, 12, 40), id(4, 11, 40), id(4, 10, 40)}},
		{name: "daily 3", r: Retention{Daily: 3}, want: []string{id(4, 12, 40), id(3, 23, 40), id(2, 23, 40)}},
		{name: "weekly 2: this ISO week and the last", r: Retention{Weekly: 2}, want: []string{id(4, 12, 40), id(1, 23, 40)}},
		{name: "within 1h", r: Retention{Within: time.Hour}, want: []string{id(4, 12, 40), id(4, 12, 10)}},
		{name: "rules add up", r: Retention{Last: 2, Daily: 2}, want: []string{id(4, 12, 40), id(4, 12, 10), id(3, 23, 40)}},
		{name: "the newest verified is always kept", r: Retention{Last: 1}, verified: []string{id(2, 5, 10), id(1, 5, 10)},
			want: []string{id(4, 12, 40), id(2, 5, 10)}},
		{name: "unusable snapshots fill no slot", r: Retention{Last: 1, Hourly: 2}, failed: []string{id(4, 12, 40)}, missing: []string{id(4, 11, 40)},
			want: []string{id(4, 12, 10), id(4, 11, 10)}},
		{name: "a failed snapshot is not the newest verified", r: Retention{Last: 1}, verified: []string{id(2, 5, 10), id(2, 4, 10)}, failed: []string{id(2, 5, 10)},
			want: []string{id(4, 12, 40), id(2, 4, 10)}},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			marks := map[string]string{}
			// In this order, as List ranks them: a failure outranks an earlier success.
			for i, ids := range [][]string{tc.verified, tc.failed, tc.missing} {
				for _, id := range ids {
					marks[id] = []string{Verified, Failed, Missing}[i]
				}
			}
			var marked []*Manifest
			for _, m := range all {
				c := *m
				c.Verification = marks[m.ID]
				marked = append(marked, &c)
			}
			ds, err := tc.r.Plan(marked, now)
			if err != nil {
				t.Fatal(err)
			}
			var kept []string
			for _, d := range ds {
				if d.Keep {
					kept = append(kept, d.ID)
				}
			}
			if !slices.Equal(kept, tc.want) {
				t.Fatalf("kept %v\nwant %v", kept, tc.want)
			}
		})
	}
	if _, err := (Retention{}).Plan(all, now); err == nil || !strings.Contains(err.Error(), "keeps nothing") {
		t.Fatalf("empty policy: %v", err)
	}
}

func TestPrune(t *testing.T) {
	ctx := context.Background()
	st, err := file.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	now := time.Now().UTC()
	var all []*Manifest
	for i := range 6 {
		m := &Manifest{ID: fmt.Sprintf("2026010%dT000000Z-00000%d", i+1, i), Cluster: "c1", CreatedAt: now.Add(-time.Duration(6-i) * 24 * time.Hour)}
		m.Object = objectKey("c1", m.ID, "zstd")
		b, _ := json.Marshal(m)
		for key, data := range map[string][]byte{m.Object: []byte("data"), manifestKey("c1", m.ID): b} {
			if err := store.PutBytes(ctx, st, key, data); err != nil {
				t.Fatal(err)
			}
		}
		all = append(all, m)
	}
	if err := RecordVerification(ctx, st, &VerifyReport{ID: all[1].ID, Cluster: "c1", OK: true}); err != nil {
		t.Fatal(err)
	}
	keys := func() []string {
		objs, _ := st.List(ctx, "c1/")
		var out []string
		for _, o := range objs {
			out = append(out, o.Key)
		}
		return out
	}
	before := keys()
	ds, err := Prune(ctx, st, "c1", Retention{Last: 2}, now, true)
	if err != nil || len(ds) != 6 || !slices.Equal(keys(), before) {
		t.Fatalf("dry run changed the store or failed: %v", err)
	}
	if _, err := Prune(ctx, st, "c1", Retention{Last: 2}, now, false); err != nil {
		t.Fatal(err)
	}
	left, err := List(ctx, st, "c1")
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, m := range left {
		ids = append(ids, m.ID)
	}
	if want := []string{all[5].ID, all[4].ID, all[1].ID}; !slices.Equal(ids, want) {
		t.Fatalf("left %v, want %v (last 2 and the verified one)", ids, want)
	}
	want := []string{manifestKey("c1", all[1].ID), all[1].Object, recordKey("c1", all[1].ID, verifiedSuffix),
		manifestKey("c1", all[4].ID), all[4].Object, manifestKey("c1", all[5].ID), all[5].Object}
	slices.Sort(want)
	if got := keys(); !slices.Equal(got, want) {
		t.Fatalf("objects left %v\nwant %v", got, want)
	}
}
