package main

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"syscall"
	"time"
)

// job is one contender: a command measured as a whole, with what to do before and after
// each run outside the measurement (remove its output, read what it printed).
type job struct {
	name    string
	argv    []string
	env     []string
	keepOut bool               // capture stdout for after; else it goes to /dev/null
	clean   func() error       // removes what a run writes, before and after each run: one copy of the DB on disk at a time
	after   func([]byte) error // e.g. parse the output
}

// sample is one measured run.
type sample struct {
	wall, cpu, etcdCPU, s3CPU, rssMiB float64
}

// watched are the server processes whose CPU a run is charged with.
type watched struct{ etcd, s3 int }

// measure runs j once: wall time, the client's CPU and peak RSS from wait4's rusage
// (its waited-for children included: the naive pipeline is a shell), and the CPU etcd
// and the S3 server used meanwhile, from /proc/PID/stat.
func (e *env) measure(ctx context.Context, j *job, w watched) (sample, error) {
	if j.clean != nil {
		if err := j.clean(); err != nil {
			return sample{}, fmt.Errorf("%s: before the run: %w", j.name, err)
		}
		defer func() { _ = j.clean() }()
	}
	// Through a small helper (perf itself): Linux starts a child's peak RSS at its
	// parent's (Go's os/exec uses vfork, and exec keeps the old memory's high-water
	// mark), so a command started by this process, grown by the compress section and
	// the results, would report at least this process's size. The helper starts it from
	// about 2 MiB and reports its child's wall time and rusage on fd 3.
	self, err := os.Executable()
	if err != nil {
		return sample{}, err
	}
	pr, pw, err := os.Pipe()
	if err != nil {
		return sample{}, err
	}
	defer pr.Close()
	cmd := exec.CommandContext(ctx, self, append([]string{helperArg, "--"}, j.argv...)...)
	cmd.Env = append(os.Environ(), j.env...)
	cmd.ExtraFiles = []*os.File{pw}
	var out, stderr bytes.Buffer
	if j.keepOut {
		cmd.Stdout = &out
	} // else nil: /dev/null
	cmd.Stderr = &stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Setpgid: true}
	cmd.Cancel = func() error { return syscall.Kill(-cmd.Process.Pid, syscall.SIGKILL) }
	e0, s0 := procCPU(w.etcd), procCPU(w.s3)
	err = cmd.Start()
	pw.Close()
	if err != nil {
		return sample{}, fmt.Errorf("%s: start %s: %w", j.name, shellJoin(j.argv), err)
	}
	var s sample
	report, rerr := io.ReadAll(pr)
	err = cmd.Wait()
	e1, s1 := procCPU(w.etcd), procCPU(w.s3)
	if err != nil {
		if ctx.Err() != nil {
			return sample{}, ctx.Err()
		}
		return sample{}, fmt.Errorf("%s: %s failed: %w; stderr tail:\n%s", j.name, shellJoin(j.argv), err, tailBytes(stderr.Bytes(), 20))
	}
	if _, perr := fmt.Sscan(string(report), &s.wall, &s.cpu, &s.rssMiB); rerr != nil || perr != nil {
		return sample{}, fmt.Errorf("%s: no measurement from the helper (%q): %v %v", j.name, report, rerr, perr)
	}
	if s.etcdCPU, err = spent("etcd", e0, e1); err == nil {
		s.s3CPU, err = spent("S3 server", s0, s1)
	}
	if err != nil {
		return sample{}, fmt.Errorf("%s: %w", j.name, err)
	}
	if j.after != nil {
		if err := j.after(out.Bytes()); err != nil {
			return sample{}, fmt.Errorf("%s: after the run: %w", j.name, err)
		}
	}
	return s, nil
}

// rounds runs the jobs alternately (A B C, A B C, ...) for e.opts.runs rounds, so that a
// slow minute of the shared machine hits every contender alike, and returns the medians.
func (e *env) rounds(ctx context.Context, section, size, server string, dbBytes int64, w watched, jobs []*job) ([]Result, error) {
	samples := make([][]sample, len(jobs))
	for r := 0; r < e.opts.runs; r++ {
		for i, j := range jobs {
			s, err := e.measure(ctx, j, w)
			if err != nil {
				return nil, fmt.Errorf("%s %s: %w", section, size, err)
			}
			samples[i] = append(samples[i], s)
			e.logf("  %-14s %-44s run %d: %6.2fs  cpu %6.2fs  etcd %5.2fs  s3 %5.2fs  rss %6.1f MiB",
				section, j.name, r+1, s.wall, s.cpu, s.etcdCPU, s.s3CPU, s.rssMiB)
		}
	}
	var res []Result
	for i, j := range jobs {
		pick := func(f func(sample) float64) float64 {
			xs := make([]float64, len(samples[i]))
			for k, s := range samples[i] {
				xs[k] = f(s)
			}
			return median(xs)
		}
		var walls []float64
		for _, s := range samples[i] {
			walls = append(walls, s.wall)
		}
		r := Result{
			Section: section, Contender: j.name, Size: size, Server: server, Order: i,
			DBBytes: dbBytes, Runs: len(samples[i]), Walls: walls,
			WallS:      pick(func(s sample) float64 { return s.wall }),
			ClientCPUS: pick(func(s sample) float64 { return s.cpu }),
			EtcdCPUS:   pick(func(s sample) float64 { return s.etcdCPU }),
			S3CPUS:     pick(func(s sample) float64 { return s.s3CPU }),
			PeakRSSMiB: pick(func(s sample) float64 { return s.rssMiB }),
		}
		if dbBytes > 0 && r.WallS > 0 {
			r.MiBps = float64(dbBytes) / (1 << 20) / r.WallS
		}
		res = append(res, r)
	}
	return res, nil
}

// helperArg is the hidden subcommand that runs one measured command (see measure).
const helperArg = "_measure"

// measureChild is the helper: it runs argv with this process's stdio and environment,
// writes "WALL_S CPU_S PEAK_RSS_MIB" of it to fd 3, and exits with its exit code.
func measureChild(argv []string) {
	report := os.NewFile(3, "report")
	// Not inherited by the measured command: a process it leaves running would hold the
	// pipe open and the parent's read of the report would never end.
	syscall.CloseOnExec(3)
	cmd := exec.Command(argv[0], argv[1:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	start := time.Now()
	err := cmd.Run()
	wall := time.Since(start).Seconds()
	if cmd.ProcessState == nil {
		fmt.Fprintln(os.Stderr, "perf:", err)
		os.Exit(127)
	}
	var rss float64
	if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
		rss = float64(ru.Maxrss) / 1024 // KiB on Linux
	}
	cpu := (cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()).Seconds()
	fmt.Fprintf(report, "%.6f %.6f %.3f\n", wall, cpu, rss)
	report.Close()
	os.Exit(cmd.ProcessState.ExitCode())
}
