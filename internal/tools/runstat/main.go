// Command runstat runs a command and prints its wall time and peak RSS, for
// scripts/bench.sh (no /usr/bin/time needed): runstat OUT -- CMD ARGS...
package main

import (
	"fmt"
	"os"
	"os/exec"
	"strconv"
	"strings"
	"syscall"
	"time"
)

func main() {
	if len(os.Args) < 4 || os.Args[2] != "--" {
		fmt.Fprintln(os.Stderr, "usage: runstat OUTFILE -- COMMAND [ARGS...]")
		os.Exit(2)
	}
	cmd := exec.Command(os.Args[3], os.Args[4:]...)
	cmd.Stdin, cmd.Stdout, cmd.Stderr = os.Stdin, os.Stdout, os.Stderr
	start := time.Now()
	err := cmd.Start()
	var anonKiB int64
	if err == nil {
		done := make(chan struct{})
		go func() { anonKiB = sampleAnon(cmd.Process.Pid, done) }()
		err = cmd.Wait()
		close(done)
	}
	wall := time.Since(start)
	code := 0
	if err != nil {
		code = 1
		if ee, ok := err.(*exec.ExitError); ok {
			code = ee.ExitCode()
		} else {
			fmt.Fprintln(os.Stderr, "runstat:", err)
		}
	}
	var rssKiB int64
	var cpu time.Duration
	if cmd.ProcessState != nil {
		if ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage); ok {
			rssKiB = ru.Maxrss // kilobytes on Linux
		}
		cpu = cmd.ProcessState.UserTime() + cmd.ProcessState.SystemTime()
	}
	time.Sleep(20 * time.Millisecond) // let the sampler finish its last read
	// wall seconds, peak RSS KiB, exit code, CPU seconds (user+system, children included),
	// peak anonymous RSS KiB (sampled)
	line := fmt.Sprintf("%.3f %d %d %.3f %d\n", wall.Seconds(), rssKiB, code, cpu.Seconds(), anonKiB)
	if err := os.WriteFile(os.Args[1], []byte(line), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "runstat:", err)
		os.Exit(2)
	}
	os.Exit(code)
}

// sampleAnon polls the process's RssAnon every 5 ms until done and returns the peak.
// Peak RSS also counts file pages a program maps (etcd's bbolt maps its whole DB); the
// anonymous part is the memory the program itself allocates.
func sampleAnon(pid int, done <-chan struct{}) int64 {
	var peak int64
	path := fmt.Sprintf("/proc/%d/status", pid)
	for {
		if b, err := os.ReadFile(path); err == nil {
			for line := range strings.SplitSeq(string(b), "\n") {
				if v, ok := strings.CutPrefix(line, "RssAnon:"); ok {
					if kib, err := strconv.ParseInt(strings.TrimSpace(strings.TrimSuffix(strings.TrimSpace(v), "kB")), 10, 64); err == nil {
						peak = max(peak, kib)
					}
				}
			}
		}
		select {
		case <-done:
			return peak
		case <-time.After(5 * time.Millisecond):
		}
	}
}
