package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"sort"
)

// Result is one contender of one section on one DB size and etcd server: the medians of
// its measured runs. It is keyed by (Section, Contender, Size, Server), so a later run of
// a section replaces what an earlier one recorded and leaves the rest of results.json as is.
type Result struct {
	Section   string `json:"section"`
	Contender string `json:"contender"`
	Size      string `json:"size"`             // the -sizes label (16MiB, 1GiB) or, for guard, the key count
	Server    string `json:"server,omitempty"` // etcd server version
	Order     int    `json:"order"`            // the contender's place in its section's table; 0 is the baseline
	Run       string `json:"run"`              // the Machine this was measured on

	DBBytes    int64     `json:"db_bytes,omitempty"` // size of etcd's snapshot (MiB/s is of this)
	Runs       int       `json:"runs"`
	Walls      []float64 `json:"walls_s,omitempty"` // every run, in order
	WallS      float64   `json:"wall_s"`
	MiBps      float64   `json:"mib_per_s,omitempty"`
	ClientCPUS float64   `json:"client_cpu_s"`
	EtcdCPUS   float64   `json:"etcd_cpu_s"`
	S3CPUS     float64   `json:"s3_cpu_s"`
	PeakRSSMiB float64   `json:"peak_rss_mib"`
	// Extra holds what only some sections measure (compression ratio, lag quantiles,
	// revisions replayed per second), named in the report's column headers.
	Extra map[string]float64 `json:"extra,omitempty"`
}

func (r Result) key() [4]string { return [4]string{r.Section, r.Contender, r.Size, r.Server} }

// Machine is where and when a run was measured.
type Machine struct {
	Date      string            `json:"date"`
	NProc     int               `json:"nproc"`
	CPU       string            `json:"cpu"`
	Kernel    string            `json:"kernel"`
	GoVersion string            `json:"go_version"`
	Etcd      map[string]string `json:"etcd_versions"` // binary -> version
	Etcdguard string            `json:"etcdguard_version"`
	Runs      int               `json:"runs"`
	Note      string            `json:"note,omitempty"`
}

// Results is docs/perf/results.json.
type Results struct {
	Machines map[string]Machine `json:"machines"` // by run id
	Results  []Result           `json:"results"`
}

func loadResults(path string) (*Results, error) {
	rs := &Results{Machines: map[string]Machine{}}
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return rs, nil
	}
	if err != nil {
		return nil, fmt.Errorf("read results %s: %w", path, err)
	}
	if err := json.Unmarshal(b, rs); err != nil {
		return nil, fmt.Errorf("parse results %s: %w", path, err)
	}
	if rs.Machines == nil {
		rs.Machines = map[string]Machine{}
	}
	return rs, nil
}

// merge replaces the results with the same key and adds the others, then drops the
// machines no result refers to any more.
func (rs *Results) merge(run string, m Machine, add []Result) {
	rs.Machines[run] = m
	for _, a := range add {
		a.Run = run
		if i := slices.IndexFunc(rs.Results, func(r Result) bool { return r.key() == a.key() }); i >= 0 {
			rs.Results[i] = a
		} else {
			rs.Results = append(rs.Results, a)
		}
	}
	used := map[string]bool{}
	for _, r := range rs.Results {
		used[r.Run] = true
	}
	for id := range rs.Machines {
		if !used[id] {
			delete(rs.Machines, id)
		}
	}
	rs.sort()
}

// sort orders results by section, server, size (by bytes), then contender order, so
// results.json diffs stay small.
func (rs *Results) sort() {
	secIdx := func(s string) int {
		if i := slices.Index(allSections, s); i >= 0 {
			return i
		}
		return len(allSections)
	}
	sort.SliceStable(rs.Results, func(i, j int) bool {
		a, b := rs.Results[i], rs.Results[j]
		if a.Section != b.Section {
			return secIdx(a.Section) < secIdx(b.Section)
		}
		if a.Server != b.Server {
			return a.Server < b.Server
		}
		if sa, sb := sizeOrder(a.Size), sizeOrder(b.Size); sa != sb {
			return sa < sb
		}
		if a.Order != b.Order {
			return a.Order < b.Order
		}
		return a.Contender < b.Contender
	})
}

func sizeOrder(label string) int64 {
	if n, err := parseSize(label); err == nil {
		return n
	}
	return 0
}

func (rs *Results) save(path string) error {
	b, err := json.MarshalIndent(rs, "", "  ")
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp := path + ".tmp"
	if err := os.WriteFile(tmp, append(b, '\n'), 0o644); err != nil {
		return fmt.Errorf("write results %s: %w", tmp, err)
	}
	return os.Rename(tmp, path)
}

// median of xs (the mean of the middle two for an even count); 0 for none.
func median(xs []float64) float64 {
	if len(xs) == 0 {
		return 0
	}
	s := slices.Clone(xs)
	slices.Sort(s)
	n := len(s)
	if n%2 == 1 {
		return s[n/2]
	}
	return (s[n/2-1] + s[n/2]) / 2
}

// quantile of sorted xs, nearest rank.
func quantile(sorted []float64, p float64) float64 {
	if len(sorted) == 0 {
		return 0
	}
	i := int(p*float64(len(sorted))+0.999999999) - 1
	return sorted[max(0, min(i, len(sorted)-1))]
}
