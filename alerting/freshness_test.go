package alerting

import (
	"context"
	"encoding/json"
	"fmt"
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
	snap := func(age time.Duration, verification ...string) *snapshot.Manifest {
		return &snapshot.Manifest{ID: fmt.Sprintf("s%v", age), CreatedAt: now.Add(-age), Verification: strings.Join(verification, "")}
	}
	tests := []struct {
		name   string
		all    []*snapshot.Manifest
		policy Policy
		want   Status
		msg    string
	}{
		{"fresh", []*snapshot.Manifest{snap(time.Hour)}, p, OK, "is 1h0m0s old"},
		{"just under warn", []*snapshot.Manifest{snap(3 * time.Hour)}, p, OK, ""},
		{"warn", []*snapshot.Manifest{snap(4 * time.Hour)}, p, Warning, "more than 3h0m0s"},
		{"too old", []*snapshot.Manifest{snap(6 * time.Hour)}, p, Critical, "etcd snapshots too old"},
		{"too old without warn level", []*snapshot.Manifest{snap(6 * time.Hour)}, Policy{MaxAge: 5 * time.Hour}, Critical, "more than 5h0m0s"},
		{"between without warn level", []*snapshot.Manifest{snap(4 * time.Hour)}, Policy{MaxAge: 5 * time.Hour}, OK, ""},
		{"none", nil, p, Critical, "no snapshots at all"},
		{"fresh ones unusable", []*snapshot.Manifest{snap(time.Hour, snapshot.Failed), snap(2*time.Hour, snapshot.Missing), snap(6*time.Hour, snapshot.Verified)},
			p, Critical, "the newest, s6h0m0s, is 6h0m0s old"},
		{"all unusable", []*snapshot.Manifest{snap(time.Hour, snapshot.Failed)}, p, Critical, "no usable snapshot: all 1 failed verification"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			f := Evaluate("c1", tc.all, now, tc.policy)
			if f.Status != tc.want || !strings.Contains(f.Message, tc.msg) {
				t.Fatalf("%s: %q; want %s mentioning %q", f.Status, f.Message, tc.want, tc.msg)
			}
		})
	}
}

// writeManifest stores a manifest and a stand-in object: check reads manifests and
// looks for objects, not into them.
func writeManifest(t *testing.T, st store.Store, cluster string, age time.Duration) {
	t.Helper()
	id := time.Now().Add(-age).UTC().Format("20060102T150405Z") + "-abcdef"
	m := snapshot.Manifest{ID: id, Cluster: cluster, CreatedAt: time.Now().Add(-age), Object: cluster + "/snapshots/" + id + ".db"}
	b, _ := json.Marshal(m)
	for key, data := range map[string][]byte{m.Object: []byte("x"), cluster + "/snapshots/" + m.ID + ".json": b} {
		if err := store.PutBytes(context.Background(), st, key, data); err != nil {
			t.Fatal(err)
		}
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
