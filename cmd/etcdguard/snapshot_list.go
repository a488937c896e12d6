package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/etcdguard/etcdguard/snapshot"
	"github.com/etcdguard/etcdguard/store"
)

func newSnapshotListCommand(g *globalOptions) *cobra.Command {
	return &cobra.Command{
		Use:   "list",
		Short: "List the cluster's complete snapshots, newest first",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, _ []string) error {
			return runSnapshotList(cmd.Context(), g)
		},
	}
}

// storeAndCluster opens the store and resolves the cluster for commands that do not
// need etcd.
func (g *globalOptions) storeAndCluster(ctx context.Context) (store.Store, string, error) {
	st, err := g.openStore(ctx)
	if err != nil {
		return nil, "", err
	}
	cluster, err := snapshot.ResolveCluster(ctx, st, g.cluster)
	return st, cluster, err
}

func runSnapshotList(ctx context.Context, g *globalOptions) error {
	st, cluster, err := g.storeAndCluster(ctx)
	if err != nil {
		return err
	}
	all, err := snapshot.List(ctx, st, cluster)
	if err != nil {
		return err
	}
	if g.output == "json" {
		if all == nil {
			all = []*snapshot.Manifest{}
		}
		return printJSON(g.stdout, all)
	}
	if len(all) == 0 {
		fmt.Fprintf(g.stderr, "no snapshots of cluster %s in %s: take one with `etcdguard snapshot save`\n", cluster, st)
		return nil
	}
	rows := [][]string{{"ID", "CREATED", "AGE", "REVISION", "SIZE", "STORED", "COMPRESSION", "VERIFIED", "HISTORY"}}
	now := time.Now()
	for i, m := range all {
		verified := m.Verification
		if !snapshot.Usable(m) { // shout: never restored, kept or counted as fresh
			verified = strings.ToUpper(verified) + ": " + strings.Join(m.Problems, "; ")
		}
		h := m.History
		if h == "" {
			h = "-"
		}
		if i+1 < len(all) && all[i+1].History != m.History {
			h += " (new: etcd was restored before this)" // newest first: the one below is older
		}
		rows = append(rows, []string{m.ID, m.CreatedAt.Format(time.RFC3339), humanAge(now.Sub(m.CreatedAt)),
			fmt.Sprint(m.Revision), humanBytes(m.DBSize), humanBytes(m.StoredSize), m.Compression, verified, h})
	}
	if err := table(g.stdout, rows); err != nil {
		return err
	}
	_, ws, err := restorable(ctx, st, cluster)
	if err != nil {
		return err
	}
	printWindows(g, ws)
	return nil
}
