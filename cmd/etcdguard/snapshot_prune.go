package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/etcdguard/etcdguard/delta"
	"github.com/etcdguard/etcdguard/snapshot"
)

type pruneOptions struct {
	retention snapshot.Retention
	dryRun    bool
}

// addRetentionFlags are shared with the daemon, which prunes after every save.
func addRetentionFlags(cmd *cobra.Command, r *snapshot.Retention) {
	f := cmd.Flags()
	f.IntVar(&r.Last, "keep-last", 3, "keep the newest N snapshots")
	f.IntVar(&r.Hourly, "keep-hourly", 24, "keep the newest snapshot of each of the last N hours that have one")
	f.IntVar(&r.Daily, "keep-daily", 7, "keep the newest snapshot of each of the last N days that have one")
	f.IntVar(&r.Weekly, "keep-weekly", 4, "keep the newest snapshot of each of the last N ISO weeks that have one")
	f.DurationVar(&r.Within, "keep-within", 0, "keep every snapshot younger than this")
}

func newSnapshotPruneCommand(g *globalOptions) *cobra.Command {
	o := &pruneOptions{}
	cmd := &cobra.Command{
		Use:   "prune [--keep-last N] [--keep-hourly N] [--keep-daily N] [--keep-weekly N] [--keep-within D] [--dry-run]",
		Short: "Delete the snapshots the retention policy does not keep (never the newest verified one)",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runSnapshotPrune(cmd.Context(), g, o)
		},
	}
	addRetentionFlags(cmd, &o.retention)
	cmd.Flags().BoolVar(&o.dryRun, "dry-run", false, "list what would be deleted; delete nothing")
	return cmd
}

func runSnapshotPrune(ctx context.Context, g *globalOptions, o *pruneOptions) error {
	st, cluster, err := g.storeAndCluster(ctx)
	if err != nil {
		return err
	}
	ds, err := snapshot.Prune(ctx, st, cluster, o.retention, time.Now(), o.dryRun)
	if err != nil {
		return err
	}
	segs, err := delta.Prune(ctx, st, cluster, ds, o.dryRun)
	if err != nil {
		return err
	}
	if g.output == "json" {
		return printJSON(g.stdout, ds)
	}
	verb, deleted, locked := "deleted", 0, 0
	if o.dryRun {
		verb = "would delete"
	}
	rows := [][]string{{"ID", "CREATED", "ACTION", "KEPT BY"}}
	for _, d := range ds {
		action := "keep"
		switch {
		case !d.Keep:
			action, deleted = verb, deleted+1
		case d.LockedUntil != "":
			action, locked = "kept: locked", locked+1
		}
		rows = append(rows, []string{d.ID, d.Created, action, strings.Join(d.Reasons, ", ")})
	}
	if err := table(g.stdout, rows); err != nil {
		return err
	}
	fmt.Fprintf(g.stdout, "%s %d of %d snapshots of cluster %s\n", verb, deleted, len(ds), cluster)
	if locked > 0 {
		fmt.Fprintf(g.stdout, "kept %d snapshots the policy would delete: S3 Object Lock keeps them until their retention date; a later prune deletes them\n", locked)
	}
	if len(segs) > 0 {
		fmt.Fprintf(g.stdout, "%s %d delta segments up to revision %d: no kept snapshot reaches them\n", verb, len(segs), segs[len(segs)-1].ToRev)
	}
	return nil
}
