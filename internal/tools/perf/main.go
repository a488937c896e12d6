// Command perf is etcdguard's benchmark suite (make bench): it starts real etcd servers and
// a real S3 server (versitygw) on loopback, loads them with bin/loadgen, runs etcdguard and
// the tools it replaces against them in alternating rounds, records medians in
// docs/perf/results.json and renders docs/perf.md with PNG plots from it.
//
//	perf run [-sizes 100MiB,1GiB] [-only save,restore,compress,pitr,lag,guard] [-runs 3] ...
//	perf report [-results docs/perf/results.json] [-out docs/perf.md]
//
// It is a module of its own so that gonum's plotting stays out of etcdguard's go.mod.
package main

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

var allSections = []string{"save", "restore", "compress", "pitr", "lag", "guard"}

type options struct {
	sizes       []string
	only        []string
	runs        int
	guardKeys   int
	pitrRevs    int
	pitrRate    int
	lagDuration time.Duration
	lagRates    []int
	valueSize   string
	bin         string
	etcdguard   string
	results     string
	workParent  string
	note        string
}

func main() {
	if len(os.Args) < 2 {
		usage()
	}
	var err error
	switch os.Args[1] {
	case "run":
		err = cmdRun(os.Args[2:])
	case "report":
		err = cmdReport(os.Args[2:])
	case helperArg:
		if len(os.Args) < 4 || os.Args[2] != "--" {
			usage()
		}
		measureChild(os.Args[3:])
	default:
		usage()
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "perf:", err)
		os.Exit(1)
	}
}

func usage() {
	fmt.Fprintln(os.Stderr, "usage: perf run [flags] | perf report [flags]   (perf run -h for the flags)")
	os.Exit(2)
}

func cmdRun(args []string) error {
	fs := flag.NewFlagSet("run", flag.ExitOnError)
	var o options
	defSizes := "100MiB,1GiB"
	if os.Getenv("BENCH_FULL") == "1" {
		defSizes += ",4GiB,8GiB"
	}
	if v := os.Getenv("BENCH_SIZES"); v != "" {
		defSizes = v
	}
	sizes := fs.String("sizes", defSizes, "DB sizes to load, comma-separated (BENCH_SIZES; BENCH_FULL=1 adds 4GiB,8GiB)")
	only := fs.String("only", strings.Join(allSections, ","), "sections to run, comma-separated: "+strings.Join(allSections, ","))
	lagRates := fs.String("lag-rates", "1000,5000", "lag: churn rates in writes/s, comma-separated")
	fs.IntVar(&o.runs, "runs", envInt("BENCH_RUNS", 3), "measured rounds per contender (BENCH_RUNS); the report shows the median")
	fs.IntVar(&o.guardKeys, "guard-keys", 1000000, "guard: keys under /registry")
	fs.IntVar(&o.pitrRevs, "pitr-revs", 600000, "pitr: revisions of churn after the daemon's full snapshot")
	fs.IntVar(&o.pitrRate, "pitr-rate", 5000, "pitr: churn writes/s")
	fs.DurationVar(&o.lagDuration, "lag-duration", time.Minute, "lag: churn duration per rate")
	fs.StringVar(&o.valueSize, "value-size", "4KiB", "mean value size of the loaded keyspace")
	fs.StringVar(&o.bin, "bin", "bin", "directory of etcd, etcd-3.5, etcd-3.6, etcdctl, etcdutl, versitygw, loadgen")
	fs.StringVar(&o.etcdguard, "etcdguard", "", "etcdguard binary (default BIN/etcdguard)")
	fs.StringVar(&o.results, "results", "docs/perf/results.json", "results file to merge into")
	fs.StringVar(&o.workParent, "work", "build", "parent of the temporary work dir; it holds etcd's data, etcdctl's snapshot, the S3 copies and one contender's output at a time: about 6x the largest size free (restore --all-members writes 3 members)")
	fs.StringVar(&o.note, "note", os.Getenv("BENCH_NOTE"), "a note on this run shown in the report (e.g. quick run)")
	_ = fs.Parse(args)
	o.sizes = splitList(*sizes)
	o.only = splitList(*only)
	for _, s := range o.only {
		if !slices.Contains(allSections, s) {
			return fmt.Errorf("-only: unknown section %q (have %s)", s, strings.Join(allSections, ","))
		}
	}
	for _, s := range o.sizes {
		if _, err := parseSize(s); err != nil {
			return fmt.Errorf("-sizes: %w", err)
		}
	}
	for _, r := range splitList(*lagRates) {
		n, err := strconv.Atoi(r)
		if err != nil || n <= 0 {
			return fmt.Errorf("-lag-rates: bad rate %q", r)
		}
		o.lagRates = append(o.lagRates, n)
	}
	if o.runs < 1 {
		return errors.New("-runs must be at least 1")
	}
	if o.etcdguard == "" {
		o.etcdguard = filepath.Join(o.bin, "etcdguard")
	}
	var err error
	if o.bin, err = filepath.Abs(o.bin); err != nil {
		return err
	}
	if o.etcdguard, err = filepath.Abs(o.etcdguard); err != nil {
		return err
	}
	for _, t := range []string{"etcd", "etcdctl", "etcdutl", "versitygw", "loadgen"} {
		if _, err := os.Stat(filepath.Join(o.bin, t)); err != nil {
			return fmt.Errorf("%s missing: run scripts/tools.sh (make tools) first: %w", t, err)
		}
	}
	if _, err := os.Stat(o.etcdguard); err != nil {
		return fmt.Errorf("etcdguard binary: %w (make build, or -etcdguard PATH)", err)
	}

	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := os.MkdirAll(o.workParent, 0o755); err != nil {
		return err
	}
	work, err := os.MkdirTemp(o.workParent, "perf-")
	if err != nil {
		return err
	}
	if work, err = filepath.Abs(work); err != nil {
		return err
	}
	e := &env{opts: o, bin: o.bin, work: work, procs: &procs{}, run_: time.Now().UTC().Format("20060102T150405Z")}
	// Every process stopped and the work dir removed, also after an error or Ctrl-C (the
	// signal cancels ctx, which kills the measured command and returns here).
	defer func() {
		e.procs.stopAll()
		if err := os.RemoveAll(work); err != nil {
			fmt.Fprintln(os.Stderr, "perf: remove", work+":", err)
		}
	}()
	err = e.runAll(ctx)
	if ctx.Err() != nil {
		return errInterrupted
	}
	return err
}

