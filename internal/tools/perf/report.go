package main

import (
	"bytes"
	"errors"
	"flag"
	"fmt"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
)

func cmdReport(args []string) error {
	fl := flag.NewFlagSet("report", flag.ExitOnError)
	results := fl.String("results", "docs/perf/results.json", "results to render")
	out := fl.String("out", "docs/perf.md", "markdown to write; its <!-- notes --> section is kept")
	plots := fl.String("plots", "", "directory of the PNG plots (default: perf/ beside -out)")
	_ = fl.Parse(args)
	if *plots == "" {
		*plots = filepath.Join(filepath.Dir(*out), "perf")
	}
	rs, err := loadResults(*results)
	if err != nil {
		return err
	}
	if len(rs.Results) == 0 {
		return fmt.Errorf("no results in %s: run perf run first", *results)
	}
	old, err := os.ReadFile(*out)
	if err != nil && !errors.Is(err, fs.ErrNotExist) {
		return err
	}
	rel, err := filepath.Rel(filepath.Dir(*out), *plots)
	if err != nil {
		return err
	}
	images, err := writePlots(rs, *plots)
	if err != nil {
		return err
	}
	md := render(rs, extractNotes(old), rel, images)
	if err := os.WriteFile(*out, md, 0o644); err != nil {
		return err
	}
	fmt.Fprintf(os.Stderr, "wrote %s and %d plot(s) in %s\n", *out, len(images), *plots)
	return nil
}

const (
	notesOpen  = "<!-- notes -->"
	notesClose = "<!-- /notes -->"
)

const defaultNotes = "\n_The analysis goes here, written by hand: `perf report` keeps everything between the notes markers._\n"

// extractNotes returns what lies between the notes markers of an earlier report.
func extractNotes(md []byte) string {
	s := string(md)
	i := strings.Index(s, notesOpen)
	j := strings.Index(s, notesClose)
	if i < 0 || j < i {
		return defaultNotes
	}
	return s[i+len(notesOpen) : j]
}

// column is one column of a section's table: its header and its cell for a result, given
// the baseline of its group (the same section, size and server; order 0).
type column struct {
	head string
	cell func(r, base Result) string
}

func f2(v float64) string { return fmt.Sprintf("%.2f", v) }

func extra(name, format string) func(r, base Result) string {
	return func(r, _ Result) string {
		v, ok := r.Extra[name]
		if !ok {
			return "–"
		}
		return fmt.Sprintf(format, v)
	}
}

var (
	colSize      = column{"DB", func(r, _ Result) string { return fmt.Sprintf("%s (%.0f MiB)", r.Size, float64(r.DBBytes)/(1<<20)) }}
	colContender = column{"contender", func(r, _ Result) string { return r.Contender }}
	colWall      = column{"median wall s", func(r, _ Result) string { return f2(r.WallS) }}
	colX         = column{"x baseline", func(r, b Result) string {
		if b.WallS == 0 {
			return "–"
		}
		return fmt.Sprintf("%.2fx", r.WallS/b.WallS)
	}}
	colMiBps  = column{"MiB/s", func(r, _ Result) string { return fmt.Sprintf("%.1f", r.MiBps) }}
	colCPU    = column{"client CPU s", func(r, _ Result) string { return f2(r.ClientCPUS) }}
	colEtcd   = column{"etcd CPU s", func(r, _ Result) string { return f2(r.EtcdCPUS) }}
	colS3     = column{"S3 server CPU s", func(r, _ Result) string { return f2(r.S3CPUS) }}
	colRSS    = column{"peak RSS MiB", func(r, _ Result) string { return fmt.Sprintf("%.0f", r.PeakRSSMiB) }}
	colRuns   = column{"runs", func(r, _ Result) string { return fmt.Sprint(r.Runs) }}
	colServer = column{"etcd", func(r, _ Result) string { return r.Server }}
)

