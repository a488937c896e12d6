// Command runstat runs a command and prints its wall time and peak RSS, for
// scripts/bench.sh (no /usr/bin/time needed): runstat OUT -- CMD ARGS...
package main

import (
	"fmt"
	"os"
	"os/exec"
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
	err := cmd.Run()
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
	// wall seconds, peak RSS KiB, exit code, CPU seconds (user+system, children included)
	line := fmt.Sprintf("%.3f %d %d %.3f\n", wall.Seconds(), rssKiB, code, cpu.Seconds())
	if err := os.WriteFile(os.Args[1], []byte(line), 0o644); err != nil {
		fmt.Fprintln(os.Stderr, "runstat:", err)
		os.Exit(2)
	}
	os.Exit(code)
}
