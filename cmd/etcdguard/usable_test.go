package main

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/etcdguard/etcdguard/internal/testharness"
	"github.com/etcdguard/etcdguard/restore"
	"github.com/etcdguard/etcdguard/snapshot"
)

// A snapshot that failed verification, or whose object is gone, is shown as such by list
// and is never taken for the latest by verify, restore (--snapshot latest, --at, --revision),
// check, or retention.
func TestE2EUnusableSnapshotsAreNeverChosen(t *testing.T) {
	e := testharness.StartEtcd(t)
	dir := t.TempDir()
	env := []string{"ETCDGUARD_ENDPOINTS=" + e.Endpoints[0], "ETCDGUARD_STORE=file://" + dir, "ETCDGUARD_CLUSTER=prod"}
	save := func() snapshot.Manifest {
		t.Helper()
		return decodeJSON[snapshot.Manifest](t, run(t, env, "snapshot", "save", "-o", "json"))
	}
	good, corrupt, gone := save(), save(), save()

	// Bit rot in the stored object of one, and a lost object for another.
	obj := filepath.Join(dir, corrupt.Object)
	b, err := os.ReadFile(obj)
	if err != nil {
		t.Fatal(err)
	}
	b[len(b)/2] ^= 0xff
	if err := os.WriteFile(obj, b, 0o600); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(dir, gone.Object)); err != nil {
		t.Fatal(err)
	}
	if r := run(t, env, "snapshot", "verify", corrupt.ID); r.code != 1 || !strings.Contains(r.stderr, "FAILED verification") {
		t.Fatalf("verify of the corrupt snapshot: exit %d, %s", r.code, r.stderr)
	}

	list := decodeJSON[[]struct {
		ID           string `json:"id"`
		Verification string `json:"verification"`
	}](t, run(t, env, "snapshot", "list", "-o", "json"))
	got := map[string]string{}
	for _, m := range list {
		got[m.ID] = m.Verification
	}
	want := map[string]string{good.ID: "unverified", corrupt.ID: "failed", gone.ID: "missing"}
	if len(got) != 3 || got[good.ID] != want[good.ID] || got[corrupt.ID] != want[corrupt.ID] || got[gone.ID] != want[gone.ID] {
		t.Fatalf("list marks %v, want %v", got, want)
	}
	table := run(t, env, "snapshot", "list")
	for _, line := range strings.Split(table.stdout, "\n") {
		if strings.HasPrefix(line, corrupt.ID) && !strings.Contains(line, "FAILED") ||
			strings.HasPrefix(line, gone.ID) && !strings.Contains(line, "MISSING") {
			t.Errorf("list does not mark the line: %q", line)
		}
	}

	rep := decodeJSON[snapshot.VerifyReport](t, run(t, env, "snapshot", "verify", "latest", "-o", "json"))
	if rep.ID != good.ID || !rep.OK {
		t.Fatalf("verify latest chose %s (ok %v), want %s", rep.ID, rep.OK, good.ID)
	}
	chk := decodeJSON[struct {
		Clusters []struct{ Newest string } `json:"clusters"`
	}](t, run(t, env, "check", "-o", "json"))
	if len(chk.Clusters) != 1 || chk.Clusters[0].Newest != good.ID {
		t.Fatalf("check counts %+v as the newest, want %s", chk.Clusters, good.ID)
	}
	for _, sel := range [][]string{{"--snapshot", "latest"}, {"--at", good.CreatedAt.Format(time.RFC3339Nano)}, {"--revision", fmt.Sprint(good.Revision)}} {
		args := append([]string{"restore", "--name", "m0", "--initial-cluster", "m0=http://127.0.0.1:2380",
			"--initial-advertise-peer-urls", "http://127.0.0.1:2380", "--data-dir", filepath.Join(t.TempDir(), "m0.etcd"), "-o", "json"}, sel...)
		res := decodeJSON[restore.Result](t, run(t, env, args...))
		if res.Snapshot.ID != good.ID {
			t.Errorf("restore %v chose %s, want %s", sel, res.Snapshot.ID, good.ID)
		}
	}

	// keep-last 1 is filled by the good snapshot, not by the newer unusable ones.
	if r := run(t, env, "snapshot", "prune", "--keep-last", "1"); r.code != 0 {
		t.Fatalf("prune: exit %d, %s", r.code, r.stderr)
	}
	var left []string
	for _, m := range decodeJSON[[]snapshot.Manifest](t, run(t, env, "snapshot", "list", "-o", "json")) {
		left = append(left, m.ID)
	}
	if !slices.Equal(left, []string{good.ID}) {
		t.Fatalf("after prune --keep-last 1: %v, want only %s", left, good.ID)
	}
}
