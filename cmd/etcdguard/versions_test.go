package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"go.etcd.io/etcd/api/v3/mvccpb"
	clientv3 "go.etcd.io/etcd/client/v3"

	"github.com/etcdguard/etcdguard/delta/deltatest"
	"github.com/etcdguard/etcdguard/internal/loadgen"
	"github.com/etcdguard/etcdguard/internal/testharness"
	"github.com/etcdguard/etcdguard/snapshot"
	"github.com/etcdguard/etcdguard/store/file"
)

// The etcd servers users run: save, verify, restore (the members etcdguard writes start and
// serve on that server), guarded delete and undo, and delta capture with a point-in-time
// restore, against each.
//
// With ETCDGUARD_COMPAT_REPORT=FILE it writes what passed, per server, as the table of
// docs/compatibility.md (`make compat`): produced by the run, never typed by hand.
func TestE2EEtcdVersions(t *testing.T) {
	report := newCompatReport(t, os.Getenv("ETCDGUARD_COMPAT_REPORT"))
	for _, tc := range []struct{ bin, version string }{
		{"etcd-3.5", "3.5."},
		{"etcd-3.6", "3.6."},
		{"etcd", "3.7."}, // the version in our go.mod
	} {
		t.Run(tc.bin, func(t *testing.T) {
			ctx := context.Background()
			bin := testharness.Bin(t, tc.bin)
			start := func(name, dataDir string) *testharness.EtcdProc {
				ports := testharness.FreePorts(t, 2)
				p := testharness.StartEtcdProc(t, testharness.ProcConfig{Name: name, DataDir: dataDir, Binary: bin,
					ClientURL: fmt.Sprintf("http://127.0.0.1:%d", ports[0]), PeerURL: fmt.Sprintf("http://127.0.0.1:%d", ports[1])})
				if err := p.WaitHealthy(30 * time.Second); err != nil {
					t.Fatal(err)
				}
				return p
			}
			src := start("m1", filepath.Join(t.TempDir(), "m1.etcd"))
			cli := newClient(t, []string{src.Endpoint()})
			if _, err := loadgen.LoadK8sKeyspace(ctx, cli, loadgen.Options{Keys: 400, Seed: 3}); err != nil {
				t.Fatal(err)
			}
			dir := t.TempDir()
			st := must(file.Open(dir))
			g := []string{"--endpoints", src.Endpoint(), "--store", "file://" + dir, "--cluster", "prod"}

			m := decodeJSON[snapshot.Manifest](t, run(t, nil, append([]string{"snapshot", "save", "-o", "json"}, g...)...))
			if !strings.HasPrefix(m.EtcdVersion, tc.version) {
				t.Fatalf("the manifest says etcd %s, want %s*", m.EtcdVersion, tc.version)
			}
			row := report.row(must(cli.Status(ctx, src.Endpoint())).Version) // the server's; the manifest has the storage version
			if r := run(t, nil, append([]string{"snapshot", "verify", m.ID}, g...)...); r.code != 0 {
				t.Fatalf("verify: exit %d\n%s%s", r.code, r.stdout, r.stderr)
			}
			row.pass("save + verify")
			restoreOn := func(args ...string) *clientv3.Client {
				t.Helper()
				ports := testharness.FreePorts(t, 2)
				peer := fmt.Sprintf("http://127.0.0.1:%d", ports[1])
				dataDir := filepath.Join(t.TempDir(), "r.etcd")
				r := run(t, nil, append(append([]string{"restore", "--name", "r", "--initial-cluster", "r=" + peer, "--data-dir", dataDir}, args...), g...)...)
				if r.code != 0 {
					t.Fatalf("restore %v: exit %d\n%s%s", args, r.code, r.stdout, r.stderr)
				}
				p := testharness.StartEtcdProc(t, testharness.ProcConfig{Name: "r", DataDir: dataDir, Binary: bin, PeerURL: peer,
					ClientURL: fmt.Sprintf("http://127.0.0.1:%d", ports[0])})
				if err := p.WaitHealthy(30 * time.Second); err != nil {
					t.Fatalf("the member restored by %v does not start on %s: %v", args, tc.bin, err)
				}
				return newClient(t, []string{p.Endpoint()})
			}
			all := func(c *clientv3.Client, rev int64) []*mvccpb.KeyValue {
				return must(c.Get(ctx, "", clientv3.WithFromKey(), clientv3.WithRev(rev))).Kvs
			}
			rcli := restoreOn("--snapshot", m.ID)
			sameKeys(t, all(rcli, 0), all(cli, m.Revision))
			row.pass("restore (member starts on this server)")

			// guarded delete and undo
			p := decodeJSON[struct {
				PlanID   string `json:"plan_id"`
				KeyCount int64  `json:"key_count"`
			}](t, run(t, nil, append([]string{"del", "/registry/configmaps/", "--prefix", "--dry-run", "-o", "json"}, g...)...))
			if r := run(t, nil, append([]string{"del", "--confirm", p.PlanID, "--accept-warnings"}, g...)...); r.code != 0 || p.KeyCount == 0 {
				t.Fatalf("confirm of %d keys: exit %d\n%s%s", p.KeyCount, r.code, r.stdout, r.stderr)
			}
			count := func() int64 {
				return must(cli.Get(ctx, "/registry/configmaps/", clientv3.WithPrefix(), clientv3.WithCountOnly())).Count
			}
			if n := count(); n != 0 {
				t.Fatalf("%d configmaps left after the guarded delete", n)
			}
			if r := run(t, nil, append([]string{"guard", "undo", p.PlanID}, g...)...); r.code != 0 || count() != p.KeyCount {
				t.Fatalf("undo: exit %d, %d configmaps back of %d\n%s%s", r.code, count(), p.KeyCount, r.stdout, r.stderr)
			}
			row.pass("guarded delete + undo")

			// delta capture, and a point between two captured revisions
			startDaemon(t, nil, "", append([]string{"--schedule", "@every 1h", "--election-ttl", "3s", "--delta", "--delta-flush", "200ms"}, g...)...)
			var mid, last int64
			for i := range 30 {
				last = must(cli.Put(ctx, fmt.Sprintf("/registry/pods/ns/p%d", i%7), fmt.Sprint(i))).Header.Revision
				if i == 14 {
					mid = last
				}
			}
			deltatest.Stored(t, st, "prod", last)
			sameKeys(t, all(restoreOn("--revision", fmt.Sprint(mid)), 0), all(cli, mid))
			row.pass("delta capture + restore --revision")
		})
	}
}