// sectionDoc is what the report says about a section: its title, what it measures and
// its table's columns.
type sectionDoc struct {
	name, title, about string
	cols               []column
	plots              []string // plot kinds (see writePlots)
}

var sectionDocs = []sectionDoc{
	{"save", "Save", "A snapshot of the loaded etcd, by each contender in turn. Baseline: `etcdctl snapshot save` to local disk (the floor: no compression, no upload). " +
		"The naive pipeline is `etcdctl snapshot save` + `zstd -1 -T0` + `curl` upload, what a cron script does. etcdguard streams etcd → sha256 → zstd (`--level fastest`) → store. " +
		"Client CPU counts the measured process and its children; etcd and S3 server CPU are what those processes used during the run.",
		[]column{colSize, colContender, colWall, colX, colMiBps, colCPU, colEtcd, colS3, colRSS, colRuns}, []string{"wall", "cpu", "rss"}},
	{"restore", "Restore", "Baseline: `etcdutl snapshot restore` of a snapshot file on local disk. etcdguard downloads the latest snapshot from S3, decompresses, verifies it and restores; " +
		"`--all-members` writes every member of a 3-member `--initial-cluster` from one download (against etcdutl run once per member).",
		[]column{colSize, colContender, colWall, colX, colMiBps, colCPU, colEtcd, colS3, colRSS, colRuns}, []string{"wall", "cpu", "rss"}},
	{"compress", "Compression", "In process, on the `etcdctl snapshot save` file of each size, read from the page cache: zstd as etcdguard configures it (klauspost/compress, 2 encoder goroutines, 4 MiB window) at its three levels, Go's gzip, and none (reading alone).",
		[]column{colSize, colContender, colWall, colMiBps, {"ratio", extra("ratio", "%.2f")}, {"stored MiB", extra("stored_mib", "%.1f")}, {"CPU s", colCPU.cell}, colRuns}, nil},
	{"pitr", "Point-in-time restore", "`etcdguard daemon --delta --delta-flush 1s` takes a full snapshot, loadgen churns, then `restore --revision` (the snapshot plus every delta up to the end of the churn) against `restore --snapshot` of that snapshot alone, both from S3. " +
		"Replay rate: revisions replayed per second of restore time added over the plain restore. Daemon drain: how long after the writer stopped the daemon had stored etcd's last revision.",
		[]column{colSize, colContender, colWall, colX, colMiBps, colCPU, colEtcd, colS3, colRSS, {"churn writes/s", extra("churn_writes_per_s", "%.0f")},
			{"revisions replayed", extra("revisions_replayed", "%.0f")}, {"replay revisions/s", extra("replay_revisions_per_s", "%.0f")},
			{"daemon drain s", extra("drain_s", "%.1f")}, colRuns}, nil},
	{"lag", "Delta lag (RPO)", "`etcdguard daemon --delta --delta-flush 1s` while loadgen churns; `etcdguard_delta_lag_seconds` sampled from its /metrics every 0.2 s. Client CPU and RSS are the daemon's; measured on the smallest DB size only.",
		[]column{colSize, colContender, {"achieved writes/s", extra("churn_writes_per_s", "%.0f")}, {"samples", extra("samples", "%.0f")},
			{"lag p50 s", extra("lag_p50_s", "%.2f")}, {"lag p99 s", extra("lag_p99_s", "%.2f")}, {"lag max s", extra("lag_max_s", "%.2f")},
			{"daemon CPU s", colCPU.cell}, colEtcd, colS3, {"daemon peak RSS MiB", colRSS.cell}, {"churn s", colWall.cell}}, nil},
	{"guard", "Guard: `del --dry-run`", "`etcdguard del /registry --prefix --dry-run -o json` (reads the range once: count, bytes, breakdown by resource type, warnings, a stored plan) against `etcdctl get /registry --prefix` of the same range to /dev/null, on each etcd server version.",
		[]column{colServer, {"keys", func(r, _ Result) string { return r.Size }}, colContender, colWall, colX, colCPU, colEtcd, colRSS, colRuns}, []string{"wall", "rss"}},
}

