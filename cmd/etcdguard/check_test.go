package main

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

// check's exit codes are its contract with Nagios-style monitoring.
func TestCheckExitCodes(t *testing.T) {
	dir := t.TempDir()
	st, err := file.Open(dir)
	if err != nil {
		t.Fatal(err)
	}
	put := func(cluster string, age time.Duration) {
		created := time.Now().Add(-age).UTC()
		id := created.Format("20060102T150405Z") + "-000000"
		m := snapshot.Manifest{ID: id, Cluster: cluster, CreatedAt: created, Object: cluster + "/snapshots/" + id + ".db"}
		b, _ := json.Marshal(m)
		for key, data := range map[string][]byte{m.Object: []byte("x"), cluster + "/snapshots/" + m.ID + ".json": b} {
			if err := store.PutBytes(context.Background(), st, key, data); err != nil {
				t.Fatal(err)
			}
		}
	}
	put("prod", time.Hour)
	put("staging", 4*time.Hour)
	put("old", 9*time.Hour)
	s := "file://" + dir
	tests := []struct {
		name string
		env  []string
		args []string
		code int
		line string
	}{
		{"fresh", nil, []string{"--cluster", "prod"}, 0, "OK: cluster prod: the newest snapshot"},
		{"warning", nil, []string{"--cluster", "staging", "--warn-age", "3h"}, 1, "WARNING: cluster staging"},
		{"too old", nil, []string{"--cluster", "old"}, 2, "CRITICAL: cluster old: etcd snapshots too old"},
		{"no snapshots", nil, []string{"--cluster", "new"}, 2, "CRITICAL: cluster new: no snapshots at all"},
		{"fleet", nil, []string{"--all-clusters", "--warn-age", "3h"}, 2, "WARNING: cluster staging"},
		{"several clusters, none chosen", nil, nil, 3, "UNKNOWN: cluster ?: the store holds several clusters"},
		{"store unreachable", []string{"AWS_ACCESS_KEY_ID=a", "AWS_SECRET_ACCESS_KEY=b", "AWS_REGION=us-east-1"},
			[]string{"--store", "s3://bucket", "--s3-endpoint", "http://127.0.0.1:1", "--cluster", "prod"}, 3, "UNKNOWN: cluster prod: cannot connect"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			args := append([]string{"check", "--store", s}, tc.args...)
			r := run(t, tc.env, args...)
			if r.code != tc.code || !strings.Contains(r.stdout, tc.line) {
				t.Fatalf("exit %d, stdout %q stderr %q; want exit %d and %q", r.code, r.stdout, r.stderr, tc.code, tc.line)
			}
		})
	}
	var rep struct {
		Status   string `json:"status"`
		Clusters []struct {
			Cluster    string  `json:"cluster"`
			Status     string  `json:"status"`
			Newest     string  `json:"newest"`
			AgeSeconds float64 `json:"age_seconds"`
			Message    string  `json:"message"`
		} `json:"clusters"`
	}
	r := run(t, nil, "check", "--store", s, "--all-clusters", "-o", "json")
	if err := json.Unmarshal([]byte(r.stdout), &rep); err != nil || r.code != 2 || rep.Status != "CRITICAL" || len(rep.Clusters) != 3 {
		t.Fatalf("json: exit %d, %v, %+v", r.code, err, rep)
	}
	for _, c := range rep.Clusters {
		if c.Newest == "" || c.AgeSeconds <= 0 || c.Message == "" {
			t.Errorf("cluster entry %+v", c)
		}
	}
}
