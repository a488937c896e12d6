package main

import (
	"context"
	"fmt"
	"time"

	"github.com/spf13/cobra"

	"github.com/etcdguard/etcdguard/guard"
)

func newGuardCommand(g *globalOptions) *cobra.Command {
	cmd := &cobra.Command{Use: "guard", Short: "List guarded-delete plans and undo executed ones"}
	cmd.AddCommand(&cobra.Command{
		Use:   "plans",
		Short: "List the cluster's delete plans and their state (planned, executed, undone, expired)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runGuardPlans(cmd.Context(), g)
		},
	})
	var undo guard.UndoOptions
	undoCmd := &cobra.Command{
		Use:   "undo PLAN_ID",
		Short: "Put back the keys an executed plan deleted, never overwriting a key that exists now",
		Args:  cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return runGuardUndo(cmd.Context(), g, args[0], undo)
		},
	}
	undoCmd.Flags().BoolVar(&undo.AssumeExecuted, "assume-executed", false,
		"for a confirm that was interrupted so long ago that etcd can no longer tell whether it deleted the keys: put back the saved keys that are missing")
	cmd.AddCommand(undoCmd)
	return cmd
}

func runGuardPlans(ctx context.Context, g *globalOptions) error {
	st, err := g.openStore(ctx)
	if err != nil {
		return err
	}
	cluster, err := g.clusterName(ctx)
	if err != nil {
		return err
	}
	plans, err := guard.Plans(ctx, st, cluster)
	if err != nil {
		return err
	}
	if g.output == "json" {
		if plans == nil {
			plans = []guard.PlanInfo{}
		}
		return printJSON(g.stdout, plans)
	}
	rows := [][]string{{"PLAN", "STATE", "CREATED", "KEYS", "WARNINGS", "RANGE"}}
	interrupted := false
	for _, p := range plans {
		rows = append(rows, []string{p.ID, p.State, p.CreatedAt.Format(time.RFC3339), fmt.Sprint(p.KeyCount), fmt.Sprint(len(p.Warnings)), p.Range.String()})
		interrupted = interrupted || p.State == "interrupted"
	}
	if err := table(g.stdout, rows); err != nil || !interrupted {
		return err
	}
	_, err = fmt.Fprintln(g.stdout, "interrupted: a confirm saved the keys and stopped before recording the delete; `del --confirm PLAN` or `guard undo PLAN` asks etcd whether it happened and finishes")
	return err
}

func runGuardUndo(ctx context.Context, g *globalOptions, id string, opts guard.UndoOptions) error {
	st, cli, cluster, etcdUser, err := g.guardSession(ctx)
	if err != nil {
		return err
	}
	defer cli.Close()
	opts.EtcdUser = etcdUser
	res, err := guard.Undo(ctx, cli, st, cluster, id, opts)
	if err != nil {
		return g.etcd.Denied(err, "the undo of plan "+id, "an undo needs a role with readwrite permission on the plan's range and on "+guard.RecordPrefix(cluster))
	}
	if g.output == "json" {
		return printJSON(g.stdout, res)
	}
	fmt.Fprintf(g.stdout, "put back %d keys of plan %s; %d keys exist now and were left alone\n", res.Restored, id, len(res.Conflicts))
	for _, k := range res.Conflicts {
		fmt.Fprintf(g.stdout, "  conflict: %q\n", k)
	}
	return nil
}