// render writes docs/perf.md: everything comes from rs, except the notes kept from before.
func render(rs *Results, notes, plotDir string, images map[string]string) []byte {
	var b bytes.Buffer
	fmt.Fprintf(&b, "# etcdguard performance\n\n")
	fmt.Fprintf(&b, "<!-- Generated by `bin/perf report` from docs/perf/results.json (`make bench`). Edit only between the notes markers. -->\n\n")
	fmt.Fprintf(&b, "Every number below comes from docs/perf/results.json. Each contender of a section runs in the same run of `perf run`, against the same fresh etcd "+
		"and S3 server (versitygw) on loopback, alternating (A B C, A B C, ...); a cell is the median of the runs.\n\n")
	fmt.Fprintf(&b, "## Notes\n\n%s%s%s\n\n", notesOpen, notes, notesClose)

	fmt.Fprintf(&b, "## Machine\n\n| run | date | nproc | CPU | kernel | Go | etcd servers | etcdguard | runs | note |\n|---|---|---|---|---|---|---|---|---|---|\n")
	ids := make([]string, 0, len(rs.Machines))
	for id := range rs.Machines {
		ids = append(ids, id)
	}
	sort.Strings(ids)
	for _, id := range ids {
		m := rs.Machines[id]
		var ev []string
		for _, k := range []string{"etcd", "etcd-3.6", "etcd-3.5"} {
			if v, ok := m.Etcd[k]; ok {
				ev = append(ev, k+" "+v)
			}
		}
		fmt.Fprintf(&b, "| %s | %s | %d | %s | %s | %s | %s | %s | %d | %s |\n", id, m.Date, m.NProc, cellEsc(m.CPU), m.Kernel, m.GoVersion,
			strings.Join(ev, ", "), cellEsc(m.Etcdguard), m.Runs, cellEsc(m.Note))
	}
	b.WriteString("\n")

	for _, sd := range sectionDocs {
		var rows []Result
		for _, r := range rs.Results {
			if r.Section == sd.name {
				rows = append(rows, r)
			}
		}
		if len(rows) == 0 {
			continue
		}
		fmt.Fprintf(&b, "## %s\n\n%s\n\n", sd.title, sd.about)
		heads := make([]string, len(sd.cols))
		for i, c := range sd.cols {
			heads[i] = c.head
		}
		fmt.Fprintf(&b, "| %s |\n|%s\n", strings.Join(heads, " | "), strings.Repeat("---|", len(heads)))
		runs := map[string]bool{}
		for _, r := range rows {
			base := baseline(rows, r)
			cells := make([]string, len(sd.cols))
			for i, c := range sd.cols {
				cells[i] = cellEsc(c.cell(r, base))
			}
			fmt.Fprintf(&b, "| %s |\n", strings.Join(cells, " | "))
			runs[r.Run] = true
		}
		fmt.Fprintf(&b, "\nMeasured in run %s.\n\n", strings.Join(slices.Sorted(maps.Keys(runs)), ", "))
		for _, kind := range sd.plots {
			key := sd.name + "-" + kind
			if file, ok := images[key]; ok {
				fmt.Fprintf(&b, "![%s](%s)\n", key, filepath.ToSlash(filepath.Join(plotDir, file)))
			}
		}
		if len(sd.plots) > 0 {
			b.WriteString("\n")
		}
	}
	return append(bytes.TrimRight(b.Bytes(), "\n"), '\n')
}

// baseline is the order-0 result of r's group (same section, size, server).
func baseline(rows []Result, r Result) Result {
	for _, x := range rows {
		if x.Order == 0 && x.Section == r.Section && x.Size == r.Size && x.Server == r.Server {
			return x
		}
	}
	return Result{}
}

func cellEsc(s string) string { return strings.ReplaceAll(s, "|", `\|`) }
