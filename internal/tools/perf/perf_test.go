package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestMedian(t *testing.T) {
	for _, c := range []struct {
		in   []float64
		want float64
	}{{nil, 0}, {[]float64{3}, 3}, {[]float64{3, 1, 2}, 2}, {[]float64{4, 1, 3, 2}, 2.5}, {[]float64{5, 5, 1}, 5}} {
		if got := median(c.in); got != c.want {
			t.Errorf("median(%v) = %v, want %v", c.in, got, c.want)
		}
	}
	in := []float64{3, 1, 2}
	median(in)
	if in[0] != 3 {
		t.Errorf("median sorted its argument: %v", in)
	}
}

func TestQuantile(t *testing.T) {
	s := []float64{1, 2, 3, 4, 5, 6, 7, 8, 9, 10}
	for p, want := range map[float64]float64{0.5: 5, 0.99: 10, 1: 10, 0.1: 1, 0: 1} {
		if got := quantile(s, p); got != want {
			t.Errorf("quantile(%v) = %v, want %v", p, got, want)
		}
	}
}

func TestMergeReplacesByKey(t *testing.T) {
	path := filepath.Join(t.TempDir(), "results.json")
	rs, err := loadResults(path) // missing: empty
	if err != nil {
		t.Fatal(err)
	}
	a := Result{Section: "save", Contender: "etcdctl", Size: "16MiB", Server: "3.7.3", WallS: 1}
	b := Result{Section: "restore", Contender: "etcdutl", Size: "16MiB", Server: "3.7.3", WallS: 2}
	rs.merge("run1", Machine{NProc: 2}, []Result{a, b})
	if err := rs.save(path); err != nil {
		t.Fatal(err)
	}
	rs, err = loadResults(path)
	if err != nil {
		t.Fatal(err)
	}
	// A later run of save alone: replaces save's row, keeps restore's, and drops run1's
	// machine only once nothing refers to it.
	a.WallS = 5
	c := a
	c.Size = "1GiB"
	rs.merge("run2", Machine{NProc: 4}, []Result{a, c})
	if len(rs.Results) != 3 {
		t.Fatalf("%d results, want 3: %+v", len(rs.Results), rs.Results)
	}
	got := map[[4]string]Result{}
	for _, r := range rs.Results {
		got[r.key()] = r
	}
	if r := got[a.key()]; r.WallS != 5 || r.Run != "run2" {
		t.Errorf("save 16MiB = %+v, want wall 5 from run2", r)
	}
	if r := got[b.key()]; r.WallS != 2 || r.Run != "run1" {
		t.Errorf("restore = %+v, want kept from run1", r)
	}
	if len(rs.Machines) != 2 {
		t.Errorf("machines %v, want run1 and run2", rs.Machines)
	}
	// Sections in suite order, sizes by bytes.
	if rs.Results[0].Section != "save" || rs.Results[0].Size != "16MiB" || rs.Results[1].Size != "1GiB" || rs.Results[2].Section != "restore" {
		t.Errorf("order: %+v", rs.Results)
	}
	rs.merge("run3", Machine{}, []Result{b})
	if _, ok := rs.Machines["run1"]; ok {
		t.Errorf("run1's machine kept with no result of it: %v", rs.Machines)
	}
}

func TestReportFromFixture(t *testing.T) {
	dir := t.TempDir()
	out := filepath.Join(dir, "perf.md")
	old := "# old\n<!-- notes -->\nHand-written: zstd wins.\n<!-- /notes -->\nstale table\n"
	if err := os.WriteFile(out, []byte(old), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := cmdReport([]string{"-results", "testdata/results.json", "-out", out}); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	md := string(b)
	for _, want := range []string{
		"<!-- notes -->\nHand-written: zstd wins.\n<!-- /notes -->",
		"| r1 | 2026-01-02T03:04:05Z | 2 | Test CPU | 6.1.0 | go1.26.0 | etcd 3.7.3, etcd-3.5 3.5.21 | etcdguard v1 | 3 |  |",
		"| 100MiB (120 MiB) | etcdguard -> S3, zstd | 3.00 | 1.50x | 40.0 | 1.50 | 0.70 | 0.20 | 80 | 3 |",
		"| 1GiB (1229 MiB) | etcdguard -> S3, zstd | 25.00 | 1.25x | 49.2 | 15.00 | 7.00 | 2.00 | 90 | 3 |",
		"| 100MiB (120 MiB) | churn 1000 writes/s | 998 | 300 | 0.40 | 1.10 | 1.30 | 3.00 | 9.00 | 1.00 | 100 | 60.00 |",
		"| 3.5.21 | 1000000 keys | etcdguard del /registry --prefix --dry-run | 5.00 | 1.25x | 4.00 | 2.00 | 60 | 3 |",
		"![save-wall](perf/save-wall.png)", "![guard-rss](perf/guard-rss.png)",
	} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
	for _, bad := range []string{"stale table", "## Restore", "## Point-in-time"} {
		if strings.Contains(md, bad) {
			t.Errorf("report has %q", bad)
		}
	}
	for _, png := range []string{"save-wall", "save-cpu", "save-rss", "guard-wall", "guard-rss"} {
		if st, err := os.Stat(filepath.Join(dir, "perf", png+".png")); err != nil || st.Size() == 0 {
			t.Errorf("plot %s: %v", png, err)
		}
	}
	// Rendering again keeps the notes and changes nothing.
	if err := cmdReport([]string{"-results", "testdata/results.json", "-out", out}); err != nil {
		t.Fatal(err)
	}
	if b2, _ := os.ReadFile(out); string(b2) != md {
		t.Errorf("a second render differs")
	}
}

func TestParsers(t *testing.T) {
	if got := parseStatCPU([]byte("123 (etcd (x) y) S 1 2 3 4 5 6 7 8 9 10 250 50 0 0")); got != 3 {
		t.Errorf("parseStatCPU = %v, want 3", got)
	}
	w, r := churnStats([]byte("loadgen: churn under /registry: 13515 writes in 4.0s, 3376.1 writes/s (target 5000): 8073 updates; 0 errors"))
	if w != 13515 || r != 3376.1 {
		t.Errorf("churnStats = %v, %v", w, r)
	}
	m := parseMetrics(strings.NewReader("# HELP x\netcdguard_delta_lag_seconds{cluster=\"a\"} 0.25\nprocess_resident_memory_bytes 1.048576e+06\nother 1\n"),
		"etcdguard_delta_lag_seconds", "process_resident_memory_bytes")
	if m["etcdguard_delta_lag_seconds"] != 0.25 || m["process_resident_memory_bytes"] != 1<<20 || len(m) != 2 {
		t.Errorf("parseMetrics = %v", m)
	}
	for s, want := range map[string]int64{"16MiB": 16 << 20, "1GiB": 1 << 30, "4KiB": 4096, "100": 100} {
		if got, err := parseSize(s); err != nil || got != want {
			t.Errorf("parseSize(%q) = %v, %v", s, got, err)
		}
	}
	if _, err := parseSize("lots"); err == nil {
		t.Error("parseSize(lots) accepted")
	}
}