// compatReport collects, per etcd server version, the features that passed.
type compatReport struct {
	path     string
	features []string
	rows     []*compatRow
}

type compatRow struct {
	version string
	passed  map[string]bool
	report  *compatReport
}

func newCompatReport(t *testing.T, path string) *compatReport {
	r := &compatReport{path: path}
	t.Cleanup(func() {
		if path == "" || t.Failed() {
			return
		}
		var b strings.Builder
		fmt.Fprintf(&b, "| etcd server | %s |\n|---|%s\n", strings.Join(r.features, " | "), strings.Repeat("---|", len(r.features)))
		for _, row := range r.rows {
			cells := []string{row.version}
			for _, f := range r.features {
				cells = append(cells, map[bool]string{true: "yes", false: "no"}[row.passed[f]])
			}
			fmt.Fprintf(&b, "| %s |\n", strings.Join(cells, " | "))
		}
		if err := os.WriteFile(path, []byte(b.String()), 0o644); err != nil {
			t.Error(err)
		}
	})
	return r
}

func (r *compatReport) row(version string) *compatRow {
	row := &compatRow{version: version, passed: map[string]bool{}, report: r}
	r.rows = append(r.rows, row)
	return row
}

func (row *compatRow) pass(feature string) {
	if !slices.Contains(row.report.features, feature) {
		row.report.features = append(row.report.features, feature)
	}
	row.passed[feature] = true
}
