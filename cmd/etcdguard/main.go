// Command etcdguard backs up etcd to object storage, guards deletes and restores.
// This package only wires flags, environment and config to the library packages.
package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"os/signal"
	"runtime/pprof"
	"strings"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/etcdguard/etcdguard/guard"
	"github.com/etcdguard/etcdguard/internal/etcdclient"
	"github.com/etcdguard/etcdguard/restore"
	_ "github.com/etcdguard/etcdguard/store/file"
	_ "github.com/etcdguard/etcdguard/store/s3"
)

// Exit codes (README): 0 ok, 1 failure, 2 usage error, 3 not found, 10 refused by a guard
// or an exactness check, 11 store unreachable, 12 etcd unreachable; check keeps Nagios 0–3.
const (
	exitNotFound    = 3
	exitRefused     = 10
	exitUnreachable = 12
)

// exitError carries a documented exit code (e.g. a failed verification) out of a command.
type exitError struct {
	code int
	err  error
}

func (e *exitError) Error() string {
	if e.err == nil {
		return fmt.Sprintf("exit status %d", e.code)
	}
	return e.err.Error()
}
func (e *exitError) Unwrap() error { return e.err }

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	stopProfile := cpuProfile(os.Getenv("ETCDGUARD_CPU_PROFILE"))
	err := newRootCommand().ExecuteContext(ctx)
	stopProfile()
	stop()
	if err == nil {
		return
	}
	code := 1
	var ee *exitError
	switch {
	case errors.As(err, &ee):
		code = ee.code
		if ee.err == nil {
			os.Exit(code) // the command printed its verdict itself (check)
		}
	case errors.Is(err, guard.ErrRefused) || errors.Is(err, restore.ErrUnreachable):
		code = exitRefused
	case errors.Is(err, etcdclient.ErrUnreachable):
		code = exitUnreachable
	}
	if errors.Is(err, context.Canceled) && ctx.Err() != nil {
		err = errors.New("interrupted; nothing partial was left in the store")
	}
	// One line: runbooks grep for it and pagers show only the first line.
	fmt.Fprintln(os.Stderr, "etcdguard: "+strings.ReplaceAll(err.Error(), "\n", " "))
	os.Exit(code)
}

// cpuProfile writes a CPU profile of the whole run to path, for performance reports.
func cpuProfile(path string) (stop func()) {
	if path == "" {
		return func() {}
	}
	f, err := os.Create(path)
	if err == nil {
		err = pprof.StartCPUProfile(f)
	}
	if err != nil {
		fmt.Fprintln(os.Stderr, "etcdguard: ETCDGUARD_CPU_PROFILE:", err)
		return func() {}
	}
	return func() { pprof.StopCPUProfile(); f.Close() }
}

func newRootCommand() *cobra.Command { return newRootCommandWith(&globalOptions{}) }

// newRootCommandWith lets tests inspect the options the command line, environment and
// config file produced.
func newRootCommandWith(g *globalOptions) *cobra.Command {
	root := &cobra.Command{
		Use:           "etcdguard",
		Short:         "etcd snapshots to S3, guarded deletes and point-in-time restore",
		SilenceErrors: true,
		SilenceUsage:  true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error {
			return g.setup(cmd)
		},
	}
	root.SetFlagErrorFunc(func(cmd *cobra.Command, err error) error {
		return fmt.Errorf("%w (see `%s --help`)", err, cmd.CommandPath())
	})
	g.addFlags(root)
	root.AddCommand(newSnapshotCommand(g), newRestoreCommand(g), newDelCommand(g), newGuardCommand(g), newCheckCommand(g), newDaemonCommand(g), newTimelineCommand(g), newVersionCommand(g))
	addVersionFlag(root)
	return root
}