// env is one perf run.
type env struct {
	opts    options
	bin     string
	work    string
	procs   *procs
	run_    string // run id
	machine *Machine
}

func (e *env) tool(name string) string { return filepath.Join(e.bin, name) }

func (e *env) logf(format string, a ...any) {
	fmt.Fprintf(os.Stderr, "%s "+format+"\n", append([]any{time.Now().Format("15:04:05")}, a...)...)
}

func (e *env) want(section string) bool { return slices.Contains(e.opts.only, section) }

// record merges results into results.json at once, so what a later section fails to
// measure does not cost what the earlier ones did.
func (e *env) record(ctx context.Context, res []Result) error {
	if e.machine == nil {
		m := e.describeMachine(ctx)
		e.machine = &m
	}
	rs, err := loadResults(e.opts.results)
	if err != nil {
		return err
	}
	rs.merge(e.run_, *e.machine, res)
	if err := rs.save(e.opts.results); err != nil {
		return err
	}
	e.logf("recorded %d result(s) in %s", len(res), e.opts.results)
	return nil
}

func (e *env) runAll(ctx context.Context) error {
	perSize := slices.ContainsFunc(e.opts.only, func(s string) bool { return s != "guard" })
	if perSize {
		for i, size := range e.opts.sizes {
			if err := e.runSize(ctx, size, i == 0); err != nil {
				return err
			}
		}
	}
	if e.want("guard") {
		if err := e.runGuard(ctx); err != nil {
			return err
		}
	}
	return nil
}

func (e *env) describeMachine(ctx context.Context) Machine {
	m := Machine{Date: time.Now().UTC().Format(time.RFC3339), NProc: runtime.NumCPU(), GoVersion: runtime.Version(),
		Etcd: map[string]string{}, Runs: e.opts.runs, Note: e.opts.note}
	if b, err := os.ReadFile("/proc/cpuinfo"); err == nil {
		for line := range strings.SplitSeq(string(b), "\n") {
			if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "model name" {
				m.CPU = strings.TrimSpace(v)
				break
			}
		}
	}
	if b, err := os.ReadFile("/proc/sys/kernel/osrelease"); err == nil {
		m.Kernel = strings.TrimSpace(string(b))
	}
	for _, name := range []string{"etcd", "etcd-3.6", "etcd-3.5"} {
		if out, err := e.run(ctx, nil, e.tool(name), "--version"); err == nil {
			m.Etcd[name] = strings.TrimPrefix(firstLine(out), "etcd Version: ")
		}
	}
	if out, err := e.run(ctx, nil, e.opts.etcdguard, "version"); err == nil {
		m.Etcdguard = firstLine(out)
	}
	return m
}

func firstLine(b []byte) string {
	s, _, _ := strings.Cut(strings.TrimSpace(string(b)), "\n")
	return strings.TrimSpace(s)
}

func splitList(s string) []string {
	var out []string
	for f := range strings.SplitSeq(s, ",") {
		if f = strings.TrimSpace(f); f != "" {
			out = append(out, f)
		}
	}
	return out
}

func envInt(name string, def int) int {
	if n, err := strconv.Atoi(os.Getenv(name)); err == nil {
		return n
	}
	return def
}

// parseSize reads 16MiB, 1GiB, 4KiB or a plain byte count.
func parseSize(s string) (int64, error) {
	units := []struct {
		suffix string
		mult   int64
	}{{"TiB", 1 << 40}, {"GiB", 1 << 30}, {"MiB", 1 << 20}, {"KiB", 1 << 10}, {"B", 1}, {"", 1}}
	for _, u := range units {
		if num, ok := strings.CutSuffix(s, u.suffix); ok {
			n, err := strconv.ParseFloat(num, 64)
			if err != nil || n <= 0 {
				break
			}
			return int64(n * float64(u.mult)), nil
		}
	}
	return 0, fmt.Errorf("bad size %q (e.g. 100MiB, 1GiB)", s)
}

func randHex(n int) string {
	b := make([]byte, n)
	_, _ = rand.Read(b)
	return hex.EncodeToString(b)
}
