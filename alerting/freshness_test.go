package alerting

import (
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/etcdguard/etcdguard/snapshot"
	"github.com/etcdguard/etcdguard/store"
	"github.com/etcdguard/etcdguard/store/file"
)

func TestEvaluate(t *testing.T) {
	now := time.Date(2026, 1, 2, 12, 0, 0, 0, time.UTC)
	p := Policy{MaxAge: 5 * time.Hour, WarnAge: 3 * time.Hour}
	snap := func(age time.Duration) *snapshot.Manifest {
		return &snapshot.Manifest{ID: "s1", CreatedAt: now.Add(-age)}
	}
	tests := []struct {
		name   string
		newest *snapshot.Manifest
		policy Policy
		want   Status
		msg    string
	}{
		{"fresh", snap(time.Hour), p, OK, "is 1h0m0s old"},
		{"just under warn", snap(3 * time.Hour), p, OK, ""},
		{"warn", snap(4 * time.Hour), p, Warning, "more than 3h0m0s"},
		{"too old", snap(6 * time.Hour), p, Critical, "etcd snapshots too old"},
		{"too old without warn level", snap(6 * time.Hour), Policy{MaxAge: 5 * time.Hour}, Critical, "more than 5h0m0s"},
		{"between without warn level", snap(4 * time.Hour), Policy{MaxAge: 5 * time.Hour}, OK, ""},
		{"none", nil, p, Critical, "no snapshots at all"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := Evaluate("c1", tc.newest, now, tc.policy)
			if f.Status != tc.want || !strings.Contains(f.Message, tc.msg) {
				t.Fatalf("%s: %q; want %s mentioning %q", f.Status, f.Message, tc.want, tc.msg)
			}
		})
	}
}

// writeManifest stores a manifest only: check reads manifests, not snapshot data.
func writeManifest(t *testing.T, st store.Store, cluster string, age time.Duration) {
	t.Helper()
	m := snapshot.Manifest{ID: time.Now().Add(-age).UTC().Format("20060102T150405Z") + "-abcdef", Cluster: cluster,
		CreatedAt: time.Now().Add(-age), Object: "x"}
	b, _ := json.Marshal(m)
	if err := store.PutBytes(context.Background(), st, cluster+"/snapshots/"+m.ID+".json", b); err != nil {
		t.Fatal(err)
	}
}

func TestCheckFleet(t *testing.T) {
	st, err := file.Open(t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	p := Policy{MaxAge: 5 * time.Hour, WarnAge: 3 * time.Hour}
	if r := Check(context.Background(), st, nil, true, time.Now(), p); r.Status != Critical || !strings.Contains(r.Clusters[0].Message, "no snapshots of any cluster") {
		t.Fatalf("empty store: %+v", r)
	}
	writeManifest(t, st, "fresh", time.Hour)
	writeManifest(t, st, "fresh", 30*time.Hour)
	writeManifest(t, st, "aging", 4*time.Hour)
	writeManifest(t, st, "stale", 7*time.Hour)
	r := Check(context.Background(), st, nil, true, time.Now(), p)
	got := map[string]Status{}
	for _, c := range r.Clusters {
		got[c.Cluster] = c.Status
	}
	if r.Status != Critical || got["fresh"] != OK || got["aging"] != Warning || got["stale"] != Critical || len(got) != 3 {
		t.Fatalf("fleet: overall %s, %v", r.Status, got)
	}
	if r := Check(context.Background(), st, []string{"aging", "fresh"}, false, time.Now(), p); r.Status != Warning {
		t.Fatalf("aging+fresh: %s", r.Status)
	}
	if r := Check(context.Background(), st, []string{"missing"}, false, time.Now(), p); r.Status != Critical || r.Clusters[0].Cluster != "missing" {
		t.Fatalf("a named cluster without snapshots: %+v", r)
	}
}
